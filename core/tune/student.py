"""The student (a quantized checkpoint made tunable), its teacher, and writing the result.

The student is loaded with the engine's loader (core/quant/checkpoint.py) in float32 —
the master copy of every continuous parameter — and each quantized layer is swapped for
a TunableQuantLinear holding the same codes, scales and zero points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInput
from ..jobs import ModelSpec
from .qlinear import TunableQuantLinear, install_tunable


@dataclass
class Student:
    loaded: Any                               # core.model.LoadedModel (model in float32)
    manifest: dict
    layers: dict[str, TunableQuantLinear]     # quantized layer name -> tunable layer
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]   # adapters found in the source (A, B)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model


def open_student(spec: ModelSpec, train_zeros: bool = True) -> Student:
    from ..files import QUANT_MANIFEST
    from ..model import load_model
    from ..quant.checkpoint import read_quantized
    from ..quant.modules import layer_bias

    path = Path(spec.source).expanduser()
    if not (path / QUANT_MANIFEST).is_file():
        raise BadInput(f"{spec.source} is not a Bitsmith quantized checkpoint (no {QUANT_MANIFEST})",
                       "pass the quantized/ folder of a quantize run")
    loaded = load_model(ModelSpec(str(path), spec.device, "float32", spec.trust_remote_code))
    ckpt = read_quantized(path)
    if not ckpt.layers:
        raise BadInput(f"{path} has no quantized layers to tune", "quantize at least one layer first")
    biases = {name: layer_bias(loaded.model.get_submodule(name)) for name in ckpt.layers}
    layers = install_tunable(loaded.model, ckpt.layers, biases, train_zeros)
    return Student(loaded, ckpt.manifest, layers, ckpt.adapters)


def teacher_source(spec_teacher: str | None, manifest: dict) -> str:
    """The teacher named in the job, else the base model the checkpoint was made from."""
    if spec_teacher:
        return spec_teacher
    base = manifest.get("base_model", {})
    for key in ("source", "location", "path"):
        if isinstance(base.get(key), str) and base[key]:
            return base[key]
    raise BadInput("the checkpoint does not say which dense model it was made from",
                   "pass the dense model with --teacher")


def open_teacher(source: str, spec: ModelSpec) -> Any:
    from ..model import load_model

    teacher = load_model(ModelSpec(source, spec.device, spec.dtype, spec.trust_remote_code))
    if teacher.quantized is not None:
        raise BadInput(f"the teacher {source} is itself a quantized checkpoint", "pass the dense model")
    return teacher


def dense_weights(teacher: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """{name: W [d_out, d_in] float32 on the CPU} of the teacher's layers `names`."""
    from ..inventory import linear_weight

    out = {}
    for name in names:
        try:
            module = teacher.get_submodule(name)
        except AttributeError:
            raise BadInput(f"the teacher has no layer {name}", "pass the dense model this checkpoint came from") from None
        out[name] = linear_weight(module).detach().float().cpu()
    return out


def plan_from_manifest(manifest: dict) -> Any:
    """The engine's Plan for the checkpoint's layers, rebuilt from its manifest."""
    from ..plan import LayerPlan, Plan

    entries = {}
    for name, info in manifest["layers"].items():
        d_out, d_in = info["shape"]
        entries[name] = LayerPlan(bits=int(info["bits"]), group_size=int(info["group_size"]),
                                  sym=bool(info["sym"]), keep=info["keep"],
                                  requested_group_size=int(info["group_size"]), d_out=d_out, d_in=d_in)
    return Plan(entries)


def save_student(path: Path, student: Student, provenance: dict,
                 adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> Path:
    """Write the tuned model as a native quantized checkpoint (same format as the source)."""
    from ..quant.checkpoint import save_quantized

    quantized = {name: layer.quantized_weight() for name, layer in student.layers.items()}
    source_prov = {k: v for k, v in student.manifest.get("provenance", {}).items() if k not in ("created", "tool")}
    extra = {"base_model": dict(student.manifest.get("base_model", {})),
             "provenance": {**source_prov, "tuning": provenance}}
    return save_quantized(path, student.model, student.loaded.tokenizer, quantized,
                          plan_from_manifest(student.manifest), extra, adapters=adapters)
