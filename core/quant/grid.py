"""The uniform group quantizer (the grid), as ALGORITHMS.md gives it.

Per group of `g` consecutive input columns of one output row:

    asymmetric: xmin = min(0, min w), xmax = max(0, max w),
                s = (xmax - xmin) / (2^b - 1),  z = round(-xmin / s)
    symmetric:  xmax = max(|xmin|, xmax), xmin = -xmax,
                s = 2 xmax / (2^b - 1),          z = 2^(b-1)
    q = clamp(round(w / s) + z, 0, 2^b - 1),     w_hat = s (q - z)

A group whose range is zero (all zeros) gets s = 1 so that it stays exact. The optional
clipping search shrinks the range by factors from 1 down to `min_shrink` and keeps, per
group, the factor with the lowest (optionally importance-weighted) squared error.

Everything here is a pure function on tensors; `quantize_rtn` is round-to-nearest for a
whole weight matrix, and `fit_grid` / `quantize_codes` are the pieces GPTQ uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BadInput
from ..plan import MAX_BITS, MIN_BITS, check_bits, resolve_group_size  # noqa: F401 (re-exported)
from .tensor import QuantizedWeight



@dataclass
class ClipConfig:
    """Range-shrink (clipping) search for the grid. Off by default."""

    enabled: bool = False
    min_shrink: float = 0.8   # smallest range factor tried (GPTQ's reference maxshrink)
    steps: int = 20           # factors 1, 1 - (1-min_shrink)/steps, ..., min_shrink
    norm: float = 2.0         # error exponent |w - w_hat|^norm (GPTQ's reference uses 2.4)

    def validate(self) -> None:
        if not 0.0 < self.min_shrink <= 1.0:
            raise BadInput(f"clip min_shrink {self.min_shrink} must be in (0, 1]", "use e.g. 0.8")
        if self.steps < 1:
            raise BadInput(f"clip steps {self.steps} must be at least 1", "use e.g. 20")
        if self.norm <= 0:
            raise BadInput(f"clip norm {self.norm} must be positive", "use 2.0")


def as_clip(clip: bool | ClipConfig | None) -> ClipConfig | None:
    """None when clipping is off; a ClipConfig when it is on."""
    if clip is None or clip is False:
        return None
    if clip is True:
        return ClipConfig(enabled=True)
    return clip if clip.enabled else None


# --- the grid of one set of rows ------------------------------------------------------

def grid_params(xmin: torch.Tensor, xmax: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [rows] from the range [xmin, xmax] [rows] (xmin <= 0 <= xmax)."""
    maxq = 2 ** bits - 1
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    scale = (xmax - xmin) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))   # all-zero group: stays exact
    if sym:
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (as float) of `w` [rows, ...] on the grid with `scale`, `zero` broadcastable."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def fit_grid(w: torch.Tensor, bits: int, sym: bool = False, clip: bool | ClipConfig | None = None,
             importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [rows] for the rows of w [rows, g] (one group per row).

    With clipping on, each row keeps the shrink factor whose error
    sum_j importance_j |w_j - w_hat_j|^norm is lowest; `importance` [g] or [rows, g]
    (e.g. diag(H) of the group's columns) defaults to 1.
    """
    w = w.float()
    xmin = torch.clamp(w.min(dim=1).values, max=0.0)
    xmax = torch.clamp(w.max(dim=1).values, min=0.0)
    scale, zero = grid_params(xmin, xmax, bits, sym)
    cfg = as_clip(clip)
    if cfg is None:
        return scale, zero
    weight = torch.ones_like(w) if importance is None else importance.float().expand_as(w)
    best = _grid_error(w, scale, zero, bits, weight, cfg.norm)
    for step in range(1, cfg.steps + 1):
        shrink = 1.0 - (1.0 - cfg.min_shrink) * step / cfg.steps
        s, z = grid_params(xmin * shrink, xmax * shrink, bits, sym)
        err = _grid_error(w, s, z, bits, weight, cfg.norm)
        better = err < best
        if better.any():
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
    return scale, zero


def _grid_error(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                weight: torch.Tensor, norm: float) -> torch.Tensor:
    """Weighted error per row [rows] of quantizing w [rows, g]."""
    w_hat = dequantize_codes(quantize_codes(w, scale[:, None], zero[:, None], bits), scale[:, None], zero[:, None])
    return (weight * (w - w_hat).abs().pow(norm)).sum(dim=1)


# --- whole matrices --------------------------------------------------------------------

def quantize_rtn(W: torch.Tensor, bits: int, group_size: int, sym: bool = False,
                 clip: bool | ClipConfig | None = None, importance: torch.Tensor | None = None) -> QuantizedWeight:
    """Round-to-nearest of W [d_out, d_in] on groups of `group_size` input columns.

    `importance` [d_in] (e.g. diag of the layer's Hessian) weights the clipping search.
    """
    check_bits(bits)
    d_out, d_in = W.shape
    if d_in % group_size:
        raise ValueError(f"group size {group_size} does not divide d_in {d_in}; resolve it first")
    n_groups = d_in // group_size
    rows = W.detach().float().reshape(d_out * n_groups, group_size)    # one group per row
    imp = None if importance is None else importance.float().view(1, n_groups, group_size).expand(
        d_out, n_groups, group_size).reshape(d_out * n_groups, group_size)
    scale, zero = fit_grid(rows, bits, sym, clip, imp)
    codes = quantize_codes(rows, scale[:, None], zero[:, None], bits)
    return QuantizedWeight(codes=codes.to(torch.uint8).view(d_out, d_in).contiguous(),
                           scales=scale.view(d_out, n_groups).contiguous(),
                           zeros=zero.view(d_out, n_groups).contiguous(),
                           bits=bits, group_size=group_size, sym=sym)


# --- fp8 weight-only (a kept layer) ---------------------------------------------------

FP8_MAX = 448.0   # largest finite float8_e4m3fn


def quantize_fp8(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [d_out, d_in] -> (float8_e4m3fn values [d_out, d_in], scale [d_out] float32).

    One scale per output row maps the row's max |w| to the format's largest value."""
    W = W.detach().float()
    scale = W.abs().amax(dim=1) / FP8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (W / scale[:, None]).to(torch.float8_e4m3fn), scale


def dequantize_fp8(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (values.float() * scale[:, None].float()).to(dtype)
