"""The size an export will have, said before it runs (core/export/estimate.py), against the
files each format really writes for the mixed tiny checkpoint."""

from __future__ import annotations

from collections import Counter

import pytest

from bitsmith.core.export import export_checkpoint
from bitsmith.core.export.estimate import estimate_export
from bitsmith.core.export.registry import export_formats


def _written(folder) -> int:
    # the model card (README.md) is written by every format and is not part of the model
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "README.md")


@pytest.mark.parametrize("fmt,lowbit", [("gptq", "lossless"), ("compressed-tensors", "lossless"),
                                        ("gguf", "lossless"), ("gguf", "kquant"), ("native", "lossless")])
def test_estimate_is_close_to_what_the_export_writes(mixed_checkpoint, tmp_path, fmt, lowbit):
    estimate = estimate_export(mixed_checkpoint, fmt, lowbit)
    report = export_checkpoint(mixed_checkpoint, fmt, tmp_path / fmt, {"lowbit": lowbit})
    actual = _written(tmp_path / fmt)
    print(f"\n{fmt}/{lowbit}: estimated {estimate['bytes']} B, written {actual} B")
    assert estimate["bytes"] == pytest.approx(actual, rel=0.1)
    assert estimate["stores"] == export_formats()[fmt].stores
    if fmt == "gguf":                        # the block type of every layer, as the exporter chose
        assert estimate["types"] == dict(Counter(layer["type"] for layer in report["layers"].values()))


def test_gguf_estimate_names_the_block_types(mixed_checkpoint):
    lossless = estimate_export(mixed_checkpoint, "gguf", "lossless")
    kquant = estimate_export(mixed_checkpoint, "gguf", "kquant")
    # 2/3-bit layers in Q4 blocks; 8-bit sym o_proj in Q8_0. The tiny model's 64 and 128
    # inputs are no multiple of K-quants' 256: kquant keeps them lossless, as the exporter does.
    assert lossless["types"] == {"Q4_0": 7, "Q4_1": 3, "Q8_0": 2}
    assert kquant["types"] == lossless["types"] and kquant["bytes"] == lossless["bytes"]
    assert lossless["linear_bits_per_weight"] > 4
