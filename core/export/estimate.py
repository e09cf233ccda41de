"""What an export will write, before it runs: the size per format and what each format
stores, from the checkpoint's manifest and its safetensors header alone (no tensor is read,
no torch import: the window calls this while the user picks a format).

Each format's file in formats/ gives the bytes of one quantized layer (ExportFormat.layer_bytes,
with the GGUF block type it chooses) and of every other tensor (dense_bytes: 16-bit unless the
format says otherwise); a format without layer_bytes copies the checkpoint's own files.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from ..files import QUANT_MANIFEST, QUANT_WEIGHTS
from .registry import ExportFormat, LayerShape, PlanCheck, export_formats

QUANT_PARTS = (".codes", ".scales", ".zeros")


def safetensors_header(path: Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape"}} from a .safetensors file's JSON header."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _quantized_layers(layers: dict, tuned: bool) -> dict[str, LayerShape]:
    """The manifest's quantized layers; zero points are integers unless the checkpoint was tuned."""
    out = {}
    for name, e in layers.items():
        if e.get("keep") or int(e.get("bits", 16)) >= 16:
            continue
        d_out, d_in = (int(v) for v in e["shape"])
        out[name] = LayerShape(d_out, d_in, int(e["bits"]), int(e.get("group_size") or d_in), bool(e.get("sym")),
                               integer_zeros=not tuned)
    return out


def _linear_bytes(fmt: ExportFormat, shapes: dict[str, LayerShape], check: PlanCheck) -> tuple[float, dict[str, int]]:
    """Bytes of the quantized layers, and {block type: layers} where the format names types."""
    linear, types = 0.0, {}
    for shape in shapes.values():
        nbytes, kind = fmt.layer_bytes(shape, check)
        linear += nbytes
        if kind is not None:
            types[kind] = types.get(kind, 0) + 1
    return linear, types


def estimate_export(checkpoint: str | Path, fmt: str, lowbit: str = "lossless", ct_layout: str = "sym",
                    embed_bits: int = 8) -> dict:
    """{"bytes", "linear_bytes", "other_bytes", "linear_params", "other_params", "linear_bits_per_weight",
    "bits_per_weight" (over every weight), "types" ({type: layers}, GGUF), "stores"} of exporting
    `checkpoint` (a RUN/quantized folder) as `fmt`. An estimate: GGUF's choice between Q4_0 and
    Q4_1 assumes integer zero points unless the checkpoint was tuned."""
    format_ = export_formats()[fmt]
    folder = Path(checkpoint)
    manifest = json.loads((folder / QUANT_MANIFEST).read_text(encoding="utf-8"))
    header = safetensors_header(folder / QUANT_WEIGHTS)
    layers = manifest.get("layers") or {}
    tuned = bool((manifest.get("provenance") or {}).get("tuning"))
    small_files = sum(p.stat().st_size for p in folder.iterdir()
                      if p.is_file() and p.suffix != ".safetensors" and p.name != QUANT_MANIFEST)
    if format_.layer_bytes is None:          # a copy of the checkpoint's files
        total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        return {"bytes": total, "stores": format_.stores, "types": {}, **_params(layers, header)}
    check = PlanCheck(lowbit=lowbit, ct_layout=ct_layout, embed_bits=embed_bits)
    shapes = _quantized_layers(layers, tuned)
    linear, types = _linear_bytes(format_, shapes, check)
    other = 0.0
    for key, info in header.items():
        base = key.rsplit(".", 1)[0]
        if base in shapes and key.endswith(QUANT_PARTS) or key.endswith("rotary_emb.inv_freq"):
            continue
        other += format_.dense_bytes(key, info["shape"], check)
    params = _params(layers, header)
    total = linear + other + small_files
    return {"bytes": int(total), "linear_bytes": int(linear), "other_bytes": int(other),
            "linear_bits_per_weight": 8 * linear / max(params["linear_params"], 1),
            "bits_per_weight": 8 * (linear + other) / max(params["linear_params"] + params["other_params"], 1),
            "types": types, "stores": format_.stores, **params}


def _params(layers: dict, header: dict) -> dict:
    quantized = {n for n, e in layers.items() if not e.get("keep") and int(e.get("bits", 16)) < 16}
    linear = sum(_numel(e["shape"]) for n, e in layers.items() if n in quantized)
    other = sum(_numel(i["shape"]) for k, i in header.items()
                if not (k.rsplit(".", 1)[0] in quantized and k.endswith(QUANT_PARTS)))
    return {"linear_params": linear, "other_params": other}
