"""How a quantized layer is stored in compressed-tensors: the one layout rule that the writer
(compressed.py), the plan checks, the reader verdicts and the size estimate share
(formats/compressed_tensors.py). Torch-free: the window predicts the file from the plan.

Under the default "sym" layout an asymmetric b-bit layer (b < 8) is written as symmetric
(b + 1)-bit codes q - z, and an asymmetric 8-bit layer as int8 with its zero point; under
"asym" every layer keeps the plan's bits and zero points (compressed.py says why).
"""

from __future__ import annotations

from .settings import LayerSetting

PACKED, INT8 = "pack-quantized", "int-quantized"    # the compressed-tensors formats compressed.py writes
CT_LAYOUTS = ("sym", "asym")


def ct_setting(s: LayerSetting, layout: str) -> tuple[int, int, bool, str]:
    """(bits, group size, sym, format) a quantized layer is written with in compressed-tensors
    (compressed.ct_layer: under "sym" an asymmetric b-bit layer takes b + 1 bits, 8-bit int8)."""
    if s.sym or layout == "asym":
        return (s.bits, s.group_size, s.sym, PACKED)
    if s.bits < 8:
        return (s.bits + 1, s.group_size, True, PACKED)
    return (8, s.group_size, False, INT8)


def predicted_ct_groups(settings: dict[str, LayerSetting], layout: str) -> set[tuple]:
    """The config groups a compressed-tensors export of these layers will have."""
    return {ct_setting(s, layout) for s in settings.values() if s.quantized}
