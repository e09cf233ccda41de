"""Torch reference for the fused kernels: unpack, dequantize, matmul (exact, any device).

Notation: N = out_features, K = in_features, g = group_size, G = K // g.
Kernel layout (what `QuantLinear` stores and the Triton kernels read):
    qweight [ceil(K*bits/32), N] int32   codes packed along K (see packing.py)
    scales  [G, N] float                 one scale per (group, output)
    zeros   [G, N] float                 zero points; usually integers, any float allowed
Dequantized weight: W[n, k] = scales[k // g, n] * (code[n, k] - zeros[k // g, n]).
Arithmetic is fp32; the result is cast to the requested dtype once, at the end.
"""

from __future__ import annotations

import torch

from .packing import unpack_qweight

__all__ = ["dequantize_codes", "dequantize_packed", "dequant_matmul_reference"]


def dequantize_codes(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """codes [N, K] ints, scales/zeros [N, G] -> W [N, K] in `dtype` (math in fp32).

    This is the user-facing orientation (`QuantLinear.from_codes` takes the same tensors).
    """
    n, k = codes.shape
    if k % group_size:
        raise ValueError(f"group_size {group_size} does not divide in_features {k}")
    g = k // group_size
    if scales.shape != (n, g) or zeros.shape != (n, g):
        raise ValueError(f"scales/zeros must be [{n}, {g}], got {tuple(scales.shape)} and {tuple(zeros.shape)}")
    q = codes.to(torch.float32).reshape(n, g, group_size)
    w = scales.to(torch.float32)[:, :, None] * (q - zeros.to(torch.float32)[:, :, None])
    return w.reshape(n, k).to(dtype)


def dequantize_packed(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Kernel layout (qweight [Kw, N], scales/zeros [G, N]) -> W [N, K] in `dtype`."""
    codes = unpack_qweight(qweight, bits, in_features)
    return dequantize_codes(codes, scales.t(), zeros.t(), group_size, dtype)


def dequant_matmul_reference(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """x [..., K] -> x @ W.T [..., N], all in fp32: the ground truth the kernels are tested against."""
    k = x.shape[-1]
    w = dequantize_packed(qweight, scales, zeros, bits, group_size, k, torch.float32)
    return x.to(torch.float32) @ w.t()
