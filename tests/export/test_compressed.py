"""compressed-tensors export, read back with the compressed-tensors library itself."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bitsmith.core.export import export_checkpoint, export_warnings, open_source

ct = pytest.importorskip("compressed_tensors")


def _library_decompress(tensors: dict, name: str, scheme) -> torch.Tensor:
    from compressed_tensors.compressors.base import BaseCompressor

    prefix = f"{name}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and k.count(".") == name.count(".") + 1}
    return BaseCompressor.get_value_from_registry(scheme.format).decompress(state, scheme)["weight"]


# every kind of layer: 2/3/4-bit asym (widened under sym), 8-bit asym (int-quantized under sym),
# symmetric 4- and 8-bit, a kept layer
ALL_KINDS = [dict(pattern=r"layers\.1\.self_attn\.v_proj$", keep="16"), dict(pattern="q_proj", bits=4, sym=True),
             dict(pattern="k_proj", bits=3), dict(pattern="gate_proj", bits=2), dict(pattern="up_proj", bits=8),
             dict(pattern="o_proj", bits=8, sym=True), dict(pattern=".", bits=4)]


@pytest.fixture(scope="module")
def all_kinds(save_checkpoint, tiny_llama, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ct-kinds") / "q", tiny_llama, ALL_KINDS)


@pytest.mark.parametrize("layout", ["sym", "asym"])
def test_library_decompresses_every_layer_to_our_weights(all_kinds, tmp_path, layout):
    from compressed_tensors.quantization import QuantizationConfig

    report = export_checkpoint(all_kinds, "compressed-tensors", tmp_path / "ct", {"ct_layout": layout})
    folder = tmp_path / "ct"
    doc = json.loads((folder / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(doc)          # the library accepts our config
    assert config.quantization_status == "compressed"
    keys = [(g.weights.num_bits, g.weights.group_size, g.weights.symmetric, g.format) for g in config.config_groups.values()]
    assert len(keys) == len(set(keys))
    assert doc == json.loads(json.dumps(config.to_dict()))
    tensors = load_file(folder / "model.safetensors")
    src = open_source(all_kinds)
    seen = set()
    for group in config.config_groups.values():
        for name in group.targets:
            seen.add(name)
            qw = src.layers[name]
            w = _library_decompress(tensors, name, group).float()
            s16 = qw.scales.half().float().repeat_interleave(qw.group_size, dim=1)
            z = qw.zeros.repeat_interleave(qw.group_size, dim=1)
            torch.testing.assert_close(w, s16 * (qw.codes.float() - z), rtol=1e-3, atol=1e-6)
    assert seen == set(src.layers)
    assert set(src.kept) <= set(config.ignore) and "lm_head" in config.ignore
    if layout == "asym":          # the plan's bits and symmetry, all pack-quantized
        assert {(k[0], k[2], k[3]) for k in keys} == {(4, True, "pack-quantized"), (3, False, "pack-quantized"),
                                                     (2, False, "pack-quantized"), (8, False, "pack-quantized"),
                                                     (8, True, "pack-quantized"), (4, False, "pack-quantized")}
        assert report["widened_layers"] == {}
    else:                         # asymmetric b-bit -> symmetric b+1; asymmetric 8-bit -> int-quantized
        assert {(k[0], k[2], k[3]) for k in keys} == {(4, True, "pack-quantized"), (5, True, "pack-quantized"),
                                                     (3, True, "pack-quantized"), (8, False, "int-quantized"),
                                                     (8, True, "pack-quantized")}
        assert doc["format"] == "mixed-precision"
        widened = report["widened_layers"]
        assert widened["model.layers.0.self_attn.k_proj"] == {"plan_bits": 3, "stored_bits": 4, "format": "pack-quantized"}
        assert widened["model.layers.0.mlp.up_proj"]["format"] == "int-quantized"
        assert "model.layers.0.self_attn.q_proj" not in widened
    assert report["config_groups"] and report["ct_layout"] == layout


def test_our_packing_equals_the_library_compressor(all_kinds, tmp_path):
    """Compress W_hat with the library (its quantize + pack_to_int32) and compare bit for bit,
    for every config group of both layouts (the group's scheme decides the codes)."""
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    src = open_source(all_kinds)
    for layout in ("sym", "asym"):
        export_checkpoint(all_kinds, "compressed-tensors", tmp_path / layout, {"ct_layout": layout})
        doc = json.loads((tmp_path / layout / "config.json").read_text())["quantization_config"]
        tensors = load_file(tmp_path / layout / "model.safetensors")
        for group in QuantizationConfig.model_validate(doc).config_groups.values():
            compressor = BaseCompressor.get_value_from_registry(group.format)
            for name in group.targets:
                qw = src.layers[name]
                scale = qw.scales.half().float()
                s = scale.repeat_interleave(qw.group_size, dim=1)
                z = qw.zeros.repeat_interleave(qw.group_size, dim=1)
                zp = (qw.zeros - 2 ** (qw.bits - 1)) if not group.weights.symmetric else torch.zeros_like(qw.zeros)
                state = {"weight": s * (qw.codes.float() - z), "weight_scale": scale, "weight_zero_point": zp.to(torch.int8)}
                out = compressor.compress(state, group)
                for key, value in out.items():
                    if key != "weight_scale":
                        assert torch.equal(value, tensors[f"{name}.{key}"]), (layout, name, key)
                assert group.weights.symmetric == (f"{name}.weight_zero_point" not in tensors)


def test_warnings_follow_the_layout(mixed_checkpoint):
    src = open_source(mixed_checkpoint)
    sym = export_warnings(src, "compressed-tensors")
    assert any("one more bit" in w and "transformers loads" in w for w in sym)
    assert any("stored at [3, 5] bits" in w and "vLLM" in w for w in sym)
    assert any(w.startswith("transformers misreads") and "dequantize=True" in w for w in sym)
    assert not any(w.startswith("transformers refuses") for w in sym)
    qkv = [w for w in sym if "(qkv)" in w]
    gate_up = [w for w in sym if "(gate/up)" in w]
    assert len(qkv) == 1 and qkv[0].startswith("2 blocks") and "model.layers.0.self_attn:" in qkv[0]
    assert len(gate_up) == 1 and gate_up[0].startswith("1 block ") and "model.layers.1.mlp:" in gate_up[0]
    asym = export_warnings(src, "compressed-tensors", ct_layout="asym")
    assert any(w.startswith("transformers refuses") and "--ct-layout sym" in w for w in asym)
    assert not any("one more bit" in w for w in asym)
