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
These helpers pack exactly the unsigned integers they are given. Format bookkeeping belongs
to the exporter: GPTQ-v1 checkpoints store `z - 1` in qzeros; compressed-tensors reasons in
signed codes `q - 2**(bits-1)`, and its `pack_to_int32` adds `2**(bits-1)` back before packing,
so its packed bits are these unsigned codes.
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


# Codes per vectorized step: bounds the int64 temporaries (~32 bytes a code) to ~128 MiB.
_CHUNK_CODES = 1 << 22


def _as_3d(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    """View t as [A, n, B] with the packed dimension in the middle (no copy when contiguous)."""
    dim = dim % t.dim()
    a = b = 1
    for d in t.shape[:dim]:
        a *= d
    for d in t.shape[dim + 1:]:
        b *= d
    return t.reshape(a, t.shape[dim], b), dim


def _steps(a: int, b: int, codes_per_ab: int) -> list[tuple[slice, slice]]:
    """Slices over (A, B) so each step handles at most ~_CHUNK_CODES codes."""
    per_b = max(1, _CHUNK_CODES // max(1, codes_per_ab))
    b_step = min(b, per_b) if b else 1
    a_step = max(1, per_b // max(1, b))
    return [(slice(i, i + a_step), slice(j, j + b_step)) for i in range(0, max(a, 1), a_step)
            for j in range(0, max(b, 1), b_step)]


def _stream_layout(bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For the 32 codes of a block: the word each starts in, and its bit offset there."""
    start = torch.arange(_WORD, device=device) * bits
    return start // _WORD, start % _WORD


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
    v3, dim = _as_3d(codes, dim)
    a, n, b = v3.shape
    # Blocks of 32 codes fill exactly `bits` words: every word boundary is the same per block.
    n_blocks = -(-n // _WORD)
    out = torch.empty(a, n_blocks * bits, b, dtype=torch.int32, device=codes.device)
    word, shift = _stream_layout(bits, codes.device)
    shift = shift[:, None]
    for sa, sb in _steps(a, b, n_blocks * _WORD):
        v = v3[sa, :, sb].to(torch.int64)
        if n_blocks * _WORD > n:
            v = torch.nn.functional.pad(v, (0, 0, 0, n_blocks * _WORD - n))
        v = v.reshape(v.shape[0], n_blocks, _WORD, v.shape[-1])  # [A', blocks, 32, B']
        if _WORD % bits == 0:  # no straddles: word w holds codes w*per..(w+1)*per-1
            per = _WORD // bits
            v = v.reshape(v.shape[0], n_blocks * bits, per, v.shape[-1])
            words = (v << shift[:per]).sum(dim=2)  # disjoint bit fields: sum == or
        else:
            # A code's low part goes to its word, its high part to the next (zero unless the
            # code straddles); word `bits` of a block is overflow space, dropped.
            words = torch.zeros(v.shape[0], n_blocks, bits + 1, v.shape[-1], dtype=torch.int64, device=v.device)
            words.index_add_(2, word, (v << shift) & _U32)
            words.index_add_(2, word + 1, v >> (_WORD - shift))
            words = words[:, :, :bits].reshape(v.shape[0], n_blocks * bits, v.shape[-1])
        out[sa, :, sb] = _to_int32(words)
    shape = list(codes.shape)
    shape[dim] = packed_size(n, bits)
    return out[:, : shape[dim]].reshape(shape)


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
    w3, dim = _as_3d(packed, dim)
    a, n_words, b = w3.shape
    capacity = n_words * _WORD // bits
    size = capacity if size is None else size
    if not 0 <= size <= capacity:
        raise ValueError(f"{n_words} words of {bits}-bit codes hold at most {capacity} codes, asked {size}")
    n_blocks = -(-n_words // bits)
    out = torch.empty(a, n_blocks * _WORD, b, dtype=dtype, device=packed.device)
    word, shift = _stream_layout(bits, packed.device)
    shift = shift[:, None]
    mask = (1 << bits) - 1
    for sa, sb in _steps(a, b, n_blocks * _WORD):
        w = w3[sa, :, sb]
        if n_blocks * bits > n_words:  # zero words complete the last block
            w = torch.nn.functional.pad(w, (0, 0, 0, n_blocks * bits - n_words))
        if _WORD % bits == 0:  # no straddles: shift and mask in int32 (the mask undoes sign fill)
            per = _WORD // bits
            codes = (w[:, :, None, :] >> shift[:per].to(torch.int32)) & mask  # [A', words, per, B']
        else:
            w = w.reshape(w.shape[0], n_blocks, bits, w.shape[-1]).to(torch.int64) & _U32
            w = torch.nn.functional.pad(w, (0, 0, 0, 1))  # the "next word" of a block's last code
            lo = w.index_select(2, word)
            hi = w.index_select(2, word + 1)
            codes = (((hi << _WORD) | lo) >> shift) & mask  # [A', blocks, 32, B']
        out[sa, :, sb] = codes.reshape(w.shape[0], n_blocks * _WORD, w.shape[-1]).to(dtype)
    shape = list(packed.shape)
    shape[dim] = size
    return out[:, :size].reshape(shape)


def pack_qweight(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [N, K] (out x in, as a weight) -> qweight [ceil(K*bits/32), N] int32, packed along K.

    This is GPTQ's `qweight` and the layout the Triton kernels read: a kernel walking K reads
    whole rows of N consecutive words, which coalesce.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be [out_features, in_features], got shape {tuple(codes.shape)}")
    return pack_along_dim(codes.t().contiguous(), bits, dim=0)


def unpack_qweight(
    qweight: torch.Tensor, bits: int, in_features: int, dtype: torch.dtype = torch.uint8
) -> torch.Tensor:
    """qweight [ceil(K*bits/32), N] int32 -> codes [N, K] (K = in_features)."""
    return unpack_along_dim(qweight.contiguous(), bits, dim=0, size=in_features, dtype=dtype).t().contiguous()


def pack_qzeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer zero points [G, N] -> qzeros [G, ceil(N*bits/32)] int32, packed along N (GPTQ)."""
    if zeros.dim() != 2:
        raise ValueError(f"zeros must be [n_groups, out_features], got shape {tuple(zeros.shape)}")
    return pack_along_dim(zeros, bits, dim=1)


def unpack_qzeros(qzeros: torch.Tensor, bits: int, out_features: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """qzeros [G, ceil(N*bits/32)] int32 -> integer zero points [G, N] (N = out_features)."""
    return unpack_along_dim(qzeros, bits, dim=1, size=out_features, dtype=dtype)
