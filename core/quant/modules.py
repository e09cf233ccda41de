"""Putting quantized weights into a model: dequantized in place, or as quantized modules.

`set_dequantized_weights` writes W_hat into the existing float layers (what the pipeline
does between blocks, and what a "fake-quantized" model is). `install_quantized` replaces
each quantized layer with `bitsmith.kernels.QuantLinear` (fused dequant + matmul on CUDA,
exactly `F.linear(x, W_hat, bias)` elsewhere), marked `is_bitsmith_linear` so that the
layer inventory still lists it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..inventory import _is_conv1d
from .tensor import QuantizedWeight


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def layer_bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    if bias is None or bias.device.type == "meta":
        return None if bias is None else bias
    return bias.detach()


def make_quant_linear(qw: QuantizedWeight, bias: torch.Tensor | None, cache_dequantized: bool = False) -> nn.Module:
    from bitsmith.kernels import QuantLinear

    layer = QuantLinear.from_codes(qw.codes, qw.scales.float(), qw.zeros.float(), qw.bits, qw.group_size,
                                   bias=None if bias is None else bias.float(), cache_dequantized=cache_dequantized)
    layer.is_bitsmith_linear = True     # core.inventory.is_linear looks for this
    return layer


def install_quantized(model: nn.Module, quantized: dict[str, QuantizedWeight],
                      cache_dequantized: bool = False) -> nn.Module:
    """Replace each named layer (nn.Linear or Conv1D) by a QuantLinear; returns the model.

    `cache_dequantized` keeps each layer's dequantized weight between calls (CPU speed)."""
    for name, qw in quantized.items():
        module = model.get_submodule(name)
        bias = layer_bias(module)
        if bias is not None and bias.device.type == "meta":
            bias = torch.zeros(qw.codes.shape[0])   # filled from the checkpoint's dense state
        new = make_quant_linear(qw, bias, cache_dequantized)
        parent, child = _parent(model, name)
        setattr(parent, child, new)
    return model


@torch.no_grad()
def set_dequantized_weights(model: nn.Module, quantized: dict[str, QuantizedWeight]) -> None:
    """Overwrite each layer's float weight with W_hat (in the weight's own dtype and layout)."""
    for name, qw in quantized.items():
        module = model.get_submodule(name)
        w_hat = qw.dequantize(module.weight.dtype).to(module.weight.device)
        module.weight.copy_(w_hat.t() if _is_conv1d(module) else w_hat)
