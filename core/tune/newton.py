"""A second-order V step for PV-Tuning (`code_rule="newton"`, our variant).

The reference V step (core/tune/vstep.py) moves a straight-through buffer with Adam and
re-rounds the top-τ weights by |R − W_hat|. Adam's step g/√v is about lr for every weight
whatever the size of its gradient, so on small batches the codes that move are those
whose gradient sign happened to be consistent — not those whose move lowers the loss most.

Here each candidate move is priced by a local quadratic model of the loss. For weight
(i, j) with gradient G_ij = ∂L/∂W_hat_ij and curvature F_ij, moving its code one grid
step against the gradient (Δw = −sign(G_ij)·s, s its group's scale) changes the loss by

    ΔL_ij ≈ G_ij·Δw + ½·F_ij·Δw² = −|G_ij|·s + ½·F_ij·s²

and the V step takes, per layer, the top ⌈τ·n⌉ moves with the most negative ΔL — only
those with ΔL < 0.

F is the diagonal of the Gauss-Newton matrix, estimated as the Fisher with labels sampled
from the student: the Hessian of KL(p ‖ q) in the student's logits is diag(q) − qqᵀ
whatever the teacher p, and that is E_{y~q}[(e_y − q)(e_y − q)ᵀ], the outer product of the
cross-entropy gradient for a label y drawn from q. So a second backward pass with sampled
labels (core/tune/trainer.py) gives per-token output gradients δ_t (carrying the mean's
1/N), and with the layer's inputs x_t

    F_ij = N · Σ_t δ_ti² x_tj²          [d_out, d_in], one extra matmul (δ²)ᵀ(x²) per layer

(per-token terms only, as K-FAC does). The empirical Fisher — δ from the training loss
itself — is not used: near a fit its residuals are small and it prices every move too
cheaply (on a quadratic test it picks moves that raise the loss). G and F are averaged
across steps (EMA, β = 0.9, bias-corrected), which acts as a larger batch for the decision.
After a move the averaged gradient is advanced by the model's own prediction,
G ← G + F·Δw, so the same weight is not pushed past its new optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .qlinear import TunableQuantLinear
from .vstep import max_changes


@dataclass
class NewtonConfig:
    tau: float = 0.01          # fraction of a layer's weights that may move per step
    beta: float = 0.9          # EMA of G and F across steps


class FisherCodeStep:
    """Per layer: EMAs of ∂L/∂W_hat and of the empirical Fisher diagonal [d_out, d_in]."""

    def __init__(self, layers: dict[str, TunableQuantLinear], cfg: NewtonConfig) -> None:
        self.cfg = cfg
        self.layers = layers
        self.step_count = 0
        self.grad = {name: torch.zeros_like(l.codes, dtype=torch.float32) for name, l in layers.items()}
        self.fisher = {name: torch.zeros_like(g) for name, g in self.grad.items()}

    def _bias(self) -> float:
        return 1 - self.cfg.beta ** self.step_count

    @torch.no_grad()
    def accumulate(self) -> None:
        """Fold each layer's captured G and Σ δ²x² of this step into the averages."""
        self.step_count += 1
        b = self.cfg.beta
        for name, layer in self.layers.items():
            g, f_sum, tokens = layer.weight_grad, layer.fisher_sum, layer.fisher_tokens
            layer.weight_grad, layer.fisher_sum, layer.fisher_tokens = None, None, 0
            self.grad[name].mul_(b)
            self.fisher[name].mul_(b)
            if g is not None:
                self.grad[name].add_(g, alpha=1 - b)
            if f_sum is not None:
                self.fisher[name].add_(f_sum, alpha=(1 - b) * tokens)     # F = N · Σ_t δ² x²

    @torch.no_grad()
    def moves(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat indices, new codes) of the layer's chosen moves."""
        layer = self.layers[name]
        bias = self._bias()
        g = self.grad[name] / bias
        f = self.fisher[name] / bias
        codes = layer.codes
        direction = -torch.sign(g)                                                  # [d_out, d_in]
        target = (codes.float() + direction).clamp_(0, layer.maxq)
        step = target - codes.float()                                               # 0 at the grid's edge
        s = layer.scales.detach().repeat_interleave(layer.group_size, dim=1)        # [d_out, d_in]
        dw = step * s
        gain = (g * dw + 0.5 * f * dw * dw).view(-1)                                # predicted ΔL
        k = max_changes(gain.numel(), self.cfg.tau)
        values, index = torch.topk(gain, k, largest=False, sorted=False)
        chosen = index[values < 0]
        return chosen, target.view(-1).index_select(0, chosen).to(torch.uint8)

    @torch.no_grad()
    def step(self) -> dict[str, int]:
        """Accumulate, then move codes; {name: codes changed}."""
        self.accumulate()
        changed = {}
        for name, layer in self.layers.items():
            chosen, new = self.moves(name)
            flat = layer.codes.view(-1)
            moved = (new.float() - flat.index_select(0, chosen).float())
            self._advance(name, chosen, moved)
            flat.index_copy_(0, chosen, new)
            changed[name] = int(chosen.numel())
        return changed

    def _advance(self, name: str, chosen: torch.Tensor, moved_codes: torch.Tensor) -> None:
        """G ← G + F·Δw on the moved weights (stored un-bias-corrected, like the EMA)."""
        layer = self.layers[name]
        s = layer.scales.detach().repeat_interleave(layer.group_size, dim=1).reshape(-1)
        dw = moved_codes * s.index_select(0, chosen)
        f = self.fisher[name].view(-1).index_select(0, chosen)
        self.grad[name].view(-1).index_add_(0, chosen, f * dw)

    @torch.no_grad()
    def revert(self, codes_before: dict[str, torch.Tensor]) -> None:
        """Undo a step's moves (codes and the gradient advance)."""
        for name, layer in self.layers.items():
            old = codes_before[name]
            if torch.equal(layer.codes, old):
                continue
            diff = (old.float() - layer.codes.float()).view(-1)
            chosen = diff.nonzero().squeeze(1)
            self._advance(name, chosen, diff.index_select(0, chosen))
            layer.codes.copy_(old)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "grad": self.grad, "fisher": self.fisher}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for key in ("grad", "fisher"):
            for name, tensor in state[key].items():
                getattr(self, key)[name].copy_(tensor)


__all__ = ["NewtonConfig", "FisherCodeStep"]
