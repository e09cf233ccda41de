"""Torch CPU threads for a job (quantize, search)."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def cpu_threads(threads: int | None, follow_load: bool = True):
    """Torch CPU threads for the job. None: torch's default (all cores), or with
    `follow_load` 1 when the machine is already oversubscribed (load average above the core
    count) — there, the intra-op threads of the many small GPTQ and block operations wait
    on each other and run several times slower (one 4096 x 1536 GPTQ layer at load 10 on 2
    cores: 42 s with 2 threads, 4 s with 1)."""
    import torch

    before = torch.get_num_threads()
    if threads is None:
        cores = os.cpu_count() or 1
        threads = 1 if follow_load and os.getloadavg()[0] > cores else before
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
