"""GGUF export, read back by readers we did not write: gguf-py's dequantizer and
transformers' GGUF loader (which also undoes llama.cpp's q/k permutation)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from bitsmith.core.errors import BadInput
from bitsmith.core.export import export_checkpoint, open_source
from bitsmith.core.export.gguf_blocks import decode, encode_layer
from bitsmith.core.export.gguf_file import permute_rows
from bitsmith.core.quant.grid import quantize_rtn
from bitsmith.core.quant.tensor import QuantizedWeight


def _fp16_expected(qw: QuantizedWeight) -> np.ndarray:
    """W_hat with the scale (and min) rounded to fp16 the way the block stores them."""
    s16 = qw.scales.half().double()
    w = qw.codes.double().view(qw.shape[0], qw.n_groups, qw.group_size)
    return (s16[..., None] * (w - qw.zeros.double()[..., None])).view(qw.shape).numpy()


@pytest.mark.parametrize("bits,sym,group,qtype", [(4, True, 32, "Q4_0"), (3, False, 64, "Q4_0"),
                                                   (2, False, 32, "Q4_0"), (2, True, 128, "Q4_0"),
                                                   (8, True, 32, "Q8_0"), (6, False, 32, "Q8_0")])
def test_integer_zero_layers_decode_exactly_with_gguf_py(bits, sym, group, qtype):
    torch.manual_seed(bits)
    qw = quantize_rtn(torch.randn(16, 256), bits, group, sym)
    enc = encode_layer(qw)
    assert enc.qtype == qtype and enc.exact == "exact"
    back = gguf.quants.dequantize(enc.data, gguf.GGMLQuantizationType[qtype])   # the library's reader
    assert back.shape == (16, 256)
    np.testing.assert_allclose(back, _fp16_expected(qw), rtol=1e-6, atol=1e-7)


def test_asymmetric_4bit_goes_to_q4_1_with_measured_fp16_error():
    torch.manual_seed(1)
    qw = quantize_rtn(torch.randn(32, 128) + 0.5, 4, 32, sym=False)     # shifted: q - z leaves [-8, 7]
    enc = encode_layer(qw)
    assert enc.qtype == "Q4_1"
    back = decode(enc)
    w_hat = qw.dequantize().numpy()
    rel = np.linalg.norm(back - w_hat) / np.linalg.norm(w_hat)
    assert 0 < rel < 1e-3          # only d and m = -s z rounded to fp16


def test_fractional_zero_points_stay_exact_in_q4_1():
    torch.manual_seed(2)
    qw = quantize_rtn(torch.randn(8, 64), 3, 32)
    qw.zeros += 0.37                                                   # as after tuning the zero points
    enc = encode_layer(qw)
    assert enc.qtype == "Q4_1" and enc.exact == "exact"
    back = decode(enc)
    assert np.abs(back - qw.dequantize().numpy()).max() < 2e-3 * np.abs(back).max()


def test_group_not_multiple_of_32_is_f16_and_flagged():
    qw = quantize_rtn(torch.randn(8, 48), 4, 16)
    enc = encode_layer(qw)
    assert enc.qtype == "F16" and enc.exact == "fp16-rounded" and "not a multiple of 32" in enc.note


def test_kquant_option_re_encodes_2_and_3_bit_layers_with_measured_error():
    torch.manual_seed(3)
    for bits, qtype in ((2, "Q2_K"), (3, "Q3_K")):
        qw = quantize_rtn(torch.randn(8, 512), bits, 64)
        enc = encode_layer(qw, lowbit="kquant")
        assert enc.qtype == qtype and enc.exact == "re-encoded"
        back = gguf.quants.dequantize(enc.data, gguf.GGMLQuantizationType[qtype])
        w_hat = qw.dequantize().numpy()
        rel = np.linalg.norm(back - w_hat) / np.linalg.norm(w_hat)
        assert rel < 0.35, rel      # re-encoding the grid costs something, but stays a quantization of it
        assert enc.bits_per_weight() < 4.0


def test_permutation_is_undone_by_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.arange(96 * 5, dtype=torch.float32).view(96, 5)
    proc = LlamaTensorProcessor(config={"num_attention_heads": 6, "num_key_value_heads": 2})
    for heads, kv in ((6, 6), (6, 2)):
        name = "blk.0.attn_q.weight" if kv == heads else "blk.0.attn_k.weight"
        rows = w[: 96 if kv == heads else 96 * kv // heads]
        back = proc.process(permute_rows(rows, heads, kv).numpy(), name).weights
        np.testing.assert_array_equal(back, rows.numpy())


def test_gguf_export_loads_in_transformers_and_matches_our_model(mixed_checkpoint, ours, token_ids, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # F16 embeddings: this checks the quantized layers (the Q8_0 embedding has its own test below)
    report = export_checkpoint(mixed_checkpoint, "gguf", tmp_path / "gguf", {"embed_bits": 16})
    assert report["types"]["Q4_0"] >= 4 and report["types"].get("Q8_0") == 2
    assert report["layers"]["model.layers.0.mlp.gate_proj"]["type"] == "Q4_0"          # 2-bit, lossless
    assert report["max_rel_error"] < 1e-3                                            # fp16 rounding only
    assert any("2/3 bits" in w for w in report["warnings"])
    folder = tmp_path / "gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=report["gguf_file"], dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ours.model(token_ids).logits
        got = model(token_ids).logits
    assert (got - ref).abs().max() < 5e-3 * ref.abs().max()
    # weights, q/k included (permuted on write, un-permuted by the reader)
    src = open_source(mixed_checkpoint)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.0.mlp.down_proj"):
        w_hat = src.layers[name].dequantize()
        loaded = model.get_submodule(name).weight.detach().float()
        assert float((loaded - w_hat).norm() / w_hat.norm()) < 1e-3, name
    kept = src.dense["model.layers.1.self_attn.v_proj.weight"]
    assert torch.allclose(model.get_submodule("model.layers.1.self_attn.v_proj").weight, kept, atol=1e-3)
    # the tokenizer written into the file tokenizes as the original
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=report["gguf_file"])
    text = "Export the model, then load it elsewhere: 3 formats."
    assert tok(text)["input_ids"] == ours.tokenizer(text)["input_ids"]
    readme = (folder / "README.md").read_text()
    assert "gguf_file=" in readme and "123.4" in readme


def test_gguf_refuses_other_architectures(save_checkpoint, tiny_models, tmp_path):
    ckpt = save_checkpoint(tmp_path / "q", tiny_models["gpt2"], [])
    with pytest.raises(BadInput, match="Llama-architecture"):
        export_checkpoint(ckpt, "gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_embeddings_are_q8_0_by_default_and_sizes_are_reported(mixed_checkpoint, tiny_llama, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    src = open_source(mixed_checkpoint)
    src.manifest["base_model"] = {**src.manifest.get("base_model", {}), "location": str(tiny_llama)}
    small = export_checkpoint(src, "gguf", tmp_path / "q8")
    wide = export_checkpoint(src, "gguf", tmp_path / "f16", {"embed_bits": 16})
    types, nbytes = {}, {}
    for name, report in (("q8", small), ("f16", wide)):
        reader = gguf.GGUFReader(str(tmp_path / name / report["gguf_file"]))
        embeds = [t for t in reader.tensors if t.name in ("token_embd.weight", "output.weight")]
        types[name] = {t.name: t.tensor_type.name for t in embeds}
        nbytes[name] = sum(int(t.n_bytes) for t in embeds)
    assert types == {"q8": {"token_embd.weight": "Q8_0", "output.weight": "Q8_0"},
                     "f16": {"token_embd.weight": "F16", "output.weight": "F16"}}
    # two [512, 64] tensors: 16 bits -> 8.5 bits per weight (34 bytes per 32 weights)
    assert nbytes == {"f16": 2 * 512 * 64 * 2, "q8": 2 * 512 * 2 * 34}
    assert wide["bytes"] - small["bytes"] >= nbytes["f16"] - nbytes["q8"] - 256     # README and padding aside
    weights = sum(f.stat().st_size for f in tiny_llama.glob("*.safetensors"))
    assert small["source_model"] == {"path": str(tiny_llama), "bytes": weights}
    gguf_bytes = (tmp_path / "q8" / small["gguf_file"]).stat().st_size
    assert small["weight_bytes"] == gguf_bytes and small["bytes"] > gguf_bytes          # README, record
    assert f"{gguf_bytes / weights:.3f}× the {weights:,} bytes" in (tmp_path / "q8" / "README.md").read_text()
    # what a reader gets back is gguf-py's Q8_0 of our embedding, with the error the report states
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q8", gguf_file=small["gguf_file"], dtype=torch.float32)
    ours = src.dense["model.embed_tokens.weight"].float()
    q8 = gguf.quants.dequantize(gguf.quants.quantize(ours.numpy(), gguf.GGMLQuantizationType.Q8_0),
                                gguf.GGMLQuantizationType.Q8_0)
    loaded = model.get_input_embeddings().weight.detach()
    assert torch.equal(loaded, torch.from_numpy(q8))
    rel = float((loaded - ours).norm() / ours.norm())
    assert small["embeddings"]["token_embd.weight"] == {"type": "Q8_0", "rel_error": pytest.approx(rel, rel=1e-6)}
    assert 0 < rel < 1e-2 and wide["embeddings"]["token_embd.weight"]["rel_error"] < 1e-3
    assert any("Q8_0" in w and "--embed-bits 16" in w for w in small["warnings"])
