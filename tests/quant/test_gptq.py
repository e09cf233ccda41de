"""GPTQ on one layer: the Hessian, the objective, dampening, dead inputs, act-order."""

import pytest
import torch

from bitsmith.core.quant.gptq import HessianAccumulator, gptq_quantize, rel_error
from bitsmith.core.quant.grid import quantize_rtn


def _correlated_inputs(n=2048, d_in=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=gen) / d_in ** 0.5
    scale = torch.linspace(0.2, 3.0, d_in)            # uneven input energies
    return (torch.randn(n, d_in, generator=gen) @ mix + 0.05 * torch.randn(n, d_in, generator=gen)) * scale


def test_hessian_is_the_running_mean_of_2_x_xT():
    X = _correlated_inputs(1000, 32)
    acc = HessianAccumulator(32)
    for chunk in X.split([100, 250, 650]):
        acc.add(chunk.view(-1, 1, 32) if len(chunk) == 250 else chunk)   # any leading shape
    assert acc.n == 1000
    assert torch.allclose(acc.H, 2 * X.T @ X / 1000, rtol=1e-4, atol=1e-4)


def test_rel_error_matches_the_output_error():
    X = _correlated_inputs(512, 64)
    W = torch.randn(32, 64)
    W_hat = quantize_rtn(W, 3, 32).dequantize()
    H = 2 * X.T @ X / len(X)
    direct = ((X @ (W - W_hat).T) ** 2).sum() / ((X @ W.T) ** 2).sum()
    assert rel_error(W, W_hat, H) == pytest.approx(direct.item(), rel=1e-3)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_the_layer_objective(bits, act_order):
    torch.manual_seed(bits)
    X = _correlated_inputs()
    W = torch.randn(64, 128)
    acc = HessianAccumulator(128)
    acc.add(X)
    rtn = rel_error(W, quantize_rtn(W, bits, 32).dequantize(), acc.H)
    qw, info = gptq_quantize(W, acc.H, bits, 32, act_order=act_order, damp=0.01)
    qw.validate()
    gptq = rel_error(W, qw.dequantize(), acc.H)
    assert gptq < 0.8 * rtn, (gptq, rtn)
    assert info.static_groups == act_order and info.retries == 0


def test_lazy_blocks_do_not_change_the_result():
    X = _correlated_inputs(1024, 256)
    W = torch.randn(16, 256)
    H = 2 * X.T @ X / len(X)
    a, _ = gptq_quantize(W, H, 3, 32, block_size=256)
    b, _ = gptq_quantize(W, H, 3, 32, block_size=32)
    assert (a.codes != b.codes).float().mean() < 0.01     # same algorithm, float summation order aside


def test_dead_inputs_and_singular_hessians():
    X = _correlated_inputs(64, 96)
    X[:, 10] = 0                           # a dead input
    X[:, 20] = X[:, 21]                    # rank deficiency: plain Cholesky would fail without damping
    H = 2 * X.T @ X / len(X)
    W = torch.randn(8, 96)
    qw, info = gptq_quantize(W, H, 4, 32, damp=1e-12)
    assert info.dead_inputs == 1
    assert torch.isfinite(qw.scales).all()
    assert qw.dequantize()[:, 10].abs().max() <= qw.scales[:, 0].max()   # dead column quantized from 0
    assert rel_error(W, qw.dequantize(), H) < rel_error(W, quantize_rtn(W, 4, 32).dequantize(), H)


def test_act_order_codes_use_plain_group_layout():
    """With act-order (static groups) each code dequantizes with its own column's group."""
    X = _correlated_inputs(512, 64)
    H = 2 * X.T @ X / len(X)
    W = torch.randn(16, 64)
    qw, _ = gptq_quantize(W, H, 4, 16, act_order=True, clip=True)
    # static groups: the grid is the one RTN fits on the original weights
    rtn = quantize_rtn(W, 4, 16, clip=True, importance=torch.diag(H))
    assert torch.equal(qw.scales, rtn.scales) and torch.equal(qw.zeros, rtn.zeros)
