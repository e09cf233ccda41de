"""The uniform group quantizer on random tensors."""

import pytest
import torch

from bitsmith.core.errors import BadInput
from bitsmith.core.quant.grid import (ClipConfig, dequantize_fp8, fit_grid, quantize_fp8, quantize_rtn,
                                      resolve_group_size)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_round_trip_and_bounds(bits, sym):
    torch.manual_seed(bits)
    W = torch.randn(24, 96) * 0.1
    qw = quantize_rtn(W, bits, 32, sym=sym)
    qw.validate()
    assert qw.codes.dtype == torch.uint8 and qw.scales.shape == (24, 3)
    assert int(qw.codes.max()) <= 2 ** bits - 1
    W_hat = qw.dequantize()
    # round to nearest: the error is at most half a step (values inside the range)
    step = qw.scales.repeat_interleave(32, dim=1)
    assert ((W - W_hat).abs() <= step / 2 + 1e-6).all()
    if not sym:   # W_hat is on its own grid: quantizing it again changes nothing
        again = quantize_rtn(W_hat, bits, 32, sym=sym)
        assert torch.allclose(again.dequantize(), W_hat, atol=1e-6)
    if sym:
        assert (qw.zeros == 2 ** (bits - 1)).all()
    else:
        assert torch.equal(qw.zeros, qw.zeros.round())


def test_more_bits_less_error():
    torch.manual_seed(0)
    W = torch.randn(64, 128)
    errs = [(quantize_rtn(W, b, 64).dequantize() - W).pow(2).mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_constant_and_zero_groups_are_exact():
    W = torch.zeros(4, 64)
    W[1] = 0.37
    W[2] = -1.5
    W[3, :32] = 2.0
    for sym in (False, True):
        qw = quantize_rtn(W, 3, 32, sym=sym)
        assert torch.isfinite(qw.scales).all() and (qw.scales > 0).all()
        if not sym:
            assert torch.allclose(qw.dequantize(), W, atol=1e-6)
    assert torch.equal(quantize_rtn(W[:1], 4, 32).dequantize(), W[:1])


def test_odd_shapes_and_group_fallback():
    torch.manual_seed(1)
    assert resolve_group_size(576, 128) == 96
    assert resolve_group_size(576, 64) == 64
    assert resolve_group_size(100, 64) == 50
    assert resolve_group_size(7, 64) == 7
    assert resolve_group_size(13, 4) == 1
    W = torch.randn(3, 13)
    qw = quantize_rtn(W, 4, resolve_group_size(13, 4))
    assert qw.scales.shape == (3, 13)
    assert torch.allclose(qw.dequantize(), W, atol=1e-6)   # one value per group is exact
    with pytest.raises(ValueError):
        quantize_rtn(W, 4, 4)
    with pytest.raises(BadInput):
        quantize_rtn(W, 9, 13)
    with pytest.raises(BadInput):
        resolve_group_size(64, 0)


def test_clipping_never_increases_the_weighted_error():
    torch.manual_seed(2)
    rows = torch.randn(256, 64)
    rows[:, 0] *= 8           # an outlier per group makes the full range wasteful
    imp = torch.rand(64) + 0.1
    for bits in (2, 3, 4):
        s0, z0 = fit_grid(rows, bits)
        s1, z1 = fit_grid(rows, bits, clip=ClipConfig(enabled=True), importance=imp)

        def err(s, z):
            q = torch.clamp(torch.round(rows / s[:, None]) + z[:, None], 0, 2 ** bits - 1)
            return (imp * (rows - s[:, None] * (q - z[:, None])) ** 2).sum(1)

        e0, e1 = err(s0, z0), err(s1, z1)
        assert (e1 <= e0 + 1e-6).all() and e1.sum() < e0.sum()


def test_fp8_round_trip():
    torch.manual_seed(3)
    W = torch.randn(16, 32)
    values, scale = quantize_fp8(W)
    W8 = dequantize_fp8(values, scale)
    assert values.dtype == torch.float8_e4m3fn
    assert ((W8 - W).abs() <= W.abs() * 2 ** -3 + 1e-6).all()
    v2, s2 = quantize_fp8(W8)              # idempotent: an fp8 weight stays put
    assert torch.equal(dequantize_fp8(v2, s2), W8)
