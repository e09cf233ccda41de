"""`rtn-mse`: round-to-nearest on the group grid, each group's range chosen against diag(H).

For a group of g input columns of one output row, the grid of the range [c·xmin, c·xmax]
rounds w to ŵ(c); the shrink factor kept is

    c* = argmin_{c ∈ {1, 1 − δ, …, min_shrink}}  Σ_j H_jj · (w_j − ŵ_j(c))²,   δ = (1 − min_shrink)/steps

with H_jj = (2/N) Σ_n x_nj², the mean square of input j over the calibration tokens: an
error on a column that sees large inputs costs more output error. This is the range search
GPTQ runs for its grids (core/quant/grid.fit_grid, weighted by diag H, norm 2, shrink 1 →
0.8 in 20 steps), on plain rounding: no error feedback between columns, so it needs only
diag(H), though the pipeline accumulates all of H to report rel_error = tr(ΔW H ΔWᵀ)/tr(W H Wᵀ).
Layers are quantized in GPTQ's true-sequential order: a group's H sees the block's earlier
groups already quantized.
"""

from __future__ import annotations

from ..registry import register_quantizer


@register_quantizer("rtn-mse", "round-to-nearest with each group's range searched to minimise the "
                    "diag(H)-weighted squared error (needs calibration)",
                    calibrated=True, sequential=True, clip="always", uses=("true_sequential",))
def rtn_mse(W, H, layer, options):
    import dataclasses

    import torch

    from ..grid import ClipConfig, quantize_rtn

    clip = dataclasses.replace(options.clip or ClipConfig(enabled=True), enabled=True, norm=2.0)
    importance = torch.diag(H)                       # [d_in]: H_jj, the weight of column j's error
    return quantize_rtn(W.to(torch.float32), layer.bits, layer.group_size, layer.sym, clip, importance), {}
