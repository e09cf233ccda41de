"""The V step of PV-Tuning: move the discrete codes, a few at a time.

Per quantized layer there is a straight-through buffer R [d_out, d_in] float32 (the
weight as if it were unconstrained), initialised to W_hat. Each step:

1. Adam with its own learning rate (reference: lr 1e-2, β1 = 0, β2 = 0.95) moves R along
   -∂L/∂W_hat.
2. Rank the layer's weights by |R - W_hat| and take the top ⌈τ·n⌉ (reference τ = 0.01).
3. Re-round only those to the nearest grid point: q* = clamp(round(R/s + z), 0, 2^b - 1).
4. delta_decay d: R ← (1 - d) R + d W_hat_new. d = 0 keeps R across steps (PV + STE, the
   reference default); d = 1 resets it to W_hat every step (the linearised V step).

STE is τ = 1 (every weight re-rounded every step); continuous-only has no V step at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .qlinear import TunableQuantLinear


@dataclass
class VStepConfig:
    lr: float = 1e-2
    beta1: float = 0.0
    beta2: float = 0.95
    eps: float = 1e-8
    tau: float = 0.01          # fraction of a layer's weights that may be re-rounded per step
    delta_decay: float = 0.0


class CodeAdam:
    """Adam on the straight-through buffers R, one per layer.

    With β1 = 0 (the reference) Adam's first moment is the gradient itself, so no buffer is
    kept for it: the state per weight is R and the second moment v (8 bytes).
    """

    def __init__(self, layers: dict[str, TunableQuantLinear], cfg: VStepConfig) -> None:
        self.cfg = cfg
        self.step_count = 0
        self.R = {name: layer.dequantize().clone() for name, layer in layers.items()}   # [d_out, d_in]
        self.v = {name: torch.zeros_like(r) for name, r in self.R.items()}
        self.m = {name: torch.zeros_like(r) for name, r in self.R.items()} if cfg.beta1 > 0 else {}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor]) -> None:
        """R -= lr · m_hat / (sqrt(v_hat) + eps), from grads {name: ∂L/∂W_hat}.

        Written as R -= lr·√bc2 · m_hat / (√v + eps·√bc2) (the same number) to save passes
        over these large tensors.
        """
        cfg = self.cfg
        self.step_count += 1
        t = self.step_count
        root_bc2 = math.sqrt(1 - cfg.beta2 ** t)
        for name, g in grads.items():
            v = self.v[name].mul_(cfg.beta2).addcmul_(g, g, value=1 - cfg.beta2)
            if cfg.beta1 > 0:
                m_hat = self.m[name].mul_(cfg.beta1).add_(g, alpha=1 - cfg.beta1) / (1 - cfg.beta1 ** t)
            else:
                m_hat = g
            denom = v.sqrt().add_(cfg.eps * root_bc2)
            self.R[name].addcdiv_(m_hat, denom, value=-cfg.lr * root_bc2)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "R": self.R, "v": self.v, "m": self.m}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for key in ("R", "v", "m"):
            target = getattr(self, key)
            for name, tensor in state[key].items():
                target[name].copy_(tensor) if name in target else target.__setitem__(name, tensor.clone())


def max_changes(n: int, tau: float) -> int:
    """How many of a layer's n weights one V step may re-round: ⌈τ·n⌉ (all when τ >= 1)."""
    return n if tau >= 1 else min(n, math.ceil(tau * n))


@torch.no_grad()
def reround(layer: TunableQuantLinear, R: torch.Tensor, tau: float) -> int:
    """Re-round the top-τ weights of `layer` by |R - W_hat| to the grid; returns codes changed."""
    d_out, d_in = R.shape
    g = layer.group_size
    n = d_out * d_in
    k = max_changes(n, tau)
    s = layer.scales.detach()
    z = layer.zeros.detach()
    safe_s = torch.where(s != 0, s, torch.ones_like(s))          # a zero scale makes every code equal
    codes = layer.codes.view(-1)
    if k >= n:                                                   # STE: every weight, whole tensors
        target = (R.view(d_out, d_in // g, g) / safe_s[..., None] + z[..., None]).round_().clamp_(0, layer.maxq)
        new = target.view(-1).to(torch.uint8)
        changed = int((codes != new).sum())
        codes.copy_(new)
        return changed
    delta = R.sub(layer.dequantize()).abs_().view(-1)            # |R - W_hat| [n], current s, z
    chosen = torch.topk(delta, k, sorted=False).indices          # [k]
    group = (chosen // d_in) * (d_in // g) + (chosen % d_in) // g   # flat index into s, z
    r_k = R.view(-1).index_select(0, chosen)
    target = r_k.div_(safe_s.view(-1).index_select(0, group)).add_(z.view(-1).index_select(0, group))
    new = target.round_().clamp_(0, layer.maxq).to(torch.uint8)  # q* for the chosen weights only
    changed = int((codes.index_select(0, chosen) != new).sum())
    codes.index_copy_(0, chosen, new)
    return changed


@torch.no_grad()
def v_step(layers: dict[str, TunableQuantLinear], adam: CodeAdam) -> dict[str, int]:
    """One V step over every layer (after the P step moved s and z); {name: codes changed}.

    Consumes and clears each layer's captured ∂L/∂W_hat.
    """
    grads = {}
    for name, layer in layers.items():
        g = layer.weight_grad
        grads[name] = torch.zeros_like(adam.R[name]) if g is None else g
        layer.weight_grad = None
    adam.step(grads)
    changed = {}
    d = adam.cfg.delta_decay
    for name, layer in layers.items():
        changed[name] = reround(layer, adam.R[name], adam.cfg.tau)
        if d > 0:
            adam.R[name].mul_(1 - d).add_(layer.dequantize(), alpha=d)
    return changed
