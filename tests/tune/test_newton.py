"""The Newton V step: its curvature is the per-token sum it claims, its moves are the
priced ones, at most ⌈τ·n⌉ per layer, one grid step, and they lower a quadratic loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitsmith.core.quant.grid import quantize_rtn
from bitsmith.core.tune.newton import FisherCodeStep, NewtonConfig
from bitsmith.core.tune.qlinear import TunableQuantLinear
from bitsmith.core.tune.vstep import max_changes


def _setup(seed: int = 0, bits: int = 3, tokens: int = 2048):
    """A layer round-to-nearest quantized from W, correlated inputs, targets W x: the loss is
    quadratic in W_hat, and rounding each weight to its nearest point is not its optimum."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(24, 64, generator=gen) * 0.05
    mix = torch.eye(64) + 0.5 * torch.randn(64, 64, generator=gen) / 8
    x = torch.randn(tokens, 64, generator=gen) @ mix
    layer = TunableQuantLinear(quantize_rtn(W, bits, 16))
    return layer, x, x @ W.t()


def _loss(layer: TunableQuantLinear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(layer(x), y, reduction="none").sum(-1).mean()     # mean over tokens


def _gradient_and_curvature(layer: TunableQuantLinear, x: torch.Tensor, y: torch.Tensor, seed: int = 5) -> None:
    """G from the loss; F from a sampled pass whose δ_t = √2·ε_t/N, so E[F] = (2/N) Σ_t x_t²,
    the exact Hessian diagonal of this loss (as the trainer's sampled-label pass is for KL)."""
    layer.capture_grad, layer.capture_fisher = True, False
    _loss(layer, x, y).backward()
    layer.capture_grad, layer.capture_fisher = False, True
    eps = torch.randn(x.shape[0], layer.out_features, generator=torch.Generator().manual_seed(seed))
    (layer(x) * eps).sum().mul(2 ** 0.5 / x.shape[0]).backward()
    layer.capture_fisher = False


def test_fisher_is_the_per_token_sum():
    layer, x, y = _setup()
    layer.capture_fisher = True
    _loss(layer, x, y).backward()
    with torch.no_grad():
        delta = 2 * (layer(x) - y) / x.shape[0]               # ∂L/∂y_t, with the mean's 1/N
    expected = torch.einsum("to,ti->oi", delta.pow(2), x.pow(2))
    torch.testing.assert_close(layer.fisher_sum, expected, rtol=1e-4, atol=1e-10)
    assert layer.fisher_tokens == x.shape[0]


def test_moves_are_bounded_on_grid_and_priced_negative():
    for bits, tau in [(2, 0.01), (3, 0.05), (4, 0.2)]:
        layer, x, y = _setup(bits=bits)
        step = FisherCodeStep({"l": layer}, NewtonConfig(tau=tau))
        before = layer.codes.clone()
        _gradient_and_curvature(layer, x, y)
        changed = step.step()["l"]
        moved = (layer.codes.int() - before.int())
        assert int((moved != 0).sum()) == changed <= max_changes(layer.codes.numel(), tau)
        assert int(moved.abs().max()) <= 1 and int(layer.codes.max()) <= 2 ** bits - 1


def test_newton_steps_lower_the_loss_and_revert_restores_it():
    layer, x, y = _setup(bits=2)
    step = FisherCodeStep({"l": layer}, NewtonConfig(tau=0.01))
    with torch.no_grad():
        losses = [float(_loss(layer, x, y))]
    for seed in range(4):
        before_codes = layer.codes.clone()
        _gradient_and_curvature(layer, x, y, seed)
        assert step.step()["l"] > 0
        with torch.no_grad():
            losses.append(float(_loss(layer, x, y)))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    grad_after = step.grad["l"].clone()
    step.revert({"l": before_codes})
    assert torch.equal(layer.codes, before_codes)
    assert not torch.equal(step.grad["l"], grad_after)            # the gradient advance is undone too
