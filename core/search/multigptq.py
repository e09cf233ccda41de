"""GPTQ of several weights and bit-widths against one Hessian, in a single sweep.

GPTQ treats the rows of W independently given H: the update after quantizing column i
is W[r, i:] −= err_r · U[i, i:] for each row r, with the same U (H's inverse Cholesky).
So layers that read the same input (q/k/v, gate/up) at every level of the database can
be stacked row-wise, [Σ layers·levels · d_out, d_in], and swept once; each row keeps its
own grid and its own maximum code 2^bits − 1. The result equals `gptq_quantize` run once
per (layer, level) — tests/search check that — at a fraction of the Python-loop cost.

Same steps as core/quant/gptq.py: dead inputs zeroed, optional act-order (columns by
descending diag H, which then implies static groups), optional range-shrink clipping of
each group's grid, dampening with retries, lazy block updates of 128 columns.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..quant.gptq import _block_size, _inverse_cholesky   # the engine's own steps, reused
from ..quant.grid import ClipConfig, as_clip, check_bits, fit_grid
from ..quant.tensor import QuantizedWeight


def _fit_rows(W: torch.Tensor, row_slices: list[tuple[slice, int]], sym: bool, clip: ClipConfig | None,
              importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [R] of the group W [R, g], each row slice with its own bits."""
    scale = torch.empty(W.shape[0], device=W.device)
    zero = torch.empty(W.shape[0], device=W.device)
    for rows, bits in row_slices:
        scale[rows], zero[rows] = fit_grid(W[rows], bits, sym, clip, importance)
    return scale, zero


@torch.no_grad()
def gptq_multi(weights: Sequence[torch.Tensor], H: torch.Tensor, levels: Sequence[int], group_size: int,
               sym: bool = False, act_order: bool = False, static_groups: bool = True, damp: float = 0.01,
               block_size: int = 128, clip: bool | ClipConfig | None = None) -> list[list[QuantizedWeight]]:
    """[layer][level] QuantizedWeight for `weights` (each [d_out_k, d_in]) sharing Hessian H."""
    for bits in levels:
        check_bits(bits)
    d_in = H.shape[0]
    if d_in % group_size:
        raise ValueError(f"group size {group_size} does not divide d_in {d_in}")
    device = H.device
    H = H.to(torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    # rows: level-major blocks of every layer's rows
    blocks, row_slices, start = [], [], 0
    for bits in levels:
        for W in weights:
            blocks.append(W.detach().to(device, torch.float32))
            row_slices.append((slice(start, start + W.shape[0]), bits))
            start += W.shape[0]
    W = torch.cat(blocks).clone()                       # [R, d_in]
    W[:, dead] = 0.0
    maxq = torch.cat([torch.full((s.stop - s.start,), 2.0 ** b - 1, device=device) for s, b in row_slices])
    n_groups = d_in // group_size
    clip_cfg = as_clip(clip)
    static = static_groups or act_order
    scales = torch.zeros(W.shape[0], n_groups, device=device)
    zeros = torch.zeros(W.shape[0], n_groups, device=device)
    diag = torch.diag(H)
    if static:     # every group's grid from the original (dead-zeroed) weights
        for g in range(n_groups):
            cols = slice(g * group_size, (g + 1) * group_size)
            scales[:, g], zeros[:, g] = _fit_rows(W[:, cols], row_slices, sym, clip_cfg, diag[cols])
    perm = torch.argsort(diag, descending=True) if act_order else torch.arange(d_in, device=device)
    W, H = W[:, perm], H[perm][:, perm]
    group_of = (perm // group_size).tolist()      # original group of the column at each position
    U, _, _ = _inverse_cholesky(H, damp)
    diag_perm = torch.diag(H)

    codes = torch.zeros(W.shape, dtype=torch.uint8, device=device)
    blk = _block_size(block_size, group_size)
    for i1 in range(0, d_in, blk):
        i2 = min(i1 + blk, d_in)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of[col]
            if not static and col % group_size == 0:      # grid from the updated weights
                scales[:, g], zeros[:, g] = _fit_rows(W1[:, i: i + group_size], row_slices, sym, clip_cfg,
                                                      diag_perm[col: col + group_size])
            w, s, z = W1[:, i], scales[:, g], zeros[:, g]
            q = torch.clamp(torch.round(w / s) + z, torch.zeros_like(maxq), maxq)
            codes[:, col] = q.to(torch.uint8)
            err = (w - s * (q - z)) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            Err1[:, i] = err
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)

    codes = codes[:, torch.argsort(perm)]
    out: list[list[QuantizedWeight]] = [[None] * len(levels) for _ in weights]  # type: ignore[list-item]
    k = 0
    for li, bits in enumerate(levels):
        for wi in range(len(weights)):
            rows = row_slices[k][0]
            out[wi][li] = QuantizedWeight(codes=codes[rows].contiguous(), scales=scales[rows].contiguous(),
                                          zeros=zeros[rows].contiguous(), bits=bits, group_size=group_size,
                                          sym=sym)
            k += 1
    return out


__all__ = ["gptq_multi"]
