"""compressed-tensors checkpoints, `pack-quantized` (what llm-compressor writes and vLLM reads).

Per quantized layer `L` (N = out_features, K = in_features, G = K // group_size):

    L.weight_packed      int32 [N, ceil(K*bits/32)]  codes packed along K, dense LSB-first
                                                     stream (the library's pack_to_int32)
    L.weight_scale       fp16  [N, G]
    L.weight_zero_point  int32 [ceil(N*bits/32), G]  asymmetric groups only; packed along N
    L.weight_shape       int64 [2]                   (N, K)

The library stores signed codes q_s in [-2^(b-1), 2^(b-1) - 1] offset by 2^(b-1) in the
stream, and dequantizes W = scale * (q_s - zp_s); our unsigned codes q = q_s + 2^(b-1) and
zeros z = zp_s + 2^(b-1) are exactly the stream values, so they pack unchanged. A symmetric
group has zp_s = 0, i.e. z = 2^(b-1) (the grid's symmetric zero), and stores no zero point.

One config group per (bits, group size, symmetry), each targeting its layers by exact
module name; layers kept at 16-bit are listed in `ignore` with the head.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from .common import copy_tokenizer, dense_tensor, hf_config, integer_zeros, is_symmetric, save_safetensors, to_half, write_json
from .source import ExportSource


def ct_layer_tensors(qw, zeros: torch.Tensor, sym: bool, bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """weight_packed, weight_scale, (weight_zero_point), weight_shape of one layer."""
    from bitsmith.kernels.packing import pack_along_dim

    out = {
        "weight_packed": pack_along_dim(qw.codes.to(torch.int64), qw.bits, dim=1),   # [N, K*b/32]
        "weight_scale": qw.scales.to(torch.float16).contiguous(),                    # [N, G]
        "weight_shape": torch.tensor(list(qw.shape), dtype=torch.int64),
    }
    if not sym:
        out["weight_zero_point"] = pack_along_dim(zeros.to(torch.int64), qw.bits, dim=0)   # [N*b/32, G]
    if bias is not None:
        out["bias"] = bias.to(torch.float16)
    return out


def scheme_args(bits: int, group_size: int, sym: bool) -> dict:
    """`weights` of a config group, as compressed-tensors' QuantizationArgs dumps it."""
    return {"num_bits": bits, "type": "int", "symmetric": sym, "group_size": group_size,
            "strategy": "group", "dynamic": False}


def quantization_config(groups: dict[tuple[int, int, bool], list[str]], ignore: list[str]) -> dict:
    config_groups = {}
    for i, ((bits, group_size, sym), names) in enumerate(sorted(groups.items())):
        config_groups[f"group_{i}"] = {"targets": names, "weights": scheme_args(bits, group_size, sym),
                                       "input_activations": None, "output_activations": None,
                                       "format": "pack-quantized"}
    return {"config_groups": config_groups, "quant_method": "compressed-tensors", "kv_cache_scheme": None,
            "format": "pack-quantized", "quantization_status": "compressed",
            "global_compression_ratio": None, "ignore": ignore, "moe_sparsity_config": None}


def export_compressed(source: ExportSource, folder: Path, options: dict | None = None) -> dict:
    """Write a compressed-tensors checkpoint into `folder`; returns the format report."""
    options = options or {}
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[tuple[int, int, bool], list[str]] = defaultdict(list)
    rounded = {}
    for name, qw in source.layers.items():
        fit = integer_zeros(qw)
        if not fit.exact:
            rounded[name] = {"max_zero_shift": fit.max_shift, "added_rel_error": fit.rel_error}
        sym = fit.exact and is_symmetric(qw)
        groups[(qw.bits, qw.group_size, sym)].append(name)
        for key, t in ct_layer_tensors(qw, fit.zeros, sym, source.dense.get(f"{name}.bias")).items():
            tensors[f"{name}.{key}"] = t
    quantized_biases = {f"{n}.bias" for n in source.layers}
    for key, t in source.dense_for_export().items():
        if key not in quantized_biases and key not in tensors:
            tensors[key] = to_half(t)
    for name in source.kept:
        w = dense_tensor(source, name)
        if w is not None:
            tensors[f"{name}.weight"] = w.to(torch.float16)

    ignore = sorted(source.kept) + ["lm_head"]
    qconfig = quantization_config(groups, ignore)
    files = save_safetensors(folder, tensors, options.get("max_shard_bytes", 5 * 10**9))
    config = hf_config(source)
    config["quantization_config"] = qconfig
    write_json(folder / "config.json", config)
    files += ["config.json"] + copy_tokenizer(source, folder)
    return {"files": files, "config_groups": {f"{b}-bit g{g} {'sym' if s else 'asym'}": len(n)
                                              for (b, g, s), n in sorted(groups.items())},
            "ignore": ignore, "rounded_zero_layers": rounded,
            "not_representable": sorted(n for n, k in source.kept.items() if k == "fp8")}
