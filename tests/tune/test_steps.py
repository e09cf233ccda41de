"""The P and V steps on a single random layer: what each may and may not change."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bitsmith.core.quant.grid import quantize_rtn
from bitsmith.core.tune.qlinear import TunableQuantLinear, _dequant
from bitsmith.core.tune.vstep import CodeAdam, VStepConfig, max_changes, reround, revert_codes, v_step


def _layer(bits: int = 3, d_out: int = 48, d_in: int = 64, group: int = 16, seed: int = 0) -> TunableQuantLinear:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=gen) * 0.05
    return TunableQuantLinear(quantize_rtn(W, bits, group))


def _backward(layer: TunableQuantLinear, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, layer.in_features, generator=gen)
    target = torch.randn(32, layer.out_features, generator=gen) * 0.1
    F.mse_loss(layer(x), target).backward()


def test_dequant_gradients_match_autograd():
    """∂L/∂s, ∂L/∂z of the custom function equal plain autograd's, and ∂L/∂W_hat is captured."""
    layer = _layer()
    layer.capture_grad = True
    _backward(layer)
    s = layer.scales.detach().clone().requires_grad_(True)
    z = layer.zeros.detach().clone().requires_grad_(True)
    w = _dequant(layer.codes, s, z, layer.group_size)
    w.retain_grad()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, layer.in_features, generator=gen)
    target = torch.randn(32, layer.out_features, generator=gen) * 0.1
    F.mse_loss(F.linear(x, w, layer.bias), target).backward()
    torch.testing.assert_close(layer.scales.grad, s.grad)
    torch.testing.assert_close(layer.zeros.grad, z.grad)
    torch.testing.assert_close(layer.weight_grad, w.grad)


def test_v_step_changes_at_most_tau_n_codes_and_stays_on_grid():
    for bits, tau in [(2, 0.01), (3, 0.05), (4, 0.003)]:
        layer = _layer(bits)
        layers = {"l": layer}
        layer.capture_grad = True
        adam = CodeAdam(layers, VStepConfig(lr=0.05, tau=tau))   # a large lr: many codes want to move
        limit = max_changes(layer.codes.numel(), tau)
        assert limit == math.ceil(tau * layer.codes.numel())
        for step in range(4):
            before = layer.codes.clone()
            _backward(layer, seed=step)
            changed = v_step(layers, adam)["l"]
            diff = int((layer.codes != before).sum())
            assert diff == changed
            assert 0 < diff <= limit
            assert int(layer.codes.max()) <= 2 ** bits - 1      # uint8 also keeps them >= 0


def test_p_step_never_changes_codes():
    layer = _layer()
    codes = layer.codes.clone()
    opt = torch.optim.Adam([layer.scales, layer.zeros, layer.bias] if layer.bias is not None
                           else [layer.scales, layer.zeros], lr=1e-2, betas=(0.9, 0.95))
    scales = layer.scales.detach().clone()
    for step in range(5):
        opt.zero_grad()
        _backward(layer, seed=step)
        opt.step()
    assert torch.equal(layer.codes, codes)
    assert not torch.equal(layer.scales.detach(), scales)      # the grid itself did move


def test_ste_is_rounding_every_weight_of_the_buffer():
    """τ = 1: after the V step the codes are exactly clamp(round(R/s + z)) everywhere."""
    layer = _layer(3)
    layers = {"l": layer}
    layer.capture_grad = True
    adam = CodeAdam(layers, VStepConfig(lr=0.02, tau=1.0))
    for step in range(3):
        _backward(layer, seed=step)
        v_step(layers, adam)
        R = adam.straight_through("l")
        s = layer.scales.detach().repeat_interleave(layer.group_size, dim=1)
        z = layer.zeros.detach().repeat_interleave(layer.group_size, dim=1)
        expected = torch.clamp(torch.round(R / s + z), 0, 7).to(torch.uint8)
        assert torch.equal(layer.codes, expected)


