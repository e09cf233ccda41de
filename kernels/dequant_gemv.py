"""Fused unpack + dequantize + GEMV for decoding (M = 1..16 rows), Triton.

y[M, N] = x[M, K] @ W.T with W[n, k] = s[k//g, n] * (q[n, k] - z[k//g, n]), read from
qweight [ceil(K*bits/32), N] int32 (codes packed along K, see packing.py), scales/zeros [G, N].

Shape of the work: program (pid_n, pid_k, pid_m) owns BLOCK_N outputs x BLOCK_M rows and
1/SPLIT_K of the K tiles. Per K tile (BLOCK_K codes, inside one quantization group because
BLOCK_K divides g) it loads the tile's packed words once, [BLOCK_K*bits/32, BLOCK_N] int32
(rows of BLOCK_N consecutive words: coalesced), and peels codes out of the registers with
shifts and masks. Batch-1 decoding is memory-bound and close to ALU-bound at 2-4 bits on a
modern GPU, so the inner loop costs 4 ops per weight (shift, and, int->float, fma): the
group's scale and zero are applied once per tile through
    sum_k s*(q_k - z)*x_k = s * (sum_k q_k*x_k - z * sum_k x_k)
which is exact algebra (also for non-integer zeros) evaluated in fp32.
With SPLIT_K > 1 the partial sums are atomically added into a zeroed fp32 buffer.

This module imports triton at import time: import it only when a kernel is launched.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .autotune import Config, check_config


@triton.jit
def _gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr,
    M, N, K, stride_xm, stride_om,
    BITS: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1] row starts

    n_tiles = K // BLOCK_K  # exact: BLOCK_K | GROUP | K
    tiles_per_split = tl.cdiv(n_tiles, SPLIT_K)
    t_begin = pid_k * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, n_tiles)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(t_begin, t_end):
        k0 = t * BLOCK_K
        if BITS == 3:
            # 32 codes = 3 words; a tile is BLOCK_T such 32-code blocks. Codes 10 and 21 of a
            # block straddle words: (lo word >> sh) | (hi word << (32 - sh)), written as
            # (hi << 1) << (31 - sh) so that no shift amount reaches 32.
            BLOCK_T: tl.constexpr = BLOCK_K // 32
            tt = tl.arange(0, BLOCK_T)
            w_ptrs = qw_ptr + ((k0 // 32 + tt) * 3)[:, None] * N + offs_n[None, :]
            w0 = tl.load(w_ptrs, mask=n_mask[None, :], other=0).to(tl.uint32, bitcast=True)
            w1 = tl.load(w_ptrs + N, mask=n_mask[None, :], other=0).to(tl.uint32, bitcast=True)
            w2 = tl.load(w_ptrs + 2 * N, mask=n_mask[None, :], other=0).to(tl.uint32, bitcast=True)
            qx = tl.zeros([BLOCK_M, BLOCK_T, BLOCK_N], dtype=tl.float32)
            xs = tl.zeros([BLOCK_M, BLOCK_T], dtype=tl.float32)
            for j in tl.static_range(32):
                R: tl.constexpr = (j * 3) // 32
                SH: tl.constexpr = (j * 3) % 32
                if R == 0:
                    q = w0 >> SH
                    if SH > 29:
                        q = q | ((w1 << 1) << (31 - SH))
                elif R == 1:
                    q = w1 >> SH
                    if SH > 29:
                        q = q | ((w2 << 1) << (31 - SH))
                else:
                    q = w2 >> SH
                qf = (q & 7).to(tl.float32)  # [BLOCK_T, BLOCK_N]
                xj = tl.load(x_rows + (k0 + tt * 32 + j)[None, :], mask=m_mask[:, None], other=0.0).to(tl.float32)
                qx += xj[:, :, None] * qf[None, :, :]
                xs += xj
        else:
            # 32 // BITS codes per word, code j of a word in bits [j*BITS, (j+1)*BITS).
            VPW: tl.constexpr = 32 // BITS
            BLOCK_KW: tl.constexpr = BLOCK_K // VPW
            kw = tl.arange(0, BLOCK_KW)
            w_ptrs = qw_ptr + (k0 // VPW + kw)[:, None] * N + offs_n[None, :]
            w = tl.load(w_ptrs, mask=n_mask[None, :], other=0).to(tl.uint32, bitcast=True)
            qx = tl.zeros([BLOCK_M, BLOCK_KW, BLOCK_N], dtype=tl.float32)
            xs = tl.zeros([BLOCK_M, BLOCK_KW], dtype=tl.float32)
            for j in tl.static_range(VPW):
                qf = ((w >> (j * BITS)) & ((1 << BITS) - 1)).to(tl.float32)  # [BLOCK_KW, BLOCK_N]
                xj = tl.load(x_rows + (k0 + kw * VPW + j)[None, :], mask=m_mask[:, None], other=0.0).to(tl.float32)
                qx += xj[:, :, None] * qf[None, :, :]
                xs += xj
        grp = k0 // GROUP
        s = tl.load(s_ptr + grp * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + grp * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        acc += s[None, :] * (tl.sum(qx, axis=1) - tl.sum(xs, axis=1)[:, None] * z[None, :])

    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=out_mask, sem="relaxed")


def gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    config: Config,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] (unit stride along K) -> out [M, N] in x's dtype, with the GEMV kernel.

    qweight [ceil(K*bits/32), N] int32, scales/zeros [G, N] contiguous. `out`, when given, is
    [M, N] with unit stride along N; every element of it is written.
    """
    m, k = x.shape
    n = qweight.shape[1]
    if config.kernel != "gemv":
        raise ValueError(f"gemv() needs a 'gemv' config, got {config}")
    check_config(config, m, n, k, bits, group_size)
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    target = out
    if config.split_k > 1:  # partial sums meet in a zeroed fp32 buffer
        target = out.zero_() if out.dtype == torch.float32 else torch.zeros(m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, config.block_n), config.split_k, triton.cdiv(m, config.block_m))
    _gemv_kernel[grid](
        x, qweight, scales, zeros, target,
        m, n, k, x.stride(0), target.stride(0),
        BITS=bits, GROUP=group_size,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        SPLIT_K=config.split_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if target is not out:
        out.copy_(target)
    return out
