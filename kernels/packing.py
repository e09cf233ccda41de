"""Bit-packing of integer codes into int32 words (pure torch: CPU and GPU alike).

One scheme everywhere, the one GPTQ and compressed-tensors use: along the packed dimension
the codes form a dense little-endian bit stream, code `i` occupying stream bits
`[i*bits, (i+1)*bits)`, and stream bit `b` living in bit `b % 32` of word `b // 32`.

- 2, 4, 8 bits: 16, 8, 4 codes per word, code `j` of a word in bits `[j*bits, (j+1)*bits)`.
- 3 bits: 32 codes fill exactly 3 words; codes 10 and 21 straddle two words
  (code 10: bits 30-31 of word 0 and bit 0 of word 1; code 21: bit 31 of word 1 and
  bits 0-1 of word 2).
- any other width in 1..8 (5, 6, 7: the search uses them) follows the same stream rule.

A packed dimension of `n` codes takes `ceil(n * bits / 32)` words; codes past `n` in the
last word are zero (compressed-tensors' `pack_to_int32` truncates the same way). Unpacking
therefore needs `n` back whenever `n * bits` is not a multiple of 32.

Orientation helpers for the exporters (N = out_features, K = in_features, G = K // group):
- `pack_qweight(codes[N, K])  -> qweight[ceil(K*bits/32), N]`  packed along K (GPTQ `qweight`,
  also the layout the Triton kernels read);
- `pack_qzeros(zeros[G, N])   -> qzeros[G, ceil(N*bits/32)]`   packed along N (GPTQ `qzeros`);
- compressed-tensors' `weight_packed[N, ceil(K*bits/32)]` is `pack_along_dim(codes, bits, dim=1)`.
These helpers pack exactly the integers they are given: GPTQ-v1 checkpoints store `z - 1` in
qzeros and compressed-tensors stores signed codes offset by `2**(bits-1)`; that bookkeeping
belongs to the exporter.
"""

from __future__ import annotations

import torch

__all__ = [
    "packed_size",
    "pack_along_dim",
    "unpack_along_dim",
    "pack_qweight",
    "unpack_qweight",
    "pack_qzeros",
    "unpack_qzeros",
]

_WORD = 32
_U32 = 0xFFFFFFFF


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")


def packed_size(n: int, bits: int) -> int:
    """Words needed for `n` codes of `bits` bits: ceil(n * bits / 32)."""
    _check_bits(bits)
    return -(-n * bits // _WORD)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding uint32 bit patterns -> int32 with the same bits (two's complement)."""
    words = words & _U32
    return (words - ((words >> 31) << 32)).to(torch.int32)


def pack_along_dim(codes: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """Pack integer `codes` (values in [0, 2**bits - 1]) along `dim` into int32 words.

    codes: any integer tensor; its size n along `dim` becomes ceil(n * bits / 32).
    Returns a contiguous int32 tensor on codes' device.
    """
    _check_bits(bits)
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits: [{int(codes.min())}, {int(codes.max())}]")
    dim = dim % codes.dim()
    moved = codes.movedim(dim, -1)
    lead, n = moved.shape[:-1], moved.shape[-1]
    rows = moved.reshape(-1, n)
    # Work in blocks of 32 codes = `bits` whole words, so every word boundary is static.
    n_blocks = -(-n // _WORD)
    pad = n_blocks * _WORD - n
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    blocks = rows.reshape(rows.shape[0], n_blocks, _WORD)
    words = torch.zeros(rows.shape[0], n_blocks, bits, dtype=torch.int64, device=codes.device)
    for j in range(_WORD):
        start = j * bits
        w, sh = divmod(start, _WORD)
        v = blocks[:, :, j].to(torch.int64)  # one strided slice at a time keeps memory low
        words[:, :, w] |= (v << sh) & _U32
        if sh + bits > _WORD:  # the code straddles into the next word
            words[:, :, w + 1] |= v >> (_WORD - sh)
    out = _to_int32(words).reshape(rows.shape[0], n_blocks * bits)[:, : packed_size(n, bits)]
    return out.reshape(*lead, -1).movedim(-1, dim).contiguous()


def unpack_along_dim(
    packed: torch.Tensor,
    bits: int,
    dim: int = -1,
    size: int | None = None,
    dtype: torch.dtype = torch.uint8,
) -> torch.Tensor:
    """Inverse of `pack_along_dim`: int32 words along `dim` -> `size` codes along `dim`.

    size defaults to floor(words * 32 / bits), i.e. every whole code the words hold.
    """
    _check_bits(bits)
    if packed.dtype != torch.int32:
        raise TypeError(f"packed must be int32, got {packed.dtype}")
    dim = dim % packed.dim()
    moved = packed.movedim(dim, -1)
    lead, n_words = moved.shape[:-1], moved.shape[-1]
    capacity = n_words * _WORD // bits
    size = capacity if size is None else size
    if not 0 <= size <= capacity:
        raise ValueError(f"{n_words} words of {bits}-bit codes hold at most {capacity} codes, asked {size}")
    rows = moved.reshape(-1, n_words).to(torch.int64) & _U32  # uint32 bit patterns
    n_blocks = -(-n_words // bits)
    pad = n_blocks * bits - n_words
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    words = rows.reshape(rows.shape[0], n_blocks, bits)
    codes = torch.empty(rows.shape[0], n_blocks, _WORD, dtype=dtype, device=packed.device)
    mask = (1 << bits) - 1
    for j in range(_WORD):
        w, sh = divmod(j * bits, _WORD)
        v = words[:, :, w] >> sh
        if sh + bits > _WORD:
            v = v | (words[:, :, w + 1] << (_WORD - sh))
        codes[:, :, j] = (v & mask).to(dtype)
    out = codes.reshape(rows.shape[0], n_blocks * _WORD)[:, :size]
    return out.reshape(*lead, size).movedim(-1, dim).contiguous()


def pack_qweight(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [N, K] (out x in, as a weight) -> qweight [ceil(K*bits/32), N] int32, packed along K.

    This is GPTQ's `qweight` and the layout the Triton kernels read: a kernel walking K reads
    whole rows of N consecutive words, which coalesce.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be [out_features, in_features], got shape {tuple(codes.shape)}")
    return pack_along_dim(codes.t(), bits, dim=0)


def unpack_qweight(qweight: torch.Tensor, bits: int, in_features: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """qweight [ceil(K*bits/32), N] int32 -> codes [N, K] (K = in_features)."""
    return unpack_along_dim(qweight, bits, dim=0, size=in_features, dtype=dtype).t().contiguous()


def pack_qzeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer zero points [G, N] -> qzeros [G, ceil(N*bits/32)] int32, packed along N (GPTQ)."""
    if zeros.dim() != 2:
        raise ValueError(f"zeros must be [n_groups, out_features], got shape {tuple(zeros.shape)}")
    return pack_along_dim(zeros, bits, dim=1)


def unpack_qzeros(qzeros: torch.Tensor, bits: int, out_features: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """qzeros [G, ceil(N*bits/32)] int32 -> integer zero points [G, N] (N = out_features)."""
    return unpack_along_dim(qzeros, bits, dim=1, size=out_features, dtype=dtype)
