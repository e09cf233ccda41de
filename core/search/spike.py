"""Spike-aware mixed precision (Maisonnave et al., 2025) with the QFeM spike score.

Score of a linear layer: run calibration windows, take each token's input max-abs
m_t = max_j |x_tj|, and average over windows the ratio max_t m_t / median_t m_t.
Layers that carry activation spikes (Llama's early and last `down_proj`) score in the
hundreds or thousands, the rest near 10.

Allocation: layers above the threshold α (or the top k) are kept (16-bit, or 8-bit), and
the rest get the highest level that meets the budget with the kept layers counted in it;
budget left over goes one level up to the remaining layers in order of decreasing score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..capture import forward_with_input_hooks
from .genome import Genome, SearchSpace


# --- scores ------------------------------------------------------------------------------

class _SpikeRecorder:
    """Forward pre-hook state for one linear: the running sum of per-window ratios."""

    def __init__(self) -> None:
        self.ratio_sum = 0.0
        self.windows = 0

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 2 else x[None, None]  # [B, L, d_in]
        m = x.abs().amax(dim=-1).float()                                           # [B, L] per-token max-abs
        ratio = m.amax(dim=-1) / m.median(dim=-1).values.clamp_min(1e-12)          # [B]
        self.ratio_sum += float(ratio.double().sum())
        self.windows += int(ratio.numel())


@torch.no_grad()
def spike_scores(model: torch.nn.Module, layer_names: Sequence[str], windows: torch.Tensor,
                 batch_size: int = 4, check: Callable[[], None] | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """{layer name: mean over windows of max_t / median_t of per-token input max-abs}.

    windows: [n, L] token ids. Each window is a separate row of the batch, so the ratio
    is per window as the score defines it.
    """
    recorders = {name: _SpikeRecorder() for name in layer_names}
    forward_with_input_hooks(model, recorders, windows, batch_size, check, on_batch)
    return {name: r.ratio_sum / max(r.windows, 1) for name, r in recorders.items()}


# --- allocation --------------------------------------------------------------------------

@dataclass
class SpikeAllocation:
    genome: Genome
    kept: list[str]          # layers kept at `keep_bits`, by decreasing score
    dropped: list[str]       # layers above the threshold that the budget could not keep
    rest_bits: int           # the level every other layer starts from


def choose_kept(scores: dict[str, float], threshold: float | None, top_k: int | None) -> list[str]:
    """Layer names to keep, by decreasing score: the top k, or those above the threshold."""
    ranked = sorted(scores, key=lambda n: -scores[n])
    if top_k is not None:
        return ranked[:top_k]
    return [n for n in ranked if threshold is not None and scores[n] > threshold]


def spike_allocation(space: SearchSpace, scores: dict[str, float], target: float, kept: Sequence[str],
                     keep_bits: int = 16) -> SpikeAllocation:
    """Genome with `kept` at `keep_bits` and the rest at the best level the budget allows.

    `space.levels` must contain `keep_bits`; the rest use the levels below it.
    """
    keep_index = space.levels.index(keep_bits)
    index = {n: i for i, n in enumerate(space.names)}
    kept = list(kept)
    dropped: list[str] = []
    while True:
        kept_set = set(kept)
        genome = [0] * space.n_layers
        for name in kept:
            genome[index[name]] = keep_index
        if space.fits(tuple(genome), target) or not kept:
            break
        dropped.insert(0, kept.pop())   # even the lowest level overflows: keep fewer
    rest = [i for i, n in enumerate(space.names) if n not in kept_set]
    # the highest uniform level for the rest that fits
    level = 0
    for candidate in range(keep_index):
        trial = list(genome)
        for i in rest:
            trial[i] = candidate
        if space.fits(tuple(trial), target):
            level, genome = candidate, trial
    # spend what is left: one level up, most spiky first, skipping layers that do not fit
    if level + 1 < keep_index:
        for i in sorted(rest, key=lambda i: -scores.get(space.names[i], 0.0)):
            genome[i] += 1
            if not space.fits(tuple(genome), target):
                genome[i] -= 1
    return SpikeAllocation(tuple(genome), kept, dropped, space.levels[level])


__all__ = ["spike_scores", "choose_kept", "spike_allocation", "SpikeAllocation"]
