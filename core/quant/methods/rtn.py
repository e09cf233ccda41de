"""`rtn`: round-to-nearest on the group grid, q = clamp(round(w/s) + z, 0, 2^b − 1).

Needs no data. With calibration, H only weights the optional range search (--clip) by
diag H and measures the output error; without it, errors are weight-space errors.
"""

from __future__ import annotations

from ..registry import register_quantizer


@register_quantizer("rtn", "round-to-nearest (no data needed)", calibrated=False, sequential=False, clip="off")
def rtn(W, H, layer, options):
    import torch

    from ..grid import quantize_rtn

    importance = torch.diag(H) if H is not None else None
    return quantize_rtn(W.to(torch.float32), layer.bits, layer.group_size, layer.sym, options.clip, importance), {}
