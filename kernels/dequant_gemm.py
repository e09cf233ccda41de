"""Fused unpack + dequantize + `tl.dot` matmul for prefill (larger M), Triton.

y[M, N] = x[M, K] @ W.T, W[n, k] = s[k//g, n] * (q[n, k] - z[k//g, n]); weights read from
qweight [ceil(K*bits/32), N] int32 packed along K, scales/zeros [G, N] (see packing.py).

Program (pid_m, pid_n, pid_k) computes a BLOCK_M x BLOCK_N tile of y over 1/SPLIT_K of K.
Per K tile it loads the packed words once ([BLOCK_K*bits/32, BLOCK_N] int32, coalesced
along N), expands them in registers to codes [BLOCK_K, BLOCK_N] in natural K order,
dequantizes with the tile's single (scale, zero) row -- BLOCK_K divides g -- to x's dtype,
and feeds tensor cores with fp32 accumulation. Dequantizing the weight tile costs
BLOCK_K*BLOCK_N ops per tile, independent of BLOCK_M, which is why prefill does it this
way rather than the GEMV kernel's per-row zero-point correction. Output tiles are visited
in GROUP_M-tall column bands so that consecutive programs share weight tiles in L2.
With SPLIT_K > 1 the partial tiles are atomically added into a zeroed fp32 buffer.

This module imports triton at import time: import it only when a kernel is launched.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .autotune import Config, check_config
from .dequant_gemv import _codes_to_f32


@triton.jit
def _unpack_tile(qw_ptr, k0, offs_n, n_mask, N, BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """Codes of rows k0 .. k0+BLOCK_K-1 (K order) for columns offs_n -> [BLOCK_K, BLOCK_N] uint32."""
    if BITS == 3:
        # 32 codes per 3 words; code j of a block starts at stream bit 3j: word 3j // 32,
        # shift 3j % 32; codes 10 and 21 take their high bits from the next word, which
        # (hi << 1) << (31 - sh) places without ever shifting by 32.
        BLOCK_T: tl.constexpr = BLOCK_K // 32
        tt = tl.arange(0, BLOCK_T)
        w_ptrs = qw_ptr + ((k0 // 32 + tt) * 3)[:, None] * N + offs_n[None, :]
        w0 = tl.load(w_ptrs, mask=n_mask[None, :], other=0).to(tl.uint32, bitcast=True)[:, None, :]
        w1 = tl.load(w_ptrs + N, mask=n_mask[None, :], other=0).to(tl.uint32, bitcast=True)[:, None, :]
        w2 = tl.load(w_ptrs + 2 * N, mask=n_mask[None, :], other=0).to(tl.uint32, bitcast=True)[:, None, :]
        start = tl.arange(0, 32) * 3
        word = (start // 32)[None, :, None]  # [1, 32, 1]: 0, 1 or 2
        sh = (start % 32).to(tl.uint32)[None, :, None]
        lo = tl.where(word == 0, w0, tl.where(word == 1, w1, w2))  # [BLOCK_T, 32, BLOCK_N]
        hi = tl.where(word == 0, w1, w2)  # only matters where sh > 29
        q = ((lo >> sh) | ((hi << 1) << (31 - sh))) & 7
        return tl.reshape(q, [BLOCK_K, BLOCK_N])
    else:
        VPW: tl.constexpr = 32 // BITS
        BLOCK_KW: tl.constexpr = BLOCK_K // VPW
        kw = tl.arange(0, BLOCK_KW)
        w_ptrs = qw_ptr + (k0 // VPW + kw)[:, None] * N + offs_n[None, :]
        w = tl.load(w_ptrs, mask=n_mask[None, :], other=0).to(tl.uint32, bitcast=True)
        shifts = (tl.arange(0, VPW) * BITS).to(tl.uint32)
        q = (w[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)  # [BLOCK_KW, VPW, BLOCK_N]
        return tl.reshape(q, [BLOCK_K, BLOCK_N])  # row kw*VPW + j = code j of word kw: K order


@triton.jit
def _gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr,
    M, N, K, stride_xm, stride_om,
    BITS: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K,  # runtime: one compiled kernel serves every split > 1
    ATOMIC: tl.constexpr,  # SPLIT_K > 1: add partial sums into the fp32 buffer at out_ptr
    GROUP_M: tl.constexpr, IEEE_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # GROUP_M-tall bands: programs pid, pid+1, ... walk down a band before moving right.
    band = pid // (GROUP_M * grid_n)
    first_m = band * GROUP_M
    band_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % band_m
    pid_n = (pid % (GROUP_M * grid_n)) // band_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]

    n_tiles = K // BLOCK_K  # exact: BLOCK_K | GROUP | K
    tiles_per_split = tl.cdiv(n_tiles, SPLIT_K)
    t_begin = pid_k * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, n_tiles)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(t_begin, t_end):
        k0 = t * BLOCK_K
        a = tl.load(x_ptrs + k0, mask=m_mask[:, None], other=0.0)  # [BLOCK_M, BLOCK_K]
        q = _unpack_tile(qw_ptr, k0, offs_n, n_mask, N, BITS, BLOCK_K, BLOCK_N)
        grp = k0 // GROUP
        s = tl.load(s_ptr + grp * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + grp * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        # s*(q - z) as one fma, q converted to fp32 exactly without an int->float instruction
        b = (_codes_to_f32(q) * s[None, :] - (z * s)[None, :]).to(a.dtype)  # [BLOCK_K, BLOCK_N]
        if IEEE_FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)

    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if not ATOMIC:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=out_mask, sem="relaxed")


def gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    config: Config,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] (unit stride along K) -> out [M, N] in x's dtype, with the tl.dot kernel.

    qweight [ceil(K*bits/32), N] int32, scales/zeros [G, N] contiguous. `out`, when given, is
    [M, N] with unit stride along N; every element of it is written. fp32 inputs use exact
    fp32 products (no TF32), fp16/bf16 inputs use tensor cores with fp32 accumulation.
    """
    m, k = x.shape
    n = qweight.shape[1]
    if config.kernel != "dot":
        raise ValueError(f"gemm() needs a 'dot' config, got {config}")
    check_config(config, m, n, k, bits, group_size)
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    target = out
    if config.split_k > 1:  # partial tiles meet in a zeroed fp32 buffer
        target = out.zero_() if out.dtype == torch.float32 else torch.zeros(m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), config.split_k)
    _gemm_kernel[grid](
        x, qweight, scales, zeros, target,
        m, n, k, x.stride(0), target.stride(0),
        BITS=bits, GROUP=group_size,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        SPLIT_K=config.split_k, ATOMIC=config.split_k > 1, GROUP_M=config.group_m, IEEE_FP32=x.dtype == torch.float32,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if target is not out:
        out.copy_(target)
    return out
