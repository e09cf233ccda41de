"""bitsmith.kernels: packed low-bit weights, fused dequant-matmul kernels, QuantLinear.

Import-light on purpose: importing this package imports nothing (not torch, not triton)
and queries no device; each name below loads its module on first access. Triton itself is
imported only when a kernel is launched (matmul.quant_matmul).

Files, primitives first:
    packing.py       pack/unpack codes into int32 words (torch, CPU and GPU)
    reference.py     exact torch dequantize and dequant-matmul (the ground truth)
    autotune.py      kernel configs: validity, heuristic, timed choice cached per shape
    dequant_gemv.py  Triton GEMV kernel for decoding (M = 1..16)
    dequant_gemm.py  Triton tl.dot kernel for prefill (larger M), split-K capable
    matmul.py        quant_matmul: picks kernel + config and launches
    quant_linear.py  QuantLinear nn.Module (Triton on CUDA, exact torch path elsewhere)
    bench.py         `bitsmith bench kernels`: timings, GB/s, roofline fraction, speedup
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "packed_size": "packing",
    "pack_along_dim": "packing",
    "unpack_along_dim": "packing",
    "pack_qweight": "packing",
    "unpack_qweight": "packing",
    "pack_qzeros": "packing",
    "unpack_qzeros": "packing",
    "dequantize_codes": "reference",
    "dequantize_packed": "reference",
    "dequant_matmul_reference": "reference",
    "Config": "autotune",
    "KERNEL_BITS": "autotune",
    "kernel_supports": "autotune",
    "quant_matmul": "matmul",
    "QuantLinear": "quant_linear",
    "run_kernel_benchmark": "bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from .autotune import KERNEL_BITS, Config, kernel_supports
    from .bench import run_kernel_benchmark
    from .matmul import quant_matmul
    from .packing import (pack_along_dim, pack_qweight, pack_qzeros, packed_size, unpack_along_dim,
                          unpack_qweight, unpack_qzeros)
    from .quant_linear import QuantLinear
    from .reference import dequant_matmul_reference, dequantize_codes, dequantize_packed
