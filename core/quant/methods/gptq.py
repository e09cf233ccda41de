"""`gptq`: GPTQ against the layer's Hessian (core/quant/gptq.py).

Columns are quantized in order (by descending diag H with act-order) and each column's
rounding error is spread over the columns not yet quantized, err = (w_i − q_i)/U_ii,
W[:, i:] −= err · U[i, i:] with H⁻¹ = Uᵀ U, which minimises ‖(W − Ŵ) X‖² greedily.
"""

from __future__ import annotations

from ..registry import register_quantizer


@register_quantizer("gptq", "GPTQ: each column's rounding error compensated by the columns after it (needs "
                    "calibration)", calibrated=True, sequential=True, clip="on",
                    uses=("damp", "act_order", "static_groups", "block_size", "true_sequential"), workspace=5)
def gptq(W, H, layer, options):
    from ..gptq import gptq_quantize

    qw, info = gptq_quantize(W, H, layer.bits, layer.group_size, layer.sym, act_order=options.act_order,
                             static_groups=options.static_groups, damp=options.damp,
                             block_size=options.block_size, clip=options.clip)
    return qw, info.to_dict()
