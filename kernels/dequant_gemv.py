"""Fused unpack + dequantize + GEMV for decoding (M = 1..16 rows), Triton.

y[M, N] = x[M, K] @ W.T with W[n, k] = s[k//g, n] * (q[n, k] - z[k//g, n]), read from
qweight [ceil(K*bits/32), N] int32 (codes packed along K, see packing.py), scales/zeros [G, N].

Shape of the work: program (pid_n, pid_k, pid_m) owns BLOCK_N outputs x BLOCK_M rows and
1/SPLIT_K of the K tiles. Per K tile (BLOCK_K codes, inside one quantization group because
BLOCK_K divides g) it loads the tile's packed words once, [BLOCK_K*bits/32, BLOCK_N] int32
(rows of BLOCK_N consecutive words: coalesced), and peels codes out of the registers with
masks. Batch-1 decoding is memory-bound and close to ALU-bound at 2-4 bits on a modern GPU,
so the inner loop costs about 3 ops per weight (and|or, sub, fma: no int->float conversion
and mostly no shift, see `_code_at`), and the group's scale and zero are applied once per
tile through
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
def _codes_to_f32(q):
    """uint32 codes q < 2**23 -> exact fp32 q: or-in the exponent of 2**23, subtract 2**23.

    Two full-rate ops; an int->float conversion runs at 1/8 of the fp32 rate on recent
    NVIDIA GPUs and would bound the whole kernel."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _code_at(w, O: tl.constexpr, BITS: tl.constexpr):
    """The BITS-bit code at bit O of uint32 words w, as exact fp32 times 2**P, P = O % (24 - BITS).

    Left in place (masked, not shifted down) while q * 2**P < 2**23, so most codes cost one
    and-or plus one subtract; a shift is shared by the codes of each 24 - BITS bit span.
    The caller multiplies the activation by 2**-P instead (exact: a power of two)."""
    P: tl.constexpr = O % (24 - BITS)
    return _codes_to_f32((w >> (O - P)) & (((1 << BITS) - 1) << P))


@triton.jit
def _gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr,
    M, N, K, stride_xm, stride_om,
    BITS: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K,  # runtime: one compiled kernel serves every split > 1
    ATOMIC: tl.constexpr,  # SPLIT_K > 1: add partial sums into the fp32 buffer at out_ptr
):
    # Every tile below is 3-D, [rows m, K (words or 32-code blocks), outputs n], from the
    # start: products broadcast without layout conversions, and the K axis is reduced once
    # per tile. The packed words get the layout their coalesced load wants.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n3 = offs_n[None, None, :]  # [1, 1, BLOCK_N]
    n3_mask = n3 < N
    m3_mask = offs_m[:, None, None] < M  # [BLOCK_M, 1, 1]
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None, None] * stride_xm

    n_tiles = K // BLOCK_K  # exact: BLOCK_K | GROUP | K
    tiles_per_split = tl.cdiv(n_tiles, SPLIT_K)
    t_begin = pid_k * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, n_tiles)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(t_begin, t_end):
        k0 = t * BLOCK_K
        if BITS == 3:
            # 32 codes = 3 words; the tile is BLOCK_T such blocks. Codes 10 and 21 of a block
            # straddle words: low bits from the top of one word, high bits from the bottom of
            # the next.
            BLOCK_T: tl.constexpr = BLOCK_K // 32
            t3 = tl.arange(0, BLOCK_T)[None, :, None]  # [1, BLOCK_T, 1]
            w_ptrs = qw_ptr + (k0 // 32 * 3 + t3 * 3) * N + n3
            w0 = tl.load(w_ptrs, mask=n3_mask, other=0).to(tl.uint32, bitcast=True)
            w1 = tl.load(w_ptrs + N, mask=n3_mask, other=0).to(tl.uint32, bitcast=True)
            w2 = tl.load(w_ptrs + 2 * N, mask=n3_mask, other=0).to(tl.uint32, bitcast=True)
            qx = tl.zeros([BLOCK_M, BLOCK_T, BLOCK_N], dtype=tl.float32)
            xs = tl.zeros([BLOCK_M, BLOCK_T, 1], dtype=tl.float32)
            for j in tl.static_range(32):
                # word (3j) // 32 and bit (3j) % 32 are compile-time constants here
                xj = tl.load(x_rows + (k0 + t3 * 32 + j), mask=m3_mask, other=0.0).to(tl.float32)
                xs += xj
                if (j * 3) % 32 > 29:  # codes 10 and 21 straddle two words
                    if j == 10:
                        q = (w0 >> 30) | ((w1 << 1) << 1)
                    else:
                        q = (w1 >> 31) | (w2 << 1)
                    qx += xj * _codes_to_f32(q & 7)
                else:
                    if (j * 3) // 32 == 0:
                        qf = _code_at(w0, (j * 3) % 32, 3)
                    elif (j * 3) // 32 == 1:
                        qf = _code_at(w1, (j * 3) % 32, 3)
                    else:
                        qf = _code_at(w2, (j * 3) % 32, 3)
                    qx += (xj * (1.0 / (1 << ((j * 3) % 32 % 21)))) * qf  # [BLOCK_M, BLOCK_T, BLOCK_N]
        else:
            # 32 // BITS codes per word, code j of a word in bits [j*BITS, (j+1)*BITS).
            VPW: tl.constexpr = 32 // BITS
            BLOCK_KW: tl.constexpr = BLOCK_K // VPW
            kw3 = tl.arange(0, BLOCK_KW)[None, :, None]  # [1, BLOCK_KW, 1]
            w_ptrs = qw_ptr + (k0 // VPW + kw3) * N + n3
            w = tl.load(w_ptrs, mask=n3_mask, other=0).to(tl.uint32, bitcast=True)  # [1, BLOCK_KW, BLOCK_N]
            qx = tl.zeros([BLOCK_M, BLOCK_KW, BLOCK_N], dtype=tl.float32)
            xs = tl.zeros([BLOCK_M, BLOCK_KW, 1], dtype=tl.float32)
            for j in tl.static_range(VPW):
                xj = tl.load(x_rows + (k0 + kw3 * VPW + j), mask=m3_mask, other=0.0).to(tl.float32)
                xs += xj
                qf = _code_at(w, j * BITS, BITS)  # code j times 2**P, P = j*BITS % (24 - BITS)
                qx += (xj * (1.0 / (1 << (j * BITS % (24 - BITS))))) * qf
        grp = k0 // GROUP
        s = tl.load(s_ptr + grp * N + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + grp * N + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc += s[None, :] * (tl.sum(qx, axis=1) - tl.sum(xs, axis=1) * z[None, :])

    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if not ATOMIC:
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
        SPLIT_K=config.split_k, ATOMIC=config.split_k > 1,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if target is not out:
        out.copy_(target)
    return out
