"""Packing: round trips (hypothesis), the exact bit layout, GPTQ compatibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsmith.kernels.packing import (pack_along_dim, pack_qweight, pack_qzeros, packed_size, unpack_along_dim,
                                      unpack_qweight, unpack_qzeros)

KERNEL_BITS = (2, 3, 4, 8)


def _u32(t: torch.Tensor) -> list[int]:
    return [v & 0xFFFFFFFF for v in t.flatten().tolist()]


@st.composite
def codes_and_dim(draw, bits_choices=KERNEL_BITS):
    bits = draw(st.sampled_from(bits_choices))
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 70), min_size=ndim, max_size=ndim))
    dim = draw(st.integers(-ndim, ndim - 1))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    dtype = draw(st.sampled_from((torch.int64, torch.int32, torch.uint8)))
    codes = torch.randint(0, 1 << bits, shape, generator=gen).to(dtype)
    return codes, bits, dim


@settings(max_examples=80, deadline=None)
@given(codes_and_dim())
def test_round_trip_kernel_bits(case):
    codes, bits, dim = case
    packed = pack_along_dim(codes, bits, dim)
    n = codes.shape[dim]
    expected = list(codes.shape)
    expected[dim] = packed_size(n, bits)
    assert packed.dtype == torch.int32 and list(packed.shape) == expected
    back = unpack_along_dim(packed, bits, dim, size=n)
    assert back.dtype == torch.uint8
    assert torch.equal(back.long(), codes.long())


@settings(max_examples=30, deadline=None)
@given(codes_and_dim(bits_choices=(1, 5, 6, 7)))
def test_round_trip_other_widths(case):
    codes, bits, dim = case
    back = unpack_along_dim(pack_along_dim(codes, bits, dim), bits, dim, size=codes.shape[dim], dtype=torch.int64)
    assert torch.equal(back, codes.long())


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(KERNEL_BITS), st.integers(1, 9), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_qweight_and_qzeros_orientation(bits, k_blocks, n, seed):
    gen = torch.Generator().manual_seed(seed)
    k = 32 * k_blocks  # GPTQ needs whole words along K
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen)
    qweight = pack_qweight(codes, bits)
    assert qweight.shape == (k * bits // 32, n)  # packed along in_features
    assert torch.equal(qweight, pack_along_dim(codes, bits, dim=1).t())
    assert torch.equal(unpack_qweight(qweight, bits, k).long(), codes)
    zeros = torch.randint(0, 1 << bits, (k_blocks, n), generator=gen)
    qzeros = pack_qzeros(zeros, bits)
    assert qzeros.shape == (k_blocks, packed_size(n, bits))  # packed along out_features
    assert torch.equal(unpack_qzeros(qzeros, bits, n).long(), zeros)


def test_lsb_first_within_a_word():
    assert _u32(pack_along_dim(torch.arange(1, 9), 4)) == [0x87654321]
    assert _u32(pack_along_dim(torch.tensor([1, 2, 3, 0xAB]), 8)) == [0xAB030201]
    assert _u32(pack_along_dim(torch.tensor([3, 0, 1, 2] + [0] * 12), 2)) == [0b10_01_00_11]
    assert _u32(pack_along_dim(torch.full((16,), 3), 2)) == [0xFFFFFFFF]


def test_three_bit_straddles():
    # code 10 of a 32-code block: bits 30-31 of word 0 and bit 0 of word 1
    codes = torch.zeros(32, dtype=torch.int64)
    codes[10] = 0b101
    assert _u32(pack_along_dim(codes, 3)) == [0b01 << 30, 0b1, 0]
    codes[10] = 0b110
    assert _u32(pack_along_dim(codes, 3)) == [0b10 << 30, 0b1, 0]
    # code 21: bit 31 of word 1 and bits 0-1 of word 2
    codes = torch.zeros(32, dtype=torch.int64)
    codes[21] = 0b011
    assert _u32(pack_along_dim(codes, 3)) == [0, 1 << 31, 0b01]
    # and back, with every other code set to catch bleeding between neighbours
    codes = torch.randint(0, 8, (5, 64))
    assert torch.equal(unpack_along_dim(pack_along_dim(codes, 3), 3).long(), codes)


def _autogptq_pack(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's reference packing loop (QuantLinear.pack), intweight [K, N] -> [K*bits/32, N]."""
    intweight = intweight.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                qweight[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:  # 3 bits
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << 30
            row += 1
            qweight[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << 31
            row += 1
            qweight[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight


@pytest.mark.parametrize("bits", KERNEL_BITS)
def test_matches_autogptq_reference_packing(bits):
    codes = torch.randint(0, 1 << bits, (24, 96), generator=torch.Generator().manual_seed(bits))  # [N, K]
    ref = _autogptq_pack(codes.t().numpy(), bits)
    ours = pack_qweight(codes, bits).numpy().view(np.uint32)
    np.testing.assert_array_equal(ours, ref)


def test_partial_last_word_is_zero_padded_and_needs_size():
    codes = torch.full((33,), 7)
    packed = pack_along_dim(codes, 3)
    assert packed.shape == (4,)  # ceil(33 * 3 / 32), as compressed-tensors truncates
    assert _u32(packed)[3] == 0b111  # code 32 = bits 96-98 = word 3 bits 0-2
    assert unpack_along_dim(packed, 3).shape == (42,)  # every code 4 words could hold
    assert torch.equal(unpack_along_dim(packed, 3, size=33).long(), codes)


def test_bad_inputs():
    with pytest.raises(ValueError):
        pack_along_dim(torch.tensor([16]), 4)
    with pytest.raises(ValueError):
        pack_along_dim(torch.tensor([-1]), 4)
    with pytest.raises(TypeError):
        pack_along_dim(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError):
        pack_along_dim(torch.tensor([1]), 9)
    with pytest.raises(TypeError):
        unpack_along_dim(torch.tensor([1], dtype=torch.int64), 4)
    with pytest.raises(ValueError):
        unpack_along_dim(torch.tensor([1], dtype=torch.int32), 4, size=9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits", KERNEL_BITS)
def test_round_trip_on_gpu_matches_cpu(bits):
    codes = torch.randint(0, 1 << bits, (64, 320))
    packed = pack_qweight(codes.cuda(), bits)
    assert torch.equal(packed.cpu(), pack_qweight(codes, bits))
    assert torch.equal(unpack_qweight(packed, bits, 320).cpu().long(), codes)