def test_v_step_is_adam_with_beta1_zero_then_top_tau_rounding():
    """One step by hand: R = W_hat - lr g / (|g| + eps); the top-τ of |R - W_hat| are re-rounded."""
    layer = _layer(3)
    layer.capture_grad = True
    _backward(layer)
    g = layer.weight_grad.clone()
    w_hat = layer.dequantize()
    tau, lr = 0.1, 0.02
    adam = CodeAdam({"l": layer}, VStepConfig(lr=lr, tau=tau))
    v_step({"l": layer}, adam)
    R = w_hat - lr * g / (g.abs() + 1e-8)            # bias-corrected v_hat = g² at step 1
    torch.testing.assert_close(adam.straight_through("l"), R)
    # Which weights may change: exactly those in the top-k of |R - W_hat| (all equal lr here,
    # except where g = 0), and each changed code is the nearest grid point to R.
    s = layer.scales.detach().repeat_interleave(16, dim=1)
    z = layer.zeros.detach().repeat_interleave(16, dim=1)
    nearest = torch.clamp(torch.round(R / s + z), 0, 7)
    changed = layer.codes.float() != ((w_hat / s) + z).round()
    assert torch.equal(layer.codes.float()[changed], nearest[changed])


def test_delta_decay_one_resets_the_buffer_to_w_hat():
    layer = _layer(3)
    layer.capture_grad = True
    adam = CodeAdam({"l": layer}, VStepConfig(lr=0.02, tau=0.05, delta_decay=1.0))
    _backward(layer)
    v_step({"l": layer}, adam)
    torch.testing.assert_close(adam.straight_through("l"), layer.dequantize())
    keep = CodeAdam({"l": layer}, VStepConfig(lr=0.02, tau=0.05, delta_decay=0.0))
    _backward(layer, seed=3)
    v_step({"l": layer}, keep)
    assert not torch.allclose(keep.straight_through("l"), layer.dequantize())


def test_reround_with_tiny_tau_changes_one_code_at_most():
    layer = _layer(4)
    R = layer.dequantize() + 0.3 * torch.randn(layer.out_features, layer.in_features)
    assert reround(layer, R, 1e-9) <= 1


def test_preconditioned_v_step_moves_large_activation_columns_less():
    """With precondition on, column j's straight-through step is scaled by min(1, (a_j / mean a)^(-1/2)),
    a_j = E[x_j²] over the tokens the layer saw; off, every weight moves by lr at step 1."""
    lr = 0.02
    moves = {}
    for precondition in (False, True):
        layer = _layer(3)
        layer.capture_grad = True
        layer.capture_inputs = precondition                      # as the Tuner sets it
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(64, layer.in_features, generator=gen)
        x[:, 0] *= 30.0                                          # a spike column
        F.mse_loss(layer(x), torch.zeros(64, layer.out_features)).backward()
        a = x.pow(2).mean(0)
        adam = CodeAdam({"l": layer}, VStepConfig(lr=lr, tau=1e-9, precondition=precondition))
        g = layer.weight_grad.clone()
        before = layer.codes.clone()
        v_step({"l": layer}, adam)
        R = adam.straight_through("l")
        moves[precondition] = (R - layer.dequantize()).abs()
        expected = lr * g.abs() / (g.abs() + 1e-8)
        if precondition:
            expected = expected * (a / a.mean()).clamp(min=1.0).rsqrt()[None, :]
        keep = layer.codes == before                             # a re-rounded weight has a new Δ
        torch.testing.assert_close(moves[precondition][keep], expected[keep], rtol=1e-4, atol=1e-7)
    assert moves[True][:, 0].mean() < 0.2 * moves[False][:, 0].mean()     # (900 / 15)^(-1/2) ≈ 0.13


def test_reverting_a_v_step_restores_codes_and_keeps_the_buffer():
    """revert_codes puts the codes back and re-bases Δ, so R = W_hat + Δ is unchanged."""
    for decay in (0.0, 0.5):
        layer = _layer(3)
        layer.capture_grad = True
        adam = CodeAdam({"l": layer}, VStepConfig(lr=0.05, tau=0.05, delta_decay=decay))
        _backward(layer)
        before = {"l": layer.codes.clone()}
        w_hat_before = layer.dequantize()
        assert v_step({"l": layer}, adam)["l"] > 0
        kept = adam.straight_through("l") - layer.dequantize()       # (1 - d)(R - W_hat_new)
        R = layer.dequantize() + kept / (1 - decay)
        revert_codes({"l": layer}, adam, before)
        assert torch.equal(layer.codes, before["l"])
        torch.testing.assert_close(adam.straight_through("l"), w_hat_before + (1 - decay) * (R - w_hat_before))
