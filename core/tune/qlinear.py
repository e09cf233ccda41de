"""A quantized linear layer that can be tuned: codes fixed in a buffer, grid trainable.

    W_hat[o, i] = s[o, i // g] * (q[o, i] - z[o, i // g])      y = x W_hatᵀ + b

The codes q (uint8 [d_out, d_in]) are a buffer: gradients never touch them; only the V
step (core/tune/vstep.py) rewrites some of them. The scales s and zero points z
(float32 [d_out, n_groups]) are nn.Parameters, the P step's Adam moves them. They stay
float32 (the master copy) whatever dtype the matmul runs in.

The V step needs ∂L/∂W_hat, which autograd never materialises for a weight that is
computed inside the forward. `_Dequant` is W_hat = s (q - z) as an autograd function whose
backward also adds ∂L/∂W_hat into `layer.weight_grad` when `layer.capture_grad` is set. It
is a side effect of the backward pass, so it works under gradient checkpointing too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.tensor import QuantizedWeight


def _dequant(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """W_hat [d_out, d_in] float32 from codes [d_out, d_in] and s, z [d_out, n_groups]."""
    d_out, d_in = codes.shape
    q = codes.to(torch.float32).view(d_out, d_in // group_size, group_size)
    return (scales[..., None] * (q - zeros[..., None])).view(d_out, d_in)


class _Dequant(torch.autograd.Function):
    """W_hat = s (q - z) with gradients for s and z, and ∂L/∂W_hat handed to the layer."""

    @staticmethod
    def forward(ctx, scales: torch.Tensor, zeros: torch.Tensor, layer: "TunableQuantLinear") -> torch.Tensor:
        ctx.layer = layer
        ctx.save_for_backward(scales, zeros)
        return _dequant(layer.codes, scales, zeros, layer.group_size)

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        layer: TunableQuantLinear = ctx.layer
        scales, zeros = ctx.saved_tensors
        grad_w = grad_w.float()
        d_out, d_in = grad_w.shape
        g3 = grad_w.view(d_out, d_in // layer.group_size, layer.group_size)
        g_sum = g3.sum(-1)                                             # [d_out, n_groups]
        grad_s = grad_z = None
        if ctx.needs_input_grad[0]:                                    # ∂W/∂s = q - z
            grad_s = (g3 * layer.codes.view_as(g3)).sum(-1, dtype=torch.float32) - zeros * g_sum
        if ctx.needs_input_grad[1]:                                    # ∂W/∂z = -s
            grad_z = -g_sum * scales
        if layer.capture_grad:     # autograd is done with grad_w: keep it rather than copy it
            if layer.weight_grad is None:
                layer.weight_grad = grad_w.detach()
            else:
                layer.weight_grad.add_(grad_w)
        return grad_s, grad_z, None


class TunableQuantLinear(nn.Module):
    """y = x W_hatᵀ + b (+ B (A x) when low-rank adapters are attached)."""

    is_bitsmith_linear = True   # core/inventory.py counts it as a linear layer

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None = None, train_zeros: bool = True) -> None:
        super().__init__()
        self.bits, self.group_size, self.sym = qw.bits, qw.group_size, qw.sym
        self.out_features, self.in_features = qw.codes.shape
        self.register_buffer("codes", qw.codes.to(torch.uint8).clone())            # [d_out, d_in]
        self.scales = nn.Parameter(qw.scales.detach().float().clone())              # [d_out, n_groups]
        self.zeros = nn.Parameter(qw.zeros.detach().float().clone(), requires_grad=train_zeros)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())
        self.capture_grad = False                   # set by the V step
        self.weight_grad: torch.Tensor | None = None   # ∂L/∂W_hat [d_out, d_in] float32, summed
        self.capture_inputs = False                 # set by the V step's column preconditioner
        self.input_sq: torch.Tensor | None = None      # Σ over tokens of x_j² [d_in] (with capture_inputs)
        self.input_tokens = 0                          # tokens summed into input_sq
        self.eora_A: torch.Tensor | None = None     # [r, d_in]  (frozen adapters, if any)
        self.eora_B: torch.Tensor | None = None     # [d_out, r]

    @property
    def maxq(self) -> int:
        return 2 ** self.bits - 1

    def dequantize(self) -> torch.Tensor:
        """W_hat [d_out, d_in] float32, no gradient."""
        with torch.no_grad():
            return _dequant(self.codes, self.scales, self.zeros, self.group_size)

    @property
    def weight(self) -> torch.Tensor:
        """W_hat, for code that reads `.weight` (inventory, dtype probes)."""
        return self.dequantize()

    def quantized_weight(self) -> QuantizedWeight:
        """The current state as the engine's container (detached copies)."""
        return QuantizedWeight(self.codes.detach().clone(), self.scales.detach().float().clone(),
                               self.zeros.detach().float().clone(), self.bits, self.group_size, self.sym)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.capture_inputs and torch.is_grad_enabled():   # the V step's curvature proxy
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            sq = flat.pow(2).sum(0)
            self.input_sq = sq if self.input_sq is None else self.input_sq.add_(sq)
            self.input_tokens += flat.shape[0]
        w_hat = _Dequant.apply(self.scales, self.zeros, self)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        y = F.linear(x.to(dtype), w_hat.to(dtype), bias)
        if self.eora_A is not None:
            y = y + F.linear(F.linear(x.to(dtype), self.eora_A.to(dtype)), self.eora_B.to(dtype))
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}")


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def install_tunable(model: nn.Module, quantized: dict[str, QuantizedWeight],
                    biases: dict[str, torch.Tensor | None], train_zeros: bool = True) -> dict[str, TunableQuantLinear]:
    """Replace each named layer by a TunableQuantLinear on the model's device; {name: layer}."""
    device = next(model.parameters()).device
    layers = {}
    for name, qw in quantized.items():
        layer = TunableQuantLinear(qw, biases.get(name), train_zeros).to(device)
        parent, child = _parent(model, name)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers
