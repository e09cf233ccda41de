"""The native quantized checkpoint: `RUN_DIR/quantized/`.

    bitsmith-quant.json          manifest: format, version, base model, per-layer settings,
                                 plan budget, provenance (method, calibration, ...)
    bitsmith-weights.safetensors dense parameters under their state-dict names (embeddings,
                                 norms, head, biases) and, per quantized layer NAME:
                                   NAME.codes  uint8 [d_out, d_in]
                                   NAME.scales float32 [d_out, n_groups]
                                   NAME.zeros  float32 [d_out, n_groups]
                                   NAME.eora_A / NAME.eora_B  optional low-rank adapter
                                 and per fp8-kept layer NAME.weight_fp8 [d_out, d_in]
                                 (float8_e4m3fn) with NAME.weight_scale [d_out]
    config.json, tokenizer files the model rebuilds without the original

Loading rebuilds the architecture from config.json with empty weights, loads the dense
parameters, and installs a quantized module for each quantized layer — the same function
as the model the pipeline ended with (dequantized weights), bit for bit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import atomic
from ..errors import BadInput
from ..files import QUANT_MANIFEST as MANIFEST, QUANT_WEIGHTS as WEIGHTS
from ..inventory import _is_conv1d
from .grid import dequantize_fp8, quantize_fp8
from .modules import install_quantized
from .tensor import QuantizedWeight

FORMAT = "bitsmith-quant"
VERSION = 1
QUANT_SUFFIXES = ("codes", "scales", "zeros", "eora_A", "eora_B", "weight_fp8", "weight_scale")


@dataclass
class QuantCheckpoint:
    manifest: dict
    config: dict
    layers: dict[str, QuantizedWeight]                # quantized layers
    dense_state: dict[str, torch.Tensor]              # everything else, by state-dict name
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name -> (A [r, d_in], B [d_out, r])
    fp8: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)       # name -> (values, scale)


# --- save ------------------------------------------------------------------------------

def _layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """[d_out, d_in] float weight of the float layer `name` (read from disk when offloaded)."""
    from ..offload import home_tensor

    module = model.get_submodule(name)
    weight = home_tensor(model, f"{name}.weight", module.weight).detach()
    return weight.t() if _is_conv1d(module) else weight


def _dense_state(model: nn.Module, skip_modules: set[str]) -> dict[str, torch.Tensor]:
    """State dict without the quantized/fp8 layers' own tensors (their bias is kept), each
    shared tensor (tied embeddings) stored once."""
    from ..offload import home_tensor

    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in skip_modules and leaf != "bias":
            continue
        tensor = home_tensor(model, key, tensor)     # a block left on disk (core/offload.py) is read
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen and tensor.numel() > 0:
            continue
        seen.add(ident)
        state[key] = tensor.detach().to("cpu").contiguous()
    return state


def save_quantized(path: str | Path, model: nn.Module, tokenizer: Any, quantized: dict[str, QuantizedWeight],
                   plan: Any, extra: dict | None = None,
                   adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> Path:
    """Write the checkpoint folder atomically. `plan` (core.plan.Plan) names every layer's
    setting; layers it keeps as fp8 are rounded from the model's current weight.
    `extra` may carry "base_model" and "provenance" dicts; the rest goes in as "extra".
    `quantized` may be any mapping (core/quant/resume.BlockCodes reads a block file at a
    time): the weights file is written one tensor at a time (core/quant/stream.py)."""
    from .stream import write_streamed

    extra = dict(extra or {})
    fp8_names = [n for n, e in plan.entries.items() if e.keep == "fp8"]
    dense = _dense_state(model, set(quantized) | set(fp8_names))
    # (name, fetch) in file order; the codes are fetched one layer at a time from `quantized`
    # (a mapping that may read them from block files), never all held at once
    entries = [(name, (lambda t=t: t)) for name, t in dense.items()]
    for name in quantized:
        entries += [(f"{name}.codes", lambda n=name: quantized[n].codes.to("cpu", torch.uint8)),
                    (f"{name}.scales", lambda n=name: quantized[n].scales.to("cpu", torch.float32)),
                    (f"{name}.zeros", lambda n=name: quantized[n].zeros.to("cpu", torch.float32))]
    for name in fp8_names:
        values, scale = quantize_fp8(_layer_weight(model, name))
        entries += [(f"{name}.weight_fp8", lambda v=values: v.cpu()), (f"{name}.weight_scale", lambda s=scale: s.cpu())]
    for name, (a, b) in (adapters or {}).items():
        entries += [(f"{name}.eora_A", lambda a=a: a.detach().to("cpu")),
                    (f"{name}.eora_B", lambda b=b: b.detach().to("cpu"))]
    manifest = _manifest(model, quantized, plan, extra, sorted(adapters or {}))
    path = Path(path)
    with atomic.staged_dir(path) as tmp:
        write_streamed(tmp / WEIGHTS, entries, metadata={"format": FORMAT})
        config = model.config
        for attr in ("quantization_config",):
            if hasattr(config, attr):
                delattr(config, attr)
        config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / MANIFEST, manifest)
    return path


def _manifest(model: nn.Module, quantized: dict[str, QuantizedWeight], plan: Any, extra: dict,
              adapter_names: list[str]) -> dict:
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    base = {"architecture": archs[0], "model_type": model.config.model_type, **extra.pop("base_model", {})}
    layers = {}
    for name, entry in plan.entries.items():
        module = model.get_submodule(name)
        layers[name] = {"bits": entry.bits, "group_size": entry.group_size, "sym": entry.sym,
                        "keep": entry.keep, "shape": [entry.d_out, entry.d_in],
                        "transposed": _is_conv1d(module), "adapter": name in adapter_names}
        if entry.keep is None and name not in quantized:
            raise ValueError(f"plan says {name} is quantized but no quantized weight was given")
    return {"format": FORMAT, "version": VERSION, "base_model": base,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "layers": layers, "budget": plan.budget().to_dict(),
            "provenance": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "tool": "bitsmith", **extra.pop("provenance", {})},
            "extra": extra}


# --- read ------------------------------------------------------------------------------

def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise BadInput(f"{path} is not a Bitsmith quantized checkpoint (no {MANIFEST})",
                       "pass the quantized/ folder of a quantize run")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(f"{file} is not valid JSON", "the checkpoint is damaged: quantize again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInput(f"{file} is not a {FORMAT} manifest", "pass a checkpoint written by Bitsmith")
    if manifest.get("version") != VERSION:
        raise BadInput(f"{file} has format version {manifest.get('version')!r}; this Bitsmith reads {VERSION}",
                       "update Bitsmith or quantize again")
    return manifest


def read_quantized(path: str | Path) -> QuantCheckpoint:
    """Everything in the checkpoint folder, tensors on the CPU."""
    from safetensors.torch import load_file

    from ..model import check_safetensors

    path = Path(path)
    manifest = read_manifest(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BadInput(f"{path} has no {WEIGHTS}", "the checkpoint is incomplete: quantize again")
    check_safetensors(weights)
    tensors = load_file(str(weights))
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    layers, adapters, fp8 = {}, {}, {}
    for name, info in manifest["layers"].items():
        if info["keep"] is None:
            try:
                layers[name] = QuantizedWeight(tensors.pop(f"{name}.codes"), tensors.pop(f"{name}.scales"),
                                               tensors.pop(f"{name}.zeros"), int(info["bits"]),
                                               int(info["group_size"]), bool(info["sym"]))
            except KeyError as err:
                raise BadInput(f"{weights} lacks tensor {err.args[0]}", "the checkpoint is damaged: quantize again") from None
        elif info["keep"] == "fp8":
            fp8[name] = (tensors.pop(f"{name}.weight_fp8"), tensors.pop(f"{name}.weight_scale"))
        if f"{name}.eora_A" in tensors:
            adapters[name] = (tensors.pop(f"{name}.eora_A"), tensors.pop(f"{name}.eora_B"))
    return QuantCheckpoint(manifest, config, layers, tensors, adapters, fp8)


# --- load as a model -------------------------------------------------------------------

def _empty_model(path: Path, trust: bool, dtype: torch.dtype) -> nn.Module:
    """The architecture from config.json with parameters on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust, dtype=dtype)


