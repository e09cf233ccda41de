"""GPTQ export, read back by a reference reader of the documented layout written here
(bit by bit with numpy, sharing nothing with the exporter or the kernels' packing)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bitsmith.core.export import export_checkpoint, open_source


def ref_unpack(packed: np.ndarray, bits: int, n: int, axis: int) -> np.ndarray:
    """Documented GPTQ packing: along `axis`, int32 words form a little-endian bit stream and
    value i occupies stream bits [i*bits, (i+1)*bits). Returns n values along `axis`."""
    words = np.ascontiguousarray(np.moveaxis(packed, axis, -1)).astype("<i4")   # [..., W]
    as_bytes = words.view(np.uint8)                                # 4 little-endian bytes per word
    stream = np.unpackbits(as_bytes, axis=-1, bitorder="little")   # [..., W*32], bit b of the stream
    values = stream[..., : n * bits].reshape(*stream.shape[:-1], n, bits)
    weights = 1 << np.arange(bits)
    return np.moveaxis((values * weights).sum(-1), -1, axis)


def ref_dequantize(tensors: dict, name: str, bits: int, v1: bool, d_in: int, d_out: int) -> np.ndarray:
    """W [d_out, d_in] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n])."""
    q = ref_unpack(tensors[f"{name}.qweight"].numpy(), bits, d_in, axis=0)          # [K, N]
    z = ref_unpack(tensors[f"{name}.qzeros"].numpy(), bits, d_out, axis=1)          # [G, N]
    if v1:
        z = z + 1
    scales = tensors[f"{name}.scales"].float().numpy()                              # [G, N]
    g_idx = tensors[f"{name}.g_idx"].numpy()
    return (scales[g_idx] * (q - z[g_idx])).T


def resolve_dynamic(quant_config: dict, name: str) -> dict | None:
    """GPTQModel's documented `dynamic` semantics: first matching pattern (re.match) wins,
    `-:` excludes the module, `+:` (or none) overrides the defaults; None = not quantized."""
    base = {k: quant_config[k] for k in ("bits", "group_size", "sym")}
    for pattern, overrides in (quant_config.get("dynamic") or {}).items():
        negative = pattern.startswith("-:")
        regex = pattern[2:] if pattern.startswith(("-:", "+:")) else pattern
        if re.match(regex, name):
            return None if negative else {**base, **overrides}
    return base


def test_gptq_export_reads_back_with_the_reference_layout(mixed_checkpoint, tmp_path):
    report = export_checkpoint(mixed_checkpoint, "gptq", tmp_path / "gptq")
    folder = tmp_path / "gptq"
    config = json.loads((folder / "config.json").read_text())
    qc = json.loads((folder / "quantize_config.json").read_text())
    assert config["quantization_config"] == qc
    assert qc["quant_method"] == "gptq" and qc["desc_act"] is False
    tensors = load_file(folder / "model.safetensors")
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    src = open_source(mixed_checkpoint)
    v1 = qc["checkpoint_format"] == "gptq"
    assert v1 == all(int(qw.zeros.min()) >= 1 for qw in src.layers.values())
    for name, qw in src.layers.items():
        setting = resolve_dynamic(qc, name)
        assert setting == {"bits": qw.bits, "group_size": qw.group_size, "sym": qw.sym}, name
        assert tensors[f"{name}.qweight"].dtype == torch.int32
        assert tensors[f"{name}.scales"].dtype == torch.float16
        d_out, d_in = qw.shape
        w = ref_dequantize(tensors, name, qw.bits, v1, d_in, d_out)
        # exact up to the fp16 scales: compare with W_hat built from fp16-rounded scales
        s16 = qw.scales.half().float().repeat_interleave(qw.group_size, dim=1)
        z = qw.zeros.repeat_interleave(qw.group_size, dim=1)
        np.testing.assert_allclose(w, (s16 * (qw.codes.float() - z)).numpy(), rtol=1e-6, atol=1e-8)
    for name in src.kept:
        assert resolve_dynamic(qc, name) is None
        assert tensors[f"{name}.weight"].dtype == torch.float16
    fp8 = "model.layers.1.mlp.up_proj"
    assert torch.allclose(tensors[f"{fp8}.weight"].float(), src.fp8[fp8][0].float() * src.fp8[fp8][1][:, None],
                          rtol=1e-3, atol=1e-6)
    assert any("fp8" in w for w in report["warnings"])
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" in tensors


def test_v1_only_when_every_zero_allows_it(save_checkpoint, tiny_llama, tmp_path):
    # symmetric everywhere: every zero point is 2^(bits-1) >= 1, so v1 (stores z - 1) is possible
    ckpt = save_checkpoint(tmp_path / "sym", tiny_llama, [dict(pattern=".", bits=4, sym=True)])
    assert export_checkpoint(ckpt, "gptq", tmp_path / "a")["checkpoint_format"] == "gptq"
    forced = export_checkpoint(ckpt, "gptq", tmp_path / "b", {"checkpoint_format": "v2"})
    assert forced["checkpoint_format"] == "gptq_v2"
    t1, t2 = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.qzeros"
    z1 = ref_unpack(t1[name].numpy(), 4, 64, axis=1)
    z2 = ref_unpack(t2[name].numpy(), 4, 64, axis=1)
    assert (z1 == 7).all() and (z2 == 8).all()
    # a zero point of 0 (a group with no negative weight) forces v2
    src = open_source(ckpt)
    qw = src.layers["model.layers.0.self_attn.q_proj"]
    qw.zeros[0, 0], qw.sym = 0.0, False
    assert export_checkpoint(src, "gptq", tmp_path / "c")["checkpoint_format"] == "gptq_v2"


def test_fractional_zero_points_are_rounded_and_reported(mixed_checkpoint, tmp_path):
    src = open_source(mixed_checkpoint)
    name = "model.layers.0.self_attn.k_proj"
    src.layers[name].zeros += 0.25
    report = export_checkpoint(src, "gptq", tmp_path / "g")
    assert set(report["rounded_zero_layers"]) == {name}
    assert report["rounded_zero_layers"][name]["max_zero_shift"] == pytest.approx(0.25, abs=1e-5)
    assert report["rounded_zero_layers"][name]["added_rel_error"] > 0
    assert any("fractional zero points" in w for w in report["warnings"])
