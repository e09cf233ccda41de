"""Which GGUF block type holds a quantized layer: the one policy that the encoder
(gguf_blocks.encode_layer, from the tensors) and the size estimate (formats/gguf.py, from the
manifest alone) share. Torch-free: the window estimates sizes without torch.

    group size not a multiple of 32               F16   no block type holds the groups
    2/3-bit, lowbit "kquant", d_in % 256 == 0     Q2_K / Q3_K   re-encoded (approximate)
    2/3/4-bit, integer zeros, q - z in [-8, 7]    Q4_0  every 2/3-bit and symmetric 4-bit layer
    other 2/3/4-bit                               Q4_1  fractional zeros, asymmetric 4-bit
    5-8 bits, integer zeros, q - z fits int8      Q8_0
    otherwise                                     F16
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

BLOCK = 32                            # Q4_0 / Q4_1 / Q8_0 blocks hold 32 weights of a row
QK = 256                              # K-quant super-blocks hold 256 weights of a row ...
SUB = 16                              # ... in 16 sub-blocks of 16
GGUF_ARCHES = ("llama", "mistral")    # written as llama.cpp's `llama` architecture
BITS_PER_WEIGHT = {"Q4_0": 4.5, "Q4_1": 5.0, "Q8_0": 8.5, "Q2_K": 2.625, "Q3_K": 3.4375, "F16": 16.0}


@dataclass(frozen=True)
class BlockChoice:
    qtype: str          # GGMLQuantizationType name: Q4_0, Q4_1, Q8_0, Q2_K, Q3_K, F16
    exact: str          # "exact" | "fp16-rounded" | "re-encoded"
    note: str = ""      # why, for the export report


def kquant_holds(d_in: int, group_size: int) -> bool:
    """K-quants need whole super-blocks along a row, and sub-blocks inside one group."""
    return d_in % QK == 0 and group_size % SUB == 0


def choose_block_type(bits: int, d_in: int, group_size: int, lowbit: str, integer_zeros: bool,
                      fits_q4_0: Callable[[], bool], fits_int8: Callable[[], bool]) -> BlockChoice:
    """The block type of one layer. `fits_q4_0()` / `fits_int8()`: whether every q - z lies in
    [-8, 7] / [-128, 127] (integer zeros); called only when the choice depends on them, since
    the encoder measures them on the codes (a pass over the whole layer)."""
    if group_size % BLOCK:
        return BlockChoice("F16", "fp16-rounded",
                           f"group size {group_size} is not a multiple of {BLOCK}: no block type holds it")
    if bits in (2, 3) and lowbit == "kquant":
        if kquant_holds(d_in, group_size):
            qtype = "Q2_K" if bits == 2 else "Q3_K"
            return BlockChoice(qtype, "re-encoded", f"{bits}-bit grid re-encoded to {qtype}")
        kept = choose_block_type(bits, d_in, group_size, "lossless", integer_zeros, fits_q4_0, fits_int8)
        return BlockChoice(kept.qtype, kept.exact, f"d_in {d_in} is not a multiple of {QK}: K-quants cannot "
                                                   f"hold it, kept lossless in {kept.qtype}")
    if bits <= 4:
        # Q4_0 holds w = d (q' - 8): exact with q' = q - z + 8 when q - z fits [-8, 7] —
        # always for 2/3-bit and symmetric 4-bit, for asymmetric 4-bit only by chance.
        if integer_zeros and fits_q4_0():
            return BlockChoice("Q4_0", "exact", f"{bits}-bit codes shifted by 8 - z into Q4_0 nibbles" if bits < 4 else "")
        return BlockChoice("Q4_1", "exact", "2/3-bit codes stored unchanged in Q4_1 nibbles" if bits < 4 else "")
    if integer_zeros and fits_int8():
        return BlockChoice("Q8_0", "exact")
    why = "fractional zero points" if not integer_zeros else "codes minus zero do not fit int8"
    return BlockChoice("F16", "fp16-rounded", f"{bits}-bit with {why}: stored as F16")


def planned_block_type(bits: int, d_in: int, group_size: int, sym: bool, integer_zeros: bool, lowbit: str) -> str:
    """The block type from the plan alone (no codes): assumes q - z fits [-8, 7] for 2/3-bit
    and symmetric 4-bit layers, and int8 for 5-8 bits (true of RTN and GPTQ grids)."""
    return choose_block_type(bits, d_in, group_size, lowbit, integer_zeros,
                             lambda: bits < 4 or sym, lambda: True).qtype
