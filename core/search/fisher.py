"""The fast scorer (`method="fisher"`): a Fisher-weighted output error per layer and level,
solved by the knapsack — the score ModelOpt's `auto_quantize` uses.

For layer i at level b, with input X [tokens, d_in], dense weight W and variant W_b
(both [d_out, d_in]), output error ΔY = X (W − W_b)ᵀ [tokens, d_out], and g = ∂L/∂Y the
gradient of the loss at the layer's output:

    score_i(b) = ½ Σ_tokens Σ_out (g ⊙ ΔY)²

a diagonal-Fisher estimate of how much the loss rises when layer i alone moves to level b.
L is the next-token cross-entropy of the dense model on the calibration windows. Those are
`selfgen` by default — text sampled from the dense model itself — so g is a sample of the
gradient whose square, in expectation, is the Fisher information of the dense model's own
distribution: the curvature of the KL to the dense model that EvoPress measures directly.

One forward and one backward per batch of windows; each layer's score is summed inside its
backward hook, so only one layer's input is held beyond the forward. Scores are assumed to
add across layers (as the sensitivity knapsack assumes); EvoPress does not assume it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..inventory import LayerInfo, linear_weight

# (layer name, bits) -> dequantized variant [d_out, d_in] float32
Variant = Callable[[str, int], torch.Tensor]


def _score_layer(x: torch.Tensor, g: torch.Tensor, weight: torch.Tensor, variant: Variant, name: str,
                 levels: Sequence[int], totals: dict[int, float]) -> None:
    """Add this batch's ½ Σ (g ⊙ X (W − W_b)ᵀ)² to totals[b] for every level b."""
    x2 = x.reshape(-1, x.shape[-1]).float()          # [tokens, d_in]
    g2 = g.reshape(-1, g.shape[-1]).float()          # [tokens, d_out]
    for bits in levels:
        delta = weight - variant(name, bits).to(weight.device)       # [d_out, d_in]
        totals[bits] += 0.5 * float(((x2 @ delta.t()) * g2).pow(2).sum())


def fisher_scores(model: torch.nn.Module, layers: Sequence[LayerInfo], windows: torch.Tensor,
                  variant: Variant, levels: Sequence[int], batch_size: int = 4,
                  check: Callable[[], None] | None = None,
                  on_batch: Callable[[int, int], None] | None = None) -> dict[str, dict[int, float]]:
    """{layer name: {bits: score}} summed over `windows` [n, seqlen] (token ids)."""
    device = next(model.parameters()).device
    totals = {layer.name: {bits: 0.0 for bits in levels} for layer in layers}
    inputs: dict[str, torch.Tensor] = {}
    handles = []

    def keep_input(name: str):
        def hook(module, args):
            inputs[name] = args[0].detach()
        return hook

    def score_output(name: str, module: torch.nn.Module):
        weight = linear_weight(module).detach().float()

        def hook(module, grad_input, grad_output):
            _score_layer(inputs.pop(name), grad_output[0].detach(), weight, variant, name, levels, totals[name])
        return hook

    for layer in layers:
        module = model.get_submodule(layer.name)
        handles.append(module.register_forward_pre_hook(keep_input(layer.name)))
        handles.append(module.register_full_backward_hook(score_output(layer.name, module)))
    was_training = model.training
    model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        # a leaf that needs a gradient at the embedding output: the backward reaches every layer
        embed = model.get_input_embeddings()
        for start in range(0, len(windows), batch_size):
            if check is not None:
                check()
            ids = windows[start:start + batch_size].to(device)
            embeds = embed(ids).detach().requires_grad_(True)
            loss = model(inputs_embeds=embeds, labels=ids).loss * ids.shape[0]   # summed over the batch
            loss.backward()
            inputs.clear()
            if on_batch is not None:
                on_batch(min(start + batch_size, len(windows)), len(windows))
    finally:
        for handle in handles:
            handle.remove()
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)
    return totals


__all__ = ["fisher_scores"]
