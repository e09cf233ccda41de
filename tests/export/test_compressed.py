"""compressed-tensors export, read back with the compressed-tensors library itself."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bitsmith.core.export import export_checkpoint, export_warnings, open_source

ct = pytest.importorskip("compressed_tensors")


def _library_decompress(tensors: dict, name: str, scheme) -> torch.Tensor:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    prefix = f"{name}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and k.count(".") == name.count(".") + 1}
    return PackedQuantizationCompressor.decompress(state, scheme)["weight"]


def test_library_decompresses_every_layer_to_our_weights(mixed_checkpoint, tmp_path):
    from compressed_tensors.quantization import QuantizationConfig

    report = export_checkpoint(mixed_checkpoint, "compressed-tensors", tmp_path / "ct")
    folder = tmp_path / "ct"
    doc = json.loads((folder / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(doc)          # the library accepts our config
    assert config.format == "pack-quantized" and config.quantization_status == "compressed"
    # one group per (bits, group size, symmetry); the layouts the library itself dumps
    keys = [(g.weights.num_bits, g.weights.group_size, g.weights.symmetric) for g in config.config_groups.values()]
    assert len(keys) == len(set(keys))
    assert doc == json.loads(json.dumps(config.to_dict()))
    tensors = load_file(folder / "model.safetensors")
    src = open_source(mixed_checkpoint)
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
    assert report["config_groups"]


def test_our_packing_equals_the_library_compressor(mixed_checkpoint, tmp_path):
    """Compress W_hat with the library (its quantize + pack_to_int32) and compare bit for bit."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig

    export_checkpoint(mixed_checkpoint, "compressed-tensors", tmp_path / "ct")
    doc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    tensors = load_file(tmp_path / "ct" / "model.safetensors")
    src = open_source(mixed_checkpoint)
    for group in QuantizationConfig.model_validate(doc).config_groups.values():
        for name in group.targets:
            qw = src.layers[name]
            scale = qw.scales.half().float()
            s = scale.repeat_interleave(qw.group_size, dim=1)
            z = qw.zeros.repeat_interleave(qw.group_size, dim=1)
            state = {"weight": s * (qw.codes.float() - z), "weight_scale": scale,
                     "weight_zero_point": (qw.zeros - 2 ** (qw.bits - 1)).to(torch.int8)}
            out = PackedQuantizationCompressor.compress(state, group)
            assert torch.equal(out["weight_packed"], tensors[f"{name}.weight_packed"]), name
            if not group.weights.symmetric:
                assert torch.equal(out["weight_zero_point"], tensors[f"{name}.weight_zero_point"]), name
            else:
                assert f"{name}.weight_zero_point" not in tensors


def test_symmetric_export_loads_in_transformers(save_checkpoint, tiny_llama, tmp_path, token_ids):
    """transformers' compressed-tensors integration loads a symmetric export end to end (the
    asymmetric path trips over a shape check in the library's meta-device compression)."""
    from transformers import AutoModelForCausalLM

    from bitsmith.core.model import load_model
    ckpt = save_checkpoint(tmp_path / "q", tiny_llama, [dict(pattern="mlp", bits=8, sym=True),
                                                       dict(pattern=".", bits=4, sym=True)])
    export_checkpoint(ckpt, "compressed-tensors", tmp_path / "ct")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32).eval()
    ours = load_model(str(ckpt))
    with torch.no_grad():
        ref, got = ours.model(token_ids).logits, model(token_ids).logits
    assert (got - ref).abs().max() < 5e-3 * ref.abs().max()


def test_vllm_notes_in_the_warnings(mixed_checkpoint):
    src = open_source(mixed_checkpoint)
    warnings = export_warnings(src, "compressed-tensors")
    assert any("asymmetric at 2/3 bits" in w for w in warnings)
    qkv = [w for w in warnings if "(qkv)" in w]
    gate_up = [w for w in warnings if "(gate/up)" in w]
    assert len(qkv) == 1 and qkv[0].startswith("2 blocks") and "model.layers.0.self_attn:" in qkv[0]
    assert len(gate_up) == 1 and gate_up[0].startswith("1 block ") and "model.layers.1.mlp:" in gate_up[0]
