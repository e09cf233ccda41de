"""Triton kernels (GEMV, tl.dot, both split-K) against the fp32 torch reference, on the CPU
under TRITON_INTERPRET=1: every bit-width, awkward shapes, fp16 and fp32, poisoned outputs.
With BITSMITH_TEST_DEVICE=cuda (packaging/gpu_check.sh) the same cases run on a GPU, compiled."""

from __future__ import annotations

import os

DEVICE = os.environ.get("BITSMITH_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported: kernels run on CPU tensors

import pytest
import torch

from bitsmith.kernels.autotune import Config, heuristic_config, kernel_supports
from bitsmith.kernels.matmul import quant_matmul
from bitsmith.kernels.packing import pack_qweight
from bitsmith.kernels.reference import dequant_matmul_reference

N, K, GROUP = 40, 576, 64  # N: not a multiple of BLOCK_N = 32; K = 576 = 9 groups of 64 (SmolLM2)
# fp32 accumulation bounds the error: fp32 inputs ~1e-6; fp16 inputs add fp16 rounding of the
# output (and, in the tl.dot kernel, of the dequantized weight), ~5e-4 relative.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3}

# kernel name -> config for M rows. The interpreter pays per program and per op, not per
# element, so tiles are large, yet between them the cases cover several blocks along M and
# along N, partial last blocks, two K tiles per group (block_k 32 < group 64), and an uneven
# split: 4 splits of 9 tiles are 3, 3, 3 and 0, and the empty last split must be harmless.
CONFIGS = {
    "gemv": lambda m: Config("gemv", 1, 64, 64, 1) if m == 1 else Config("gemv", 64, 32, 64, 1),
    "gemv-splitk": lambda m: Config("gemv", 1 if m == 1 else 32, 64, 64, 4),
    "dot": lambda m: Config("dot", 16, 32, 32, 1),
    "dot-splitk": lambda m: Config("dot", 32, 16, 64, 4),
}


def _layer(bits: int, n: int = N, k: int = K, group: int = GROUP, seed: int = 0):
    gen = torch.Generator().manual_seed(seed + bits)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen)
    scales = torch.rand(k // group, n, generator=gen) * 0.05 + 0.01
    zeros = torch.rand(k // group, n, generator=gen) * ((1 << bits) - 1)  # non-integer zeros too
    return pack_qweight(codes, bits).to(DEVICE), scales.to(DEVICE), zeros.to(DEVICE)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("m", [1, 33])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("kernel", list(CONFIGS))
def test_kernel_matches_reference(kernel, bits, m, dtype):
    qweight, scales, zeros = _layer(bits)
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(m)).to(DEVICE, dtype)
    s, z = scales.to(dtype), zeros.to(dtype)  # scales/zeros stored like the activations
    ref = dequant_matmul_reference(x, qweight, s, z, bits, GROUP)
    out = torch.full((m, N), float("nan"), dtype=dtype, device=DEVICE)  # poisoned: an unwritten element fails
    got = quant_matmul(x, qweight, s, z, bits, GROUP, out=out, config=CONFIGS[kernel](m))
    assert got is out or got.data_ptr() == out.data_ptr()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("bits", [3, 4])
def test_tiles_smaller_than_a_group_and_fp32_scales_with_fp16_x(bits):
    # group 128 = several K tiles (block_k 32) per scale row; scales/zeros stay fp32 while x is fp16
    qweight, scales, zeros = _layer(bits, n=24, k=256, group=128)
    x = torch.randn(5, 256).half().to(DEVICE)
    ref = dequant_matmul_reference(x, qweight, scales, zeros, bits, 128)
    for cfg in (Config("gemv", 8, 32, 32, 2), Config("dot", 16, 16, 32, 3)):
        out = quant_matmul(x, qweight, scales, zeros, bits, 128, config=cfg)
        assert _rel_err(out, ref) < TOL[torch.float16]


def test_default_choice_and_leading_dims():
    # no config: the heuristic picks (nothing is timed under the interpreter); x may be 3-D
    qweight, scales, zeros = _layer(4, n=24, k=128, group=64)
    x = torch.randn(2, 3, 128).to(DEVICE)
    out = quant_matmul(x, qweight, scales, zeros, 4, 64)
    assert out.shape == (2, 3, 24)
    ref = dequant_matmul_reference(x, qweight, scales, zeros, 4, 64)
    assert _rel_err(out, ref) < TOL[torch.float32]


def test_group_of_72_uses_small_gemv_tiles():
    # 576 = 8 * 72 (group 128 asked, largest divisor taken): the largest power-of-two tile
    # dividing 72 is 8 codes, one 4-bit word; 3 bits need 32-code tiles: torch path
    assert kernel_supports(4, 72, 576) and not kernel_supports(3, 72, 576)
    cfg = heuristic_config(2, 16, 144, 4, 72)
    assert cfg.kernel == "gemv" and cfg.block_k == 8
    qweight, scales, zeros = _layer(4, n=16, k=144, group=72)
    x = torch.randn(2, 144).to(DEVICE)
    out = quant_matmul(x, qweight, scales, zeros, 4, 72, config=cfg)
    assert _rel_err(out, dequant_matmul_reference(x, qweight, scales, zeros, 4, 72)) < TOL[torch.float32]


def test_bad_arguments_are_refused():
    qweight, scales, zeros = _layer(4, n=16, k=128, group=64)
    x = torch.randn(1, 128).to(DEVICE)
    with pytest.raises(ValueError, match="block_k"):
        quant_matmul(x, qweight, scales, zeros, 4, 64, config=Config("gemv", 1, 16, 128, 1))  # tile > group
    with pytest.raises(ValueError, match=">= 16"):
        quant_matmul(x, qweight, scales, zeros, 4, 64, config=Config("dot", 8, 16, 64, 1))
    with pytest.raises(ValueError, match="split_k"):
        quant_matmul(x, qweight, scales, zeros, 4, 64, config=Config("gemv", 1, 16, 64, 3))  # 2 tiles
    with pytest.raises(ValueError, match="scales"):
        quant_matmul(x, qweight, scales.t(), zeros, 4, 64)
    with pytest.raises(ValueError, match="do not serve"):
        quant_matmul(x, qweight, scales, zeros, 5, 64)
    with pytest.raises(ValueError, match="out"):
        quant_matmul(x, qweight, scales, zeros, 4, 64, out=torch.empty(1, 16, dtype=torch.float16, device=DEVICE))
