"""compressed-tensors checkpoints (what llm-compressor writes, vLLM serves and transformers loads).

Per quantized layer `L` (N = out_features, K = in_features, G = K // group_size), format
`pack-quantized`:

    L.weight_packed      int32 [N, ceil(K*bits/32)]  codes packed along K, dense LSB-first
                                                     stream (the library's pack_to_int32)
    L.weight_scale       fp16  [N, G]
    L.weight_zero_point  int32 [ceil(N*bits/32), G]  asymmetric groups only; packed along N
    L.weight_shape       int64 [2]                   (N, K)

and format `int-quantized` (8-bit, one int8 per weight, zero point unpacked):

    L.weight             int8  [N, K]                q - 128
    L.weight_scale       fp16  [N, G]
    L.weight_zero_point  int8  [N, G]                z - 128

The library stores signed codes q_s in [-2^(b-1), 2^(b-1) - 1] offset by 2^(b-1) in the
stream, and dequantizes W = scale * (q_s - zp_s); our unsigned codes q = q_s + 2^(b-1) and
zeros z = zp_s + 2^(b-1) are exactly the stream values, so they pack unchanged. A symmetric
group has zp_s = 0, i.e. z = 2^(b-1) (the grid's symmetric zero), and stores no zero point.

Two layouts (`ct_layout`):
- "sym" (default): every layer symmetric, because transformers' normal load reads any mix
  of symmetric groups but no asymmetric pack-quantized layer (compressed-tensors 0.20.1
  compresses the empty model on the meta device without packing `weight_zero_point`, so its
  shape check fails). An asymmetric b-bit layer (b < 8) with integer zeros is the same
  weights as a symmetric (b + 1)-bit layer of signed codes c = q - z, which lie in
  [-(2^b - 1), 2^b - 1]. An asymmetric 8-bit layer is written `int-quantized` with its zero
  point (which transformers reads). Always b + 1, never "b when the codes happen to fit", so
  the config groups follow from the plan alone and the window can predict them.
- "asym": asymmetric layers keep their zero points at the plan's bits (pack-quantized): the
  smallest file, what vLLM's zero-point kernels take; transformers reads it only through
  `CompressedTensorsConfig(dequantize=True)` and only when it has one config group.
One config group per (bits, group size, symmetry, format), each targeting its layers by
exact module name; layers kept at 16-bit are listed in `ignore` with the head.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import copy_tokenizer, dense_tensor, hf_config, integer_zeros, is_symmetric, save_safetensors, to_half, write_json
from .ct_policy import INT8, ct_setting
from .settings import LayerSetting
from .source import ExportSource


@dataclass
class CtLayer:
    """One layer as written: the scheme and the unsigned integers to store."""
    bits: int
    sym: bool
    fmt: str                        # PACKED | INT8
    codes: torch.Tensor             # [N, K] int64 in [0, 2^bits - 1]
    zeros: torch.Tensor | None      # [N, G] int64 in [0, 2^bits - 1]; None when symmetric

    def key(self, group_size: int) -> tuple[int, int, bool, str]:
        return (self.bits, group_size, self.sym, self.fmt)


def signed_codes(qw, zeros: torch.Tensor) -> torch.Tensor:
    """c = q - z [N, K] int64 for integer zeros [N, G]: the codes of a symmetric grid."""
    return qw.codes.to(torch.int64) - zeros.to(torch.int64).repeat_interleave(qw.group_size, dim=1)


def ct_layer(qw, zeros: torch.Tensor, exact_zeros: bool, layout: str) -> CtLayer:
    """How one layer is written under `layout` ("sym" | "asym"), as ct_policy.ct_setting says
    from its setting (symmetric only when its zeros are exactly the grid's); `zeros` integer [N, G]."""
    sym = exact_zeros and is_symmetric(qw)
    bits, _, stored_sym, fmt = ct_setting(LayerSetting(qw.bits, qw.group_size, sym, None), layout)
    if stored_sym and bits == qw.bits:          # a symmetric grid: the codes as they are
        return CtLayer(bits, True, fmt, qw.codes.to(torch.int64), None)
    if stored_sym:                  # c = q - z in [-(2^b - 1), 2^b - 1]: signed b + 1 bits
        return CtLayer(bits, True, fmt, signed_codes(qw, zeros) + 2 ** qw.bits, None)
    return CtLayer(bits, False, fmt, qw.codes.to(torch.int64), zeros.to(torch.int64))


def ct_layer_tensors(qw, layer: CtLayer, bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The stored tensors of one layer (names relative to the module)."""
    from bitsmith.kernels.packing import pack_along_dim

    out = {"weight_scale": qw.scales.to(torch.float16).contiguous()}                    # [N, G]
    if layer.fmt == INT8:
        out["weight"] = (layer.codes - 128).to(torch.int8)                             # [N, K]
        out["weight_zero_point"] = (layer.zeros - 128).to(torch.int8)                  # [N, G]
    else:
        out["weight_packed"] = pack_along_dim(layer.codes, layer.bits, dim=1)          # [N, K*b/32]
        out["weight_shape"] = torch.tensor(list(qw.shape), dtype=torch.int64)
        if not layer.sym:
            out["weight_zero_point"] = pack_along_dim(layer.zeros, layer.bits, dim=0)  # [N*b/32, G]
    if bias is not None:
        out["bias"] = bias.to(torch.float16)
    return out


def scheme_args(bits: int, group_size: int, sym: bool) -> dict:
    """`weights` of a config group, as compressed-tensors' QuantizationArgs dumps it."""
    return {"num_bits": bits, "type": "int", "symmetric": sym, "group_size": group_size,
            "strategy": "group", "dynamic": False}


def quantization_config(groups: dict[tuple[int, int, bool, str], list[str]], ignore: list[str]) -> dict:
    config_groups = {}
    for i, ((bits, group_size, sym, fmt), names) in enumerate(sorted(groups.items())):
        config_groups[f"group_{i}"] = {"targets": names, "weights": scheme_args(bits, group_size, sym),
                                       "input_activations": None, "output_activations": None,
                                       "format": fmt}
    formats = {key[3] for key in groups}
    return {"config_groups": config_groups, "quant_method": "compressed-tensors", "kv_cache_scheme": None,
            "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed", "global_compression_ratio": None, "ignore": ignore,
            "moe_sparsity_config": None}


def group_label(key: tuple[int, int, bool, str]) -> str:
    bits, group_size, sym, fmt = key
    return f"{bits}-bit g{group_size} {'sym' if sym else 'asym'}" + (" int8" if fmt == INT8 else "")


def export_compressed(source: ExportSource, folder: Path, options: dict | None = None) -> dict:
    """Write a compressed-tensors checkpoint into `folder`; returns the format report."""
    options = options or {}
    layout = options.get("ct_layout", "sym")
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[tuple[int, int, bool, str], list[str]] = defaultdict(list)
    rounded, widened = {}, {}
    stored_bits = 0
    for name, qw in source.layers.items():
        fit = integer_zeros(qw)
        if not fit.exact:
            rounded[name] = {"max_zero_shift": fit.max_shift, "added_rel_error": fit.rel_error}
        layer = ct_layer(qw, fit.zeros, fit.exact, layout)
        if layer.bits != qw.bits or layer.fmt == INT8:
            widened[name] = {"plan_bits": qw.bits, "stored_bits": layer.bits, "format": layer.fmt}
        stored_bits += layer.bits * qw.codes.numel()
        groups[layer.key(qw.group_size)].append(name)
        for key, t in ct_layer_tensors(qw, layer, source.dense.get(f"{name}.bias")).items():
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
    n_weights = sum(qw.codes.numel() for qw in source.layers.values())
    return {"files": files, "ct_layout": layout,
            "config_groups": {group_label(k): len(n) for k, n in sorted(groups.items())},
            "groups": [list(k) for k in sorted(groups)],
            "stored_code_bits": stored_bits / n_weights if n_weights else 0.0,
            "widened_layers": widened, "ignore": ignore, "rounded_zero_layers": rounded,
            "not_representable": sorted(n for n, k in source.kept.items() if k == "fp8")}
