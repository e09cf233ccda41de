"""What an export will write, before it runs: the size per format and what each format
stores, from the checkpoint's manifest and its safetensors header alone (no tensor is read,
no torch import: the window calls this while the user picks a format).

Per quantized layer [N out, K in], bits b, G = K/g groups:
    gptq                qweight K·b/32 × N int32, qzeros G × N·b/32 int32, fp16 scales G × N, g_idx K int32
    compressed-tensors  weight_packed N × ⌈K·b'/32⌉ int32, fp16 scales N × G; b' = b + 1 for
                        asymmetric layers under the default "sym" layout (8-bit: int8 weights and an
                        int8 zero point per group), b and packed zero points ⌈N·b/32⌉ × G under "asym"
    gguf                32-weight blocks: Q4_0 4.5 bits (2/3-bit and symmetric 4-bit, integer zero
                        points), Q4_1 5 bits (other 4-bit, fractional zeros after tuning), Q8_0 8.5
                        bits (5-8 bits), Q2_K 2.625 / Q3_K 3.4375 with lowbit=kquant, F16 when the
                        group size is not a multiple of 32
    native              the checkpoint's own files
Everything else (embeddings, head, norms, kept layers) is written at 16-bit (GGUF: norms F32,
the token embedding and the head Q8_0 with embed_bits 8).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

MANIFEST = "bitsmith-quant.json"
WEIGHTS = "bitsmith-weights.safetensors"
ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                 "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
GGUF_BPW = {"Q4_0": 4.5, "Q4_1": 5.0, "Q8_0": 8.5, "Q2_K": 2.625, "Q3_K": 3.4375, "F16": 16.0}
QUANT_PARTS = (".codes", ".scales", ".zeros")
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")     # GGUF's token_embd and output

FORMAT_STORES = {
    "gptq": "GPTQ: codes packed in int32 at their own bit-width, fp16 scales and packed zero points per group; "
            "embeddings, head, norms and kept layers in fp16; mixed plans in GPTQModel's `dynamic` block. "
            "Loads in GPTQModel, vLLM, SGLang; transformers only when every layer has the same setting.",
    "compressed-tensors": "compressed-tensors pack-quantized, every layer symmetric: asymmetric layers take one "
                          "more bit (8-bit ones int8 with zero points), so transformers loads any plan; fp16 "
                          "scales, the rest in fp16. Also the compressed-tensors library; vLLM for 4/8-bit layers.",
    "gguf": "GGUF for llama.cpp: 32-weight blocks. 2/3-bit layers are stored losslessly in 4-bit blocks (Q4_0/Q4_1) "
            "unless 'kquant' re-encodes them (Q2_K/Q3_K); 5-8 bits as Q8_0; embeddings and head Q8_0, norms F32. "
            "So a GGUF is larger than the plan's bits say.",
    "native": "Bitsmith's own checkpoint, copied as is (codes, scales, zeros, plan, report): exact, and what "
              "Bitsmith's evaluate, tune and export read.",
}


def safetensors_header(path: Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape"}} from a .safetensors file's JSON header."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def gguf_type(bits: int, d_in: int, group: int, sym: bool, integer_zeros: bool, lowbit: str) -> str:
    """The GGUF type a layer is written in (the exporter's choice, core/export/gguf_blocks.py)."""
    if group % 32:
        return "F16"
    if bits in (2, 3) and lowbit == "kquant" and d_in % 256 == 0 and group % 16 == 0:
        return "Q2_K" if bits == 2 else "Q3_K"     # K-quant super-blocks hold 256 inputs
    if bits <= 4:
        return "Q4_0" if integer_zeros and (bits < 4 or sym) else "Q4_1"
    return "Q8_0" if integer_zeros else "F16"


def _layer_bytes(fmt: str, d_out: int, d_in: int, bits: int, group: int, sym: bool, gguf_type: str,
                 ct_layout: str = "sym") -> float:
    groups = max(d_in // max(group, 1), 1)
    if fmt == "gptq":
        return (4 * math.ceil(d_in * bits / 32) * d_out + 4 * groups * math.ceil(d_out * bits / 32)
                + 2 * groups * d_out + 4 * d_in)
    if fmt == "compressed-tensors":
        from .checks import LayerSetting
        from .readers import INT8, ct_setting

        bits, _, sym, kind = ct_setting(LayerSetting(bits, group, sym, None), ct_layout)
        if kind == INT8:                    # int8 weights, int8 zero points, fp16 scales
            return d_out * d_in + 3 * d_out * groups
        zeros = 0 if sym else 4 * math.ceil(d_out * bits / 32) * groups
        return 4 * d_out * math.ceil(d_in * bits / 32) + 2 * d_out * groups + zeros + 16
    return d_out * d_in * GGUF_BPW[gguf_type] / 8


def estimate_export(checkpoint: str | Path, fmt: str, lowbit: str = "lossless", ct_layout: str = "sym",
                    embed_bits: int = 8) -> dict:
    """{"bytes", "linear_bytes", "other_bytes", "linear_params", "other_params", "linear_bits_per_weight",
    "bits_per_weight" (over every weight), "types" ({type: layers}, GGUF), "stores"} of exporting
    `checkpoint` (a RUN/quantized folder) as `fmt`. An estimate: GGUF's choice between Q4_0 and
    Q4_1 assumes integer zero points unless the checkpoint was tuned."""
    folder = Path(checkpoint)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    header = safetensors_header(folder / WEIGHTS)
    layers = manifest.get("layers") or {}
    tuned = bool((manifest.get("provenance") or {}).get("tuning"))
    small_files = sum(p.stat().st_size for p in folder.iterdir()
                      if p.is_file() and p.suffix != ".safetensors" and p.name != MANIFEST)
    if fmt == "native":
        total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        return {"bytes": total, "stores": FORMAT_STORES[fmt], "types": {}, **_params(layers, header)}
    linear = 0.0
    types: dict[str, int] = {}
    quantized_names = set()
    for name, e in layers.items():
        if e.get("keep") or int(e.get("bits", 16)) >= 16:
            continue
        quantized_names.add(name)
        d_out, d_in = (int(v) for v in e["shape"])
        bits, group, sym = int(e["bits"]), int(e.get("group_size") or d_in), bool(e.get("sym"))
        kind = gguf_type(bits, d_in, group, sym, not tuned, lowbit)
        types[kind] = types.get(kind, 0) + 1
        linear += _layer_bytes(fmt, d_out, d_in, bits, group, sym, kind, ct_layout)
    other = 0.0
    for key, info in header.items():
        base = key.rsplit(".", 1)[0]
        if base in quantized_names and key.endswith(QUANT_PARTS) or key.endswith("rotary_emb.inv_freq"):
            continue
        n = _numel(info["shape"])
        if fmt == "gguf" and embed_bits == 8 and key in EMBEDDINGS and info["shape"][-1] % 32 == 0:
            other += n * GGUF_BPW["Q8_0"] / 8
            continue
        other += 4 * n if fmt == "gguf" and len(info["shape"]) == 1 else 2 * n
    params = _params(layers, header)
    total = linear + other + small_files
    return {"bytes": int(total), "linear_bytes": int(linear), "other_bytes": int(other),
            "linear_bits_per_weight": 8 * linear / max(params["linear_params"], 1),
            "bits_per_weight": 8 * (linear + other) / max(params["linear_params"] + params["other_params"], 1),
            "types": types if fmt == "gguf" else {}, "stores": FORMAT_STORES[fmt], **params}


def _params(layers: dict, header: dict) -> dict:
    quantized = {n for n, e in layers.items() if not e.get("keep") and int(e.get("bits", 16)) < 16}
    linear = sum(_numel(e["shape"]) for n, e in layers.items() if n in quantized)
    other = sum(_numel(i["shape"]) for k, i in header.items()
                if not (k.rsplit(".", 1)[0] in quantized and k.endswith(QUANT_PARTS)))
    return {"linear_params": linear, "other_params": other}
