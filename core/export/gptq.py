"""GPTQ checkpoints (the AutoGPTQ / GPTQModel layout that transformers, vLLM and SGLang read).

Per quantized layer `L` (N = out_features, K = in_features, G = K // group_size):

    L.qweight  int32 [ceil(K*bits/32), N]   codes packed along K, LSB first; 3-bit as the
                                            dense stream of 32 codes in 3 words
    L.qzeros   int32 [G, ceil(N*bits/32)]   zero points packed along N (same stream rule)
    L.scales   fp16  [G, N]
    L.g_idx    int32 [K]                    group of each input column: k // group_size
    L.bias     fp16  [N]                    when the layer has one

Dequantization: W[n, k] = scales[g, n] * (q[k, n] - z[g, n]) with g = g_idx[k].
`checkpoint_format` "gptq_v2" stores z itself; "gptq" (v1) stores z - 1 (a historical
off-by-one its loaders undo), so v1 needs every z >= 1 and is written only then.
No act-order permutation is ever written (desc_act false, g_idx in order).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch

from ..quant.tensor import QuantizedWeight
from .common import copy_tokenizer, dense_tensor, hf_config, integer_zeros, is_symmetric, save_safetensors, to_half, write_json
from .source import ExportSource


def _packing():
    from bitsmith.kernels.packing import pack_qweight, pack_qzeros

    return pack_qweight, pack_qzeros


def gptq_layer_tensors(qw: QuantizedWeight, zeros: torch.Tensor, v1: bool,
                       bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """qweight, qzeros, scales, g_idx (and bias) of one layer; `zeros` integer [N, G]."""
    pack_qweight, pack_qzeros = _packing()
    d_out, d_in = qw.shape
    stored_zeros = zeros - 1 if v1 else zeros              # v1 stores z - 1
    out = {
        "qweight": pack_qweight(qw.codes.to(torch.int64), qw.bits),           # [K*b/32, N]
        "qzeros": pack_qzeros(stored_zeros.t().contiguous(), qw.bits),         # [G, N*b/32]
        "scales": qw.scales.t().contiguous().to(torch.float16),               # [G, N]
        "g_idx": (torch.arange(d_in, dtype=torch.int32) // qw.group_size),     # [K]
    }
    if bias is not None:
        out["bias"] = bias.to(torch.float16)
    return out


def _setting(qw: QuantizedWeight, sym: bool) -> dict:
    return {"bits": qw.bits, "group_size": qw.group_size, "sym": sym}


def _dynamic_block(settings: dict[str, dict], kept: list[str], default: dict) -> dict:
    """GPTQModel's `dynamic`: anchored regex -> overrides; `-:` excludes kept layers.

    Layers with the same override share one alternation, so the block stays short."""
    by_setting: dict[tuple, list[str]] = {}
    for name, s in settings.items():
        if s != default:
            by_setting.setdefault(tuple(sorted(s.items())), []).append(name)
    dynamic: dict[str, dict] = {}
    if kept:
        dynamic["-:" + _alternation(kept)] = {}
    for key, names in by_setting.items():
        dynamic["+:" + _alternation(names)] = dict(key)
    return dynamic


def _alternation(names: list[str]) -> str:
    """One anchored regex matching exactly these module names (re.match semantics)."""
    escaped = [re.escape(n) for n in names]
    return escaped[0] + "$" if len(escaped) == 1 else "(?:" + "|".join(escaped) + ")$"


def export_gptq(source: ExportSource, folder: Path, options: dict | None = None) -> dict:
    """Write a GPTQ checkpoint into `folder` (an empty staged folder); returns the format report."""
    options = options or {}
    fits = {name: integer_zeros(qw) for name, qw in source.layers.items()}
    sym = {name: is_symmetric(qw) and fits[name].exact for name, qw in source.layers.items()}
    v1 = all(int(f.zeros.min()) >= 1 for f in fits.values()) if fits else False
    if options.get("checkpoint_format") == "v2":
        v1 = False

    tensors: dict[str, torch.Tensor] = {}
    for name, qw in source.layers.items():
        bias = source.dense.get(f"{name}.bias")
        for key, t in gptq_layer_tensors(qw, fits[name].zeros, v1, bias).items():
            tensors[f"{name}.{key}"] = t
    quantized_biases = {f"{n}.bias" for n in source.layers}
    for key, t in source.dense_for_export().items():
        if key in quantized_biases or key in tensors:
            continue
        tensors[key] = to_half(t)
    for name in source.kept:                     # fp8-kept layers: dequantized to fp16
        w = dense_tensor(source, name)
        if w is not None:
            tensors[f"{name}.weight"] = w.to(torch.float16)

    settings = {n: _setting(qw, sym[n]) for n, qw in source.layers.items()}
    counts = Counter(tuple(sorted(s.items())) for s in settings.values())
    default = dict(counts.most_common(1)[0][0]) if counts else {"bits": 4, "group_size": 128, "sym": True}
    quant_config = {
        "quant_method": "gptq",
        "bits": default["bits"],
        "group_size": default["group_size"],
        "sym": default["sym"],
        "desc_act": False,                       # never act-order in an export (see module doc)
        "static_groups": False,
        "true_sequential": True,
        "damp_percent": 0.01,
        "lm_head": False,
        "checkpoint_format": "gptq" if v1 else "gptq_v2",
        "pack_dtype": "int32",
        "meta": {"quantizer": ["bitsmith"], "exporter": "bitsmith export --format gptq"},
    }
    dynamic = _dynamic_block(settings, sorted(source.kept), default)
    if dynamic:
        quant_config["dynamic"] = dynamic

    files = save_safetensors(folder, tensors, options.get("max_shard_bytes", 5 * 10**9))
    config = hf_config(source)
    config["quantization_config"] = quant_config
    write_json(folder / "config.json", config)
    write_json(folder / "quantize_config.json", quant_config)
    files += ["config.json", "quantize_config.json"] + copy_tokenizer(source, folder)

    rounded = {n: {"max_zero_shift": f.max_shift, "added_rel_error": f.rel_error}
               for n, f in fits.items() if not f.exact}
    scale_err = max((_fp16_scale_error(qw) for qw in source.layers.values()), default=0.0)
    return {"files": files, "checkpoint_format": quant_config["checkpoint_format"],
            "default": default, "dynamic_rules": len(dynamic), "rounded_zero_layers": rounded,
            "max_fp16_scale_rel_error": scale_err,
            "not_representable": sorted(n for n, k in source.kept.items() if k == "fp8")}


def _fp16_scale_error(qw: QuantizedWeight) -> float:
    s = qw.scales.double()
    return float(((s.half().double() - s).abs() / s.abs().clamp_min(1e-30)).max())
