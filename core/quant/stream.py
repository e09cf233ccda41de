"""Write a safetensors file one tensor at a time, so a checkpoint larger than RAM can be
saved from tensors produced (or read back from block files) one block at a time.

The safetensors library writes a file from a dict of tensors that must all be in memory at
once. The format itself is simple (https://github.com/huggingface/safetensors#format):

    8 bytes   N, little-endian u64
    N bytes   JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
              padded with spaces to a multiple of 8
    the data  every tensor's bytes, contiguous, in the order of their offsets

so the header is made from the shapes first (one pass that may read and drop each tensor),
then each tensor is fetched again, written and dropped. Files are read back by the
safetensors library itself (tests/quant check the round trip).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
          torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}

Entry = tuple[str, Callable[[], torch.Tensor]]     # (name, fetch): fetch returns the tensor on the CPU


def write_streamed(path: str | Path, entries: Iterable[Entry], metadata: dict[str, str] | None = None) -> None:
    """Write `entries` to `path`; each fetch is called twice (shape, then bytes), so a fetch
    that reads from a file keeps at most one tensor (or its file's cache) in memory."""
    entries = list(entries)
    header: dict[str, object] = {}
    offset = 0
    for name, fetch in entries:
        t = fetch()
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
        del t
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, fetch in entries:
            t = fetch().detach().to("cpu").contiguous()
            expected = header[name]["data_offsets"]                    # type: ignore[index]
            data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
            if len(memoryview(data).cast("B")) != expected[1] - expected[0]:
                raise RuntimeError(f"{name} changed size between the two passes")
            f.write(memoryview(data).cast("B"))
            del t, data


__all__ = ["write_streamed"]