def _set_fp8_layer(model: nn.Module, name: str, values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
    module = model.get_submodule(name)
    w = dequantize_fp8(values, scale, dtype)
    module.weight = nn.Parameter(w.t().contiguous() if _is_conv1d(module) else w, requires_grad=False)


def load_quantized_model(path: str | Path, spec: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A LoadedModel from a checkpoint folder (called by core.model.load_model)."""
    from transformers import AutoTokenizer

    from ..model import LoadedModel

    path = Path(path)
    ckpt = read_quantized(path)
    trust = bool(getattr(spec, "trust_remote_code", False))
    model = _empty_model(path, trust, dtype)
    install_quantized(model, ckpt.layers, cache_dequantized=device.type == "cpu")
    for name, (values, scale) in ckpt.fp8.items():
        _set_fp8_layer(model, name, values, scale, dtype)
    dense = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt.dense_state.items()}
    model.load_state_dict(dense, strict=False, assign=True)   # missing tensors are caught below
    if getattr(model.config, "tie_word_embeddings", False) or getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        model.tie_weights()
    _check_all_loaded(model, path)
    if ckpt.adapters:
        _attach_adapters(model, ckpt.adapters)
    model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    source = getattr(spec, "source", str(path))
    return LoadedModel(model, tokenizer, source, str(path), device, dtype, quantized=ckpt.manifest)


def _check_all_loaded(model: nn.Module, path: Path) -> None:
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
    if missing:
        raise BadInput(f"{path} lacks weights for {missing[0]} (and {len(missing) - 1} more)",
                       "the checkpoint does not match its config.json: quantize again")


class _AdapterHook:
    """y += B (A x): a low-rank correction attached to a quantized layer (EoRA)."""

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]   # [..., d_in]; eora_A [r, d_in], eora_B [d_out, r]
        return output + (x @ module.eora_A.to(x.dtype).t()) @ module.eora_B.to(x.dtype).t()


def _attach_adapters(model: nn.Module, adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    for name, (a, b) in adapters.items():
        module = model.get_submodule(name)
        module.register_buffer("eora_A", a, persistent=False)
        module.register_buffer("eora_B", b, persistent=False)
        module.register_forward_hook(_AdapterHook())
