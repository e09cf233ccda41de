"""The V step of PV-Tuning: move the discrete codes, a few at a time.

Per quantized layer there is a straight-through buffer R [d_out, d_in] float32 (the
weight as if it were unconstrained), initialised to W_hat. Each step:

1. Adam with its own learning rate (reference: lr 1e-2, β1 = 0, β2 = 0.95) moves R along
   -∂L/∂W_hat.
2. Rank the layer's weights by |R - W_hat| and take the top ⌈τ·n⌉ (reference τ = 0.01).
3. Re-round only those to the nearest grid point: q* = clamp(round(R/s + z), 0, 2^b - 1).
4. delta_decay d: R ← (1 - d) R + d W_hat_new. d = 0 keeps R across steps (PV + STE, the
   reference default); d = 1 resets it to W_hat every step (the linearised V step).

R is stored as its offset Δ = R - W_hat from the current dequantized weight, so that when
the P step moves W_hat (new scales or zero points), R moves with it: the V step then acts on
its own accumulated gradient only, and never re-rounds codes just to undo a P step.

STE is τ = 1 (every weight re-rounded every step); continuous-only has no V step at all.

Grid-step units (`in_grid_steps`, our addition; off reproduces the reference): Adam's step
is about lr in weight units for every weight, but the grid step s differs 10x between
layers (SmolLM2 3-bit: 0.02 in block 0's v_proj, 0.27 in its k_proj), so an lr that is
cautious for one layer flips codes every step in another. With it on, the step of a weight
is lr · s of its group: lr is the fraction of a grid step moved per step.

Column preconditioning (`precondition`, our addition; off reproduces the reference): Adam's
step g/√v moves every weight by about lr, but the loss curvature of weight (i, j) grows with
its input's second moment a_j = E[x_j²] (the diagonal Gauss-Newton), and since v ∝ a_j too,
Adam moves weights on large-activation columns √a_j too far relative to a Newton step
g/a_j. In models with activation spikes (SmolLM2's block-11 down_proj: max/median 2000)
those columns' codes are the first to be re-rounded, and each such change costs far more
than it gains. Scaling the step of column j by min(1, (a_j / mean a)^(-1/2)) makes it
Newton-like on the large columns and leaves the others at the reference step (enlarging
the steps of near-dead columns would only spend the τ budget on codes that barely matter).
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
    precondition: bool = False  # scale column j's step by min(1, (a_j / mean a)^(-1/2)), a_j = E[x_j²]
    in_grid_steps: bool = False  # lr in units of each group's scale s (else in weight units)


class CodeAdam:
    """Adam on the straight-through buffers R, one per layer.

    With β1 = 0 (the reference) Adam's first moment is the gradient itself, so no buffer is
    kept for it: the state per weight is R and the second moment v (8 bytes).
    """

    def __init__(self, layers: dict[str, TunableQuantLinear], cfg: VStepConfig) -> None:
        self.cfg = cfg
        self.step_count = 0
        self.layers = layers
        # Δ = R - W_hat [d_out, d_in] per layer; R starts at W_hat
        self.delta = {name: torch.zeros_like(layer.codes, dtype=torch.float32) for name, layer in layers.items()}
        self.v = {name: torch.zeros_like(d) for name, d in self.delta.items()}
        self.m = {name: torch.zeros_like(d) for name, d in self.delta.items()} if cfg.beta1 > 0 else {}
        # running E[x_j²] per layer [d_in] (sum and token count), for the preconditioner
        self.col_sq = {name: torch.zeros(layer.in_features, device=layer.codes.device)
                       for name, layer in layers.items()} if cfg.precondition else {}
        self.col_tokens = {name: 0 for name in self.col_sq}

    def straight_through(self, name: str) -> torch.Tensor:
        """R = W_hat + Δ [d_out, d_in] of one layer (a new tensor)."""
        return self.layers[name].dequantize().add_(self.delta[name])

    @torch.no_grad()
    def record_inputs(self, name: str, input_sq: torch.Tensor | None, tokens: int) -> None:
        if name in self.col_sq and input_sq is not None:
            self.col_sq[name].add_(input_sq)
            self.col_tokens[name] += tokens

    def column_scale(self, name: str) -> torch.Tensor | None:
        """min(1, (a_j / mean a)^(-1/2)) [1, d_in], or None without preconditioning / inputs yet."""
        if name not in self.col_sq or self.col_tokens[name] == 0:
            return None
        a = self.col_sq[name] / self.col_tokens[name]
        a = a / a.mean().clamp(min=1e-30)
        return a.clamp(min=1.0).rsqrt_()[None, :]

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
            scale = self.column_scale(name)
            if scale is not None:
                m_hat = m_hat * scale
            if cfg.in_grid_steps:                    # the step is lr grid steps, whatever the layer's scale
                layer = self.layers[name]
                m_hat = m_hat * layer.scales.detach().abs().repeat_interleave(layer.group_size, dim=1)
            self.delta[name].addcdiv_(m_hat, denom, value=-cfg.lr * root_bc2)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "delta": self.delta, "v": self.v, "m": self.m,
                "col_sq": self.col_sq, "col_tokens": dict(self.col_tokens)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self.col_tokens.update(state.get("col_tokens", {}))
        for key in ("delta", "v", "m", "col_sq"):
            target = getattr(self, key)
            for name, tensor in state.get(key, {}).items():
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
        grads[name] = torch.zeros_like(adam.delta[name]) if g is None else g
        layer.weight_grad = None
        adam.record_inputs(name, layer.input_sq, layer.input_tokens)
        layer.input_sq, layer.input_tokens = None, 0
    adam.step(grads)
    changed = {}
    d = adam.cfg.delta_decay
    for name, layer in layers.items():
        R = adam.straight_through(name)
        changed[name] = reround(layer, R, adam.cfg.tau)
        delta = R.sub_(layer.dequantize())          # R - W_hat_new: what rounding left over
        adam.delta[name] = delta.mul_(1 - d) if d > 0 else delta
    return changed


@torch.no_grad()
def revert_codes(layers: dict[str, TunableQuantLinear], adam: CodeAdam, codes_before: dict[str, torch.Tensor]) -> None:
    """Undo a V step's re-rounding: codes back to `codes_before`, and Δ re-based on the old
    W_hat so that R = W_hat + Δ is what the V step had reached (its progress is kept)."""
    keep = 1 - adam.cfg.delta_decay
    for name, layer in layers.items():
        old = codes_before[name]
        if torch.equal(layer.codes, old):
            continue
        moved = layer.codes.float() - old.float()                                   # q_new - q_old
        s = layer.scales.detach().repeat_interleave(layer.group_size, dim=1)       # [d_out, d_in]
        adam.delta[name].add_(moved.mul_(s), alpha=keep)     # W_hat_new - W_hat_old = s (q_new - q_old)
        layer.codes.copy_(old)
