"""Pieces every exporter shares: integer zero points, safetensors shards, tokenizer files.

Formats that store zero points as packed integers (GPTQ, compressed-tensors, GGUF Q4_0/Q8_0)
need integer zeros in [0, 2^bits - 1]. RTN and GPTQ produce them; fine-tuning the zero points
(PV-Tuning's P step) can make them fractional. `integer_zeros` rounds such zeros and
measures what that costs, so a report can say it instead of hiding it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .source import TOKENIZER_FILES, ExportSource

SHARD_BYTES = 5 * 10**9           # shard safetensors above 5 GB, as Hugging Face does
ZERO_TOLERANCE = 1e-4             # a zero point this close to an integer counts as one


@dataclass
class ZeroFit:
    zeros: torch.Tensor            # [d_out, n_groups] int64 in [0, 2^bits - 1]
    exact: bool                    # the stored zeros were integers in range already
    max_shift: float               # max |z_int - z| over groups
    rel_error: float               # ‖W(z_int) - W(z)‖ / ‖W(z)‖ added by the rounding


def integer_zeros(qw) -> ZeroFit:
    """Round a layer's zero points to integers in range; measure the weight error it adds.

    W_hat = s (q - z): moving z by d moves every weight of the group by -s d, so the added
    error is exactly ‖s d‖ over the group's columns.
    """
    z = qw.zeros.float()
    z_int = torch.clamp(torch.round(z), 0, 2 ** qw.bits - 1)
    shift = (z_int - z).abs()
    max_shift = float(shift.max()) if shift.numel() else 0.0
    exact = max_shift <= ZERO_TOLERANCE
    rel = 0.0
    if not exact:
        w = qw.dequantize()
        err_sq = ((qw.scales.float() * shift) ** 2).sum() * qw.group_size
        rel = float(err_sq.sqrt() / w.norm().clamp_min(1e-30))
    return ZeroFit(z_int.to(torch.int64), exact, max_shift, rel)


def is_symmetric(qw) -> bool:
    """Symmetric in the exporters' sense: every zero point is 2^(bits-1) (the grid's sym)."""
    mid = 2 ** (qw.bits - 1)
    return bool(torch.all((qw.zeros.float() - mid).abs() <= ZERO_TOLERANCE))


def fp16_rel_error(exact: torch.Tensor, stored: torch.Tensor) -> float:
    """‖stored - exact‖ / ‖exact‖ in float64: what storing in 16-bit cost."""
    exact, stored = exact.double(), stored.double()
    return float((stored - exact).norm() / exact.norm().clamp_min(1e-30))


# --- safetensors ------------------------------------------------------------------------

def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def save_safetensors(folder: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int = SHARD_BYTES,
                     stem: str = "model") -> list[str]:
    """Write `tensors` as model.safetensors, or shards plus model.safetensors.index.json.

    Every file carries {"format": "pt"} in its metadata (transformers and vLLM check it).
    Returns the file names written.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = tensor_bytes(t)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(folder / f"{stem}.safetensors"), metadata=meta)
        return [f"{stem}.safetensors"]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        fname = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata=meta)
        names.append(fname)
        weight_map.update({k: fname for k in shard})
    index = {"metadata": {"total_size": sum(tensor_bytes(t) for t in tensors.values())},
             "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names + [f"{stem}.safetensors.index.json"]


def write_json(path: Path, obj: dict) -> None:
    """Inside a staged export folder a plain write is enough: the folder is renamed whole."""
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def copy_tokenizer(source: ExportSource, folder: Path) -> list[str]:
    """Copy the tokenizer files beside the weights so `from_pretrained(folder)` finds them."""
    copied = []
    if source.tokenizer_dir is None:
        return copied
    for name in TOKENIZER_FILES:
        src = source.tokenizer_dir / name
        if src.is_file():
            shutil.copyfile(src, folder / name)
            copied.append(name)
    return copied


def hf_config(source: ExportSource, dtype: str = "float16") -> dict:
    """The model's config.json for an export: our own quantization entries removed."""
    config = {k: v for k, v in source.config.items() if k not in ("quantization_config", "_name_or_path")}
    config["torch_dtype"] = dtype
    config.pop("dtype", None)
    config["dtype"] = dtype
    return config


def dense_tensor(source: ExportSource, name: str) -> torch.Tensor | None:
    """A kept layer's float weight [d_out, d_in] (fp8-kept layers dequantized), if present."""
    if name in source.fp8:
        values, scale = source.fp8[name]
        return values.float() * scale.float()[:, None]
    return source.dense.get(f"{name}.weight")


def to_half(t: torch.Tensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Floating tensors to the export dtype; integer tensors (e.g. position ids) unchanged."""
    return t.to(dtype) if t.is_floating_point() else t


# --- sizes -----------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def folder_bytes(folder: Path, weights_only: bool = False) -> int:
    """Bytes of every file under `folder` (or of its weight files only: .safetensors, .gguf, ...)."""
    return sum(f.stat().st_size for f in folder.rglob("*")
               if f.is_file() and (not weights_only or f.name.endswith(WEIGHT_SUFFIXES)))


def source_model_size(source: ExportSource) -> dict | None:
    """{"path", "bytes"} of the model the checkpoint was quantized from, as the user had it: the
    bundled default's GGUF, a .gguf file, or the weight files of a model folder (not the
    dequantized cache a GGUF is loaded through); None when unknown (a hub id not on this
    machine, a checkpoint without its base model's location)."""
    base = source.manifest.get("base_model") or {}
    named = base.get("source")
    if named == "default":
        from ..model import default_model_path

        candidates = [str(default_model_path())]
    else:
        candidates = [c for c in (named, base.get("location")) if c]
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if path.is_file():
            return {"path": str(path), "bytes": path.stat().st_size}
        weights = [f for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)] if path.is_dir() else []
        if weights:
            return {"path": str(path), "bytes": sum(f.stat().st_size for f in weights)}
    return None
