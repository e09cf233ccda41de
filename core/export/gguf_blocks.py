"""GGUF block encodings built from our codes and scales (numpy), and the choice per layer.

llama.cpp's 32-weight block types (ggml-common.h), per block of 32 consecutive inputs of a row:

    Q4_0  {fp16 d; u8 qs[16]}        w = d * (q - 8)    qs[j] = q[j] | q[j+16] << 4
    Q4_1  {fp16 d; fp16 m; u8 qs[16]} w = d * q + m     (same nibble order)
    Q8_0  {fp16 d; i8 qs[32]}        w = d * qs

A layer with group size g (a multiple of 32) maps exactly: every 32-block inside a group
repeats the group's scale. Our w = s (q - z) becomes
- Q4_0 with d = s and q' = q - z + 8 whenever q - z fits [-8, 7]: every 2/3-bit layer and
  every symmetric 4-bit layer (z = 8) with integer zeros — 4.5 bits per weight;
- Q4_1 with d = s, m = -s z otherwise for 2/3/4 bits (fractional z included; the codes
  0..15 fit a nibble unchanged) — 5 bits per weight;
- Q8_0 with d = s, qs = q - z when q - z fits int8 (5..8 bits) — 8.5 bits per weight.
The only loss is storing d and m in fp16, which `encode_layer` measures. Which type a layer
gets is gguf_policy.choose_block_type; the K-quant encoders are in kquants.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from ..quant.tensor import QuantizedWeight
from .gguf_policy import BLOCK, choose_block_type
from .kquants import encode_q2_k, encode_q3_k


def _per_block(values: torch.Tensor, group_size: int) -> np.ndarray:
    """[R, G] per-group values -> [R, C/32, 1] fp16 per 32-block (each group's value repeated)."""
    rep = values.float().repeat_interleave(group_size // BLOCK, dim=1)
    return rep.numpy().astype(np.float16)[..., None]


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype("<f2").view(np.uint8)                   # [R, nb, 1] -> [R, nb, 2]


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """codes [R, nb, 32] uint8 (0..15) -> [R, nb, 16]: low nibble q[j], high nibble q[j+16]."""
    return (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)


def encode_q4_0(codes: torch.Tensor, scales: torch.Tensor, group_size: int) -> np.ndarray:
    rows, cols = codes.shape
    q = codes.numpy().astype(np.uint8).reshape(rows, cols // BLOCK, BLOCK)
    blocks = np.concatenate([_f16_bytes(_per_block(scales, group_size)), _nibbles(q)], axis=-1)
    return blocks.reshape(rows, -1)                         # [R, C/32 * 18]


def encode_q4_1(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> np.ndarray:
    rows, cols = codes.shape
    q = codes.numpy().astype(np.uint8).reshape(rows, cols // BLOCK, BLOCK)
    d = _per_block(scales, group_size)
    m = _per_block(-(scales.double() * zeros.double()).float(), group_size)
    blocks = np.concatenate([_f16_bytes(d), _f16_bytes(m), _nibbles(q)], axis=-1)
    return blocks.reshape(rows, -1)                         # [R, C/32 * 20]


def encode_q8_0(values: torch.Tensor, scales: torch.Tensor, group_size: int) -> np.ndarray:
    """values = q - z as integers in [-128, 127] [R, C]."""
    rows, cols = values.shape
    qs = values.numpy().astype(np.int8).reshape(rows, cols // BLOCK, BLOCK).view(np.uint8)
    blocks = np.concatenate([_f16_bytes(_per_block(scales, group_size)), qs], axis=-1)
    return blocks.reshape(rows, -1)                         # [R, C/32 * 34]


@dataclass
class Encoded:
    data: np.ndarray          # uint8 bytes [R, bytes per row], or float16 [R, C] for F16
    qtype: str                # GGMLQuantizationType name: Q4_0, Q4_1, Q8_0, Q2_K, Q3_K, F16
    exact: str                # "exact" | "fp16-rounded" | "re-encoded"
    note: str = ""

    def bits_per_weight(self) -> float:
        return 8.0 * self.data.nbytes / (self.data.shape[0] * self.logical_cols())

    def logical_cols(self) -> int:
        import gguf

        if self.qtype == "F16":
            return self.data.shape[1]
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.qtype]]
        return self.data.shape[1] // size * block


def encode_layer(qw: QuantizedWeight, lowbit: str = "lossless") -> Encoded:
    """The best GGUF type for one quantized layer (rows already in GGUF order)."""
    g, bits = qw.group_size, qw.bits
    z = qw.zeros.float()
    integer_z = bool(torch.all((z - z.round()).abs() <= 1e-4))
    shifted = cache(lambda: _shifted_codes(qw))        # q - z + 8 [R, C] for Q4_0, or None
    centred = cache(lambda: _centred_codes(qw))        # q - z [R, C] for Q8_0, or None
    choice = choose_block_type(bits, qw.shape[1], g, lowbit, integer_z,
                               lambda: shifted() is not None, lambda: centred() is not None)
    if choice.qtype == "Q4_0":
        data = encode_q4_0(shifted(), qw.scales, g)
    elif choice.qtype == "Q4_1":
        data = encode_q4_1(qw.codes, qw.scales, qw.zeros, g)
    elif choice.qtype == "Q8_0":
        data = encode_q8_0(centred(), qw.scales, g)
    elif choice.qtype in ("Q2_K", "Q3_K"):
        data, _ = (encode_q2_k if choice.qtype == "Q2_K" else encode_q3_k)(qw)
    else:
        data = qw.dequantize().numpy().astype(np.float16)
    return Encoded(data, choice.qtype, choice.exact, choice.note)


def _shifted_codes(qw: QuantizedWeight) -> torch.Tensor | None:
    """q - z + 8 [R, C] as uint8 when every value lies in [0, 15], else None."""
    z = qw.zeros.round().to(torch.int64).repeat_interleave(qw.group_size, dim=1)
    shifted = qw.codes.to(torch.int64) - z + 8
    if int(shifted.min()) < 0 or int(shifted.max()) > 15:
        return None
    return shifted.to(torch.uint8)


def _centred_codes(qw: QuantizedWeight) -> torch.Tensor | None:
    """q - z [R, C] as int64 when every value fits int8, else None."""
    values = qw.codes.to(torch.int64) - qw.zeros.float().round().to(torch.int64).repeat_interleave(qw.group_size, dim=1)
    if int(values.min()) < -128 or int(values.max()) > 127:
        return None
    return values


def decode(enc: Encoded) -> np.ndarray:
    """The float32 weights a GGUF reader gets back (gguf-py's own dequantizer)."""
    import gguf

    if enc.qtype == "F16":
        return enc.data.astype(np.float32)
    return gguf.quants.dequantize(enc.data, gguf.GGMLQuantizationType[enc.qtype]).astype(np.float32)
