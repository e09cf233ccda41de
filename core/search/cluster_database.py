"""The variant database built on Ray: one task per (block, level).

The driver keeps what only it can do in order — the Hessians, one calibration pass over the
dense model — and hands each block over as it has it: the block's layer groups (weights and
shared Hessians) go into Ray's object store once, and one task per level quantizes them
there (`quantize_level`, the very function the local build runs for all levels at once). The
driver gathers a block's levels, puts them in the local build's order and saves the block
through the database's own writer, so the files are the local build's files; a block is
recorded in meta.json only when all its levels are in, so a killed or cancelled build resumes
at its first missing block.

The object store here, not shared storage: a block's Hessians exist only on the driver, for as
long as the block is being quantized, and each task needs all of them; the results are small
(codes, scales, zeros) and come back to the one process that writes the files. At most
`max_blocks` blocks are in flight, so the store holds a few blocks' weights and Hessians,
never the model's. A task whose worker dies is re-run by Ray (`max_retries`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import BitsmithError, Cancelled
from .block_variants import BlockDone, Errors, LayerGroup, Variants, quantize_groups

if TYPE_CHECKING:
    from ..events import Emitter
    from .cluster_units import ActorShape
    from .db_settings import DatabaseSettings

POLL_S = 0.2          # the driver checks its cancel token this often while tasks run
TASK_RETRIES = 3      # re-runs of a task whose worker died (Ray's own retry)


def quantize_level(groups: list[LayerGroup], level: int, settings: "DatabaseSettings", threads: int,
                   gpu: bool) -> tuple[Variants, Errors, float]:
    """The Ray task: every layer of one block at one level (on the task's GPU when it has one)."""
    import torch

    started = time.time()
    torch.set_num_threads(threads)
    if gpu and torch.cuda.is_available():
        groups = [LayerGroup(g.names, [w.cuda() for w in g.weights], g.H.cuda(), g.group_size) for g in groups]
    variants, errors = quantize_groups(groups, [level], settings)
    on_cpu = {name: {b: qw.to("cpu") for b, qw in per.items()} for name, per in variants.items()}
    return on_cpu, errors, time.time() - started


@dataclass
class _Block:
    """A block in flight: its levels' results as they arrive."""

    names: list[str]                       # the layers in the local build's order
    done: BlockDone
    submitted: float
    results: dict[int, tuple[Variants, Errors]] = field(default_factory=dict)


class RayBlocks:
    """A BlockQuantizer (core/search/block_variants.py) that sends (block, level) tasks to Ray."""

    def __init__(self, ray: Any, shape: "ActorShape", settings: "DatabaseSettings", levels: Sequence[int],
                 emitter: "Emitter", check: Callable[[], None] | None = None) -> None:
        self.ray = ray
        self.settings = settings
        self.levels = sorted(levels)
        self.emitter = emitter
        self.check = check
        self.threads = shape.num_cpus
        self.gpu = bool(shape.num_gpus)
        self.task = ray.remote(quantize_level).options(num_cpus=shape.num_cpus, num_gpus=shape.num_gpus,
                                                        max_retries=TASK_RETRIES)
        # enough blocks to keep every worker busy while the driver makes the next block's Hessians
        self.max_blocks = max(2, math.ceil(2 * shape.count / len(self.levels)))
        self.blocks: dict[int, _Block] = {}
        self.pending: dict[Any, tuple[int, int]] = {}       # task ref -> (block, level)
        self.last_done = time.time()
        self.tasks = 0
        emitter.log(f"variant database on Ray: one task per (block, level), {shape.count} at a time, "
                    f"{'1 GPU' if self.gpu else f'{self.threads} CPU thread(s)'} each")

    def submit(self, block: int, groups: list[LayerGroup], done: BlockDone) -> None:
        while len(self.blocks) >= self.max_blocks:
            self._collect()
        ref = self.ray.put(groups)                # once per block, shared by its level tasks
        for level in self.levels:
            self.pending[self.task.remote(ref, level, self.settings, self.threads, self.gpu)] = (block, level)
        self.blocks[block] = _Block([n for g in groups for n in g.names], done, time.time())
        self.tasks += len(self.levels)

    def finish(self) -> None:
        while self.pending:
            self._collect()
        if self.tasks:
            self.emitter.log(f"variant database: {self.tasks} tasks done on Ray")

    def _collect(self) -> None:
        """Wait (cancellably) for some task to finish; save each block whose levels are all in."""
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=POLL_S)
        if self.check is not None:
            try:
                self.check()
            except Cancelled:
                self.cancel()
                raise
        for ref in ready:
            block, level = self.pending.pop(ref)
            variants, errors, _seconds = self._get(ref, block, level)
            entry = self.blocks[block]
            entry.results[level] = (variants, errors)
            if len(entry.results) == len(self.levels):
                self._save(block, entry)

    def _get(self, ref: Any, block: int, level: int) -> tuple[Variants, Errors, float]:
        try:
            return self.ray.get(ref)
        except Exception as err:            # RayTaskError, a worker lost after every retry, ...
            self.cancel()
            first = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
            raise BitsmithError(f"quantizing block {block} at {level} bits on the Ray cluster failed ({first})",
                                "check the cluster (`ray status`, its memory), then resume: "
                                "bitsmith run RUN_DIR --resume (finished blocks are kept)") from None

    def _save(self, block: int, entry: _Block) -> None:
        """The block's variants and errors in the local build's order (layers, then levels)."""
        variants = {n: {b: entry.results[b][0][n][b] for b in self.levels} for n in entry.names}
        errors = {n: {b: entry.results[b][1][n][b] for b in self.levels} for n in entry.names}
        now = time.time()
        seconds = now - max(self.last_done, entry.submitted)     # wall time this block added
        self.last_done = now
        del self.blocks[block]
        entry.done(block, variants, errors, seconds)

    def cancel(self) -> None:
        """Stop every task still queued or running; blocks not saved are built again on resume."""
        for ref in list(self.pending):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:             # already finished or gone
                pass
        self.pending.clear()
        self.blocks.clear()


def database_differences(a: Path, b: Path) -> list[str]:
    """How two database folders differ: block files byte for byte, meta.json but for build times
    (empty: the same database)."""
    blocks = sorted(p.name for p in Path(a).glob("block-*.safetensors"))
    if blocks != sorted(p.name for p in Path(b).glob("block-*.safetensors")):
        return ["different block files"]
    out = [name for name in blocks if (Path(a) / name).read_bytes() != (Path(b) / name).read_bytes()]
    timing = ("block_seconds", "hessian_seconds")
    metas = [{k: v for k, v in json.loads((Path(d) / "meta.json").read_text()).items() if k not in timing}
             for d in (a, b)]
    return out + (["meta.json"] if metas[0] != metas[1] else [])


__all__ = ["RayBlocks", "quantize_level", "database_differences"]
