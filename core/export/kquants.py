"""Re-encoding 2/3-bit layers to llama.cpp's K-quants (Q2_K, Q3_K): smaller than the lossless
4-bit blocks, at a measured cost. gguf-py reads these types but cannot write them, so the
encoders are here; the tests check them against gguf-py's dequantizer.

Both work on super-blocks of 256 weights of a row (so d_in must be a multiple of 256), made of
16 sub-blocks of 16 weights (ggml-common.h):

    Q2_K  {u8 scales[16]; u8 qs[64]; fp16 d; fp16 dmin}        84 bytes, 2.625 bits/weight
          w = d * sc_j * q - dmin * m_j,  q in 0..3, sc_j and m_j 4-bit (scales[j] = sc | m << 4)
    Q3_K  {u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d}     110 bytes, 3.4375 bits/weight
          w = d * (s_j - 32) * (q - 4), q in 0..7 (low 2 bits in qs, high bit in hmask),
          s_j 6-bit (low nibbles in scales[0:8], high 2 bits in scales[8:12])

Low bits of element e = 128 h + 32 t + l live in qs[32 h + l] at bits 2t; Q3_K's high bit of
element e = 32 i + l is bit i of hmask[l].

Q2_K takes our grid directly: sub-block j lies inside one group (g is a multiple of 32), so
sc_j ~ s / d and m_j ~ s z / dmin; only the 4-bit rounding of the scales and mins costs, and
the codes are re-rounded against the rounded scales. Q3_K is symmetric around code 4: a
symmetric 3-bit grid (z = 4) maps the same way; an asymmetric one is re-quantized from its
weights per sub-block (scale from the largest magnitude, as llama.cpp does).
Which layers get a K-quant (and which stay lossless) is gguf_policy.choose_block_type.
"""

from __future__ import annotations

import numpy as np
import torch

from ..quant.tensor import QuantizedWeight
from .gguf_policy import QK, SUB


def _sub_block_values(values: torch.Tensor, group_size: int, cols: int) -> np.ndarray:
    """Per-group values [R, G] -> one per 16-weight sub-block [R, cols/16] (float64)."""
    return values.double().repeat_interleave(group_size // SUB, dim=1)[:, : cols // SUB].numpy()


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def _pack_low2(q: np.ndarray) -> np.ndarray:
    """q [N, 256] (2 low bits used) -> qs [N, 64]: element 128h + 32t + l at bits 2t of qs[32h + l]."""
    q = (q & 3).astype(np.uint8).reshape(-1, 2, 4, 32)
    packed = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return packed.reshape(-1, 64)


def encode_q2_k(qw: QuantizedWeight) -> tuple[np.ndarray, np.ndarray]:
    """(bytes [R, C/256 * 84], decoded weights [R, C])."""
    rows, cols = qw.shape
    w = qw.dequantize().double().numpy()
    a = _sub_block_values(qw.scales, qw.group_size, cols).reshape(-1, SUB)                 # [N, 16] scale
    b = _sub_block_values(qw.scales * qw.zeros, qw.group_size, cols).reshape(-1, SUB)     # [N, 16] min (>= 0)
    b = np.maximum(b, 0.0)
    d = _f16(a.max(axis=1, keepdims=True) / 15)
    dmin = _f16(b.max(axis=1, keepdims=True) / 15)
    sc = np.where(d > 0, np.clip(np.rint(a / np.where(d > 0, d, 1)), 0, 15), 0)
    m = np.where(dmin > 0, np.clip(np.rint(b / np.where(dmin > 0, dmin, 1)), 0, 15), 0)
    step, low = (d * sc)[..., None], (dmin * m)[..., None]                                  # [N, 16, 1]
    x = w.reshape(-1, SUB, SUB)
    q = np.where(step > 0, np.clip(np.rint((x + low) / np.where(step > 0, step, 1)), 0, 3), 0)
    decoded = (step * q - low).reshape(rows, cols)
    blocks = np.concatenate([
        (sc.astype(np.uint8) | (m.astype(np.uint8) << 4)),                                 # [N, 16]
        _pack_low2(q.reshape(-1, QK).astype(np.uint8)),                                    # [N, 64]
        d.astype("<f2").view(np.uint8), dmin.astype("<f2").view(np.uint8)], axis=1)        # [N, 2] x 2
    return blocks.reshape(rows, -1), decoded


def _q3_sub_scales(qw: QuantizedWeight, x: np.ndarray) -> np.ndarray:
    """Target scale per sub-block [N, 16]: the grid's own when symmetric, else from max |w|."""
    if bool(torch.all(qw.zeros == 4)):
        return _sub_block_values(qw.scales, qw.group_size, qw.shape[1]).reshape(-1, SUB)
    idx = np.abs(x).argmax(axis=2)[..., None]
    peak = np.take_along_axis(x, idx, axis=2)[..., 0]           # signed value of largest magnitude
    return -peak / 4                                            # peak maps to code 0 (level -4)


def encode_q3_k(qw: QuantizedWeight) -> tuple[np.ndarray, np.ndarray]:
    """(bytes [R, C/256 * 110], decoded weights [R, C])."""
    rows, cols = qw.shape
    x = qw.dequantize().double().numpy().reshape(-1, SUB, SUB)                              # [N, 16, 16]
    t = _q3_sub_scales(qw, x)
    amax = np.abs(t).max(axis=1, keepdims=True)
    d = _f16(amax / 32)
    sc = np.where(d > 0, np.clip(np.rint(t / np.where(d > 0, d, 1)), -32, 31), 0)          # signed 6-bit
    step = (d * sc)[..., None]
    q = np.where(step != 0, np.clip(np.rint(x / np.where(step != 0, step, 1)) + 4, 0, 7), 4)
    decoded = (step * (q - 4)).reshape(rows, cols)
    q = q.reshape(-1, QK).astype(np.uint8)
    high = (q >> 2).reshape(-1, 8, 32)                                                     # element 32i + l
    hmask = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for i in range(8):
        hmask |= (high[:, i] << i).astype(np.uint8)
    s = (sc + 32).astype(np.uint8)                                                         # [N, 16] in 0..63
    low4 = s & 0x0F
    scales = np.concatenate([low4[:, :8] | (low4[:, 8:] << 4),
                             ((s[:, 0:4] >> 4) | ((s[:, 4:8] >> 4) << 2) | ((s[:, 8:12] >> 4) << 4)
                              | ((s[:, 12:16] >> 4) << 6)).astype(np.uint8)], axis=1)      # [N, 12]
    blocks = np.concatenate([hmask, _pack_low2(q), scales, d.astype("<f2").view(np.uint8)], axis=1)
    return blocks.reshape(rows, -1), decoded

