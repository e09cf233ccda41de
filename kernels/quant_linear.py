"""QuantLinear: a linear layer that holds packed low-bit codes and computes with them.

Buffers (what `state_dict` saves; N = out_features, K = in_features, G = K // group_size):
    qweight [ceil(K*bits/32), N] int32  codes packed along K (GPTQ's qweight layout, and the
                                        one the Triton kernels read; see packing.py)
    scales  [G, N] float                per (group, output) scale
    zeros   [G, N] float                zero points, any float (integers unless fine-tuned)
    bias    [N] float, or absent
Dequantized weight: W[n, k] = scales[k // g, n] * (code[n, k] - zeros[k // g, n]).

forward(x [..., K]) -> [..., N]:
- CUDA input, kernels serve the layer (bits 2/3/4/8, a group size of whole words): the fused
  Triton kernel (`matmul.quant_matmul`), fp32 accumulation, output in x's dtype;
- otherwise (CPU, other bit-widths): `F.linear(x, self.dequantize(x.dtype), bias)`, i.e. bit
  for bit what an nn.Linear holding the dequantized weight computes, so a model of
  QuantLinears and the same model with dequantized weights give the same perplexity.
Gradients flow to x on both paths (the kernel path's backward is x_grad = g @ W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autotune import kernel_supports
from .packing import pack_qweight, packed_size, unpack_qweight
from .reference import dequantize_packed

__all__ = ["QuantLinear"]

_BACKENDS = ("auto", "torch", "triton")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class _KernelMatmul(torch.autograd.Function):
    """y = x @ W.T through the Triton kernel; backward uses the dequantized weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "QuantLinear") -> torch.Tensor:  # type: ignore[override]
        from .matmul import quant_matmul

        ctx.layer = layer
        return quant_matmul(x, layer.qweight, layer.scales, layer.zeros, layer.bits, layer.group_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        w = ctx.layer.dequantize(grad.dtype)  # [N, K]
        return grad @ w, None


class QuantLinear(nn.Module):
    """y = x @ W.T + b with W stored as `bits`-bit codes in groups of `group_size` inputs.

    backend: "auto" (Triton on CUDA when the kernels serve the layer, torch otherwise),
    "torch" (always the exact dequantize-then-matmul path), "triton" (always the kernel; on
    CPU tensors only under TRITON_INTERPRET=1, which is how the tests exercise it).
    cache_dequantized: keep the dequantized weight of the torch path between calls (one
    [N, K] tensor per dtype/device in use; rebuilt whenever a buffer changes in place or is
    replaced). Memory for speed: the CPU evaluator wants it, a GPU never needs it.
    """

    is_bitsmith_linear = True   # the engine's layer inventory lists it as a linear layer
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: bool = False,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
        cache_dequantized: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        if group_size <= 0 or in_features % group_size:
            raise ValueError(f"group_size {group_size} must divide in_features {in_features}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.backend = backend
        self.cache_dequantized = cache_dequantized
        n_groups = in_features // group_size
        words = packed_size(in_features, bits)
        self.register_buffer("qweight", torch.zeros(words, out_features, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.ones(n_groups, out_features, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.zeros(n_groups, out_features, dtype=dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_buffer("bias", None)
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bits: int,
        group_size: int,
        bias: torch.Tensor | None = None,
        *,
        dtype: torch.dtype | None = None,
        cache_dequantized: bool = False,
        backend: str = "auto",
    ) -> "QuantLinear":
        """Build from plain tensors (user orientation, as the quantizer produces them).

        codes  [N, K] integer, values in [0, 2**bits - 1]
        scales [N, K // group_size] float, zeros [N, K // group_size] float (or integer)
        bias   [N] or None
        dtype: storage dtype of scales/zeros/bias; default: scales' dtype.
        """
        if codes.dim() != 2:
            raise ValueError(f"codes must be [out_features, in_features], got {tuple(codes.shape)}")
        n, k = codes.shape
        if group_size <= 0 or k % group_size:
            raise ValueError(f"group_size {group_size} must divide in_features {k}")
        g = k // group_size
        if scales.shape != (n, g) or zeros.shape != (n, g):
            raise ValueError(f"scales and zeros must be [{n}, {g}], got {tuple(scales.shape)} and {tuple(zeros.shape)}")
        if bias is not None and bias.shape != (n,):
            raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
        if not scales.dtype.is_floating_point:
            raise TypeError(f"scales must be floating point, got {scales.dtype}")
        dtype = dtype or scales.dtype
        layer = cls(k, n, bits, group_size, bias is not None, dtype=dtype, device=codes.device,
                    cache_dequantized=cache_dequantized, backend=backend)
        with torch.no_grad():
            layer.qweight.copy_(pack_qweight(codes, bits))  # checks the code range
            layer.scales.copy_(scales.t())
            layer.zeros.copy_(zeros.t())
            if bias is not None:
                assert layer.bias is not None
                layer.bias.copy_(bias)
        return layer

    # ------------------------------------------------------------------ views of the weight

    def codes(self) -> torch.Tensor:
        """Integer codes [out_features, in_features] (uint8)."""
        return unpack_qweight(self.qweight, self.bits, self.in_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W [out_features, in_features] = scales * (codes - zeros), computed in fp32, cast to
        `dtype` (default: the scales' dtype)."""
        return dequantize_packed(self.qweight, self.scales, self.zeros, self.bits, self.group_size,
                                 self.in_features, dtype or self.scales.dtype)

    def _dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        if not self.cache_dequantized:
            return self.dequantize(dtype)
        bufs = (self.qweight, self.scales, self.zeros)
        # in-place edits bump _version; replaced buffers change data_ptr: either rebuilds
        key = (dtype, self.qweight.device) + tuple((b.data_ptr(), b._version) for b in bufs)
        w = self._cache.get(key)
        if w is None:
            self._cache.clear()
            w = self._cache[key] = self.dequantize(dtype)
        return w

    def clear_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------ forward

    def use_kernel(self, x: torch.Tensor) -> bool:
        """Whether forward(x) takes the Triton path."""
        if self.backend == "torch" or x.dtype not in _KERNEL_DTYPES:
            return False
        if not kernel_supports(self.bits, self.group_size, self.in_features):
            return False
        return self.backend == "triton" or x.is_cuda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected [..., {self.in_features}] input, got {tuple(x.shape)}")
        if self.use_kernel(x):
            if torch.is_grad_enabled() and x.requires_grad:
                y = _KernelMatmul.apply(x, self)
            else:  # inference: skip autograd's bookkeeping on the decode hot path
                from .matmul import quant_matmul

                y = quant_matmul(x, self.qweight, self.scales, self.zeros, self.bits, self.group_size)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        w = self._dequantized(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda()/.half() move buffers: drop the cache
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}, backend={self.backend}")
