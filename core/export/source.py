"""What every exporter reads: one quantized model, held as tensors plus its documents.

An `ExportSource` is format-neutral: the quantized linear layers as `QuantizedWeight`
(codes [d_out, d_in], scales/zeros [d_out, n_groups]), every other tensor of the Hugging
Face state dict (embeddings, norms, head, biases, layers kept at 16-bit) under its HF name,
the model's `config.json`, and the run's plan, report and provenance when there are any.

`open_source(path)` builds one from a native quantized checkpoint folder (the engine's
`bitsmith-quant.json` format, read with `quant.checkpoint.read_quantized`); tests build one
directly from a model and a dict of quantized layers with `source_from_model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import BadInput
from ..files import QUANT_MANIFEST
from ..quant.tensor import QuantizedWeight
from ..report import find_ppl
from .checks import asks_act_order  # pure: lives with the checks, which the window imports without torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
                   "generation_config.json")


@dataclass
class ExportSource:
    config: dict                                  # the model's config.json (HF)
    layers: dict[str, QuantizedWeight]            # quantized linear layers by module name
    dense: dict[str, torch.Tensor]                # every other HF tensor by its state-dict name
    kept: dict[str, str] = field(default_factory=dict)   # module name -> "16" | "fp8" (kept layers)
    tokenizer_dir: Path | None = None             # folder holding the tokenizer files
    manifest: dict = field(default_factory=dict)  # bitsmith-quant.json (or a stand-in)
    plan: dict | None = None                      # plan.json of the run
    report: dict | None = None                    # report.json of the run
    path: Path | None = None                      # the checkpoint folder
    act_order: bool = False                       # the plan asked for act-order permutations
    fp8: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)       # name -> (values, scale [d_out])
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # EoRA: name -> (A, B)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def dense_for_export(self) -> dict[str, torch.Tensor]:
        """The dense tensors a loader expects: a tied head is not stored twice."""
        dense = dict(self.dense)
        if self.tied_embeddings:
            dense.pop("lm_head.weight", None)
        return dense

    def measured_ppl(self) -> dict | None:
        """{'ppl': x, 'data': ..., ...} from the run's report when it measured one."""
        return find_ppl(self.report)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _run_dir_of(checkpoint: Path) -> Path | None:
    """RUN_DIR when the checkpoint is RUN_DIR/quantized (it then has job.json beside it)."""
    parent = checkpoint.parent
    return parent if (parent / "job.json").is_file() else None


def _kept_layers(manifest: dict, plan: dict | None, quantized: set[str]) -> dict[str, str]:
    """Layers the plan kept unquantized, from the manifest's or plan's per-layer entries."""
    entries = manifest.get("layers") or (plan or {}).get("layers") or {}
    kept = {}
    if isinstance(entries, dict):
        for name, entry in entries.items():
            keep = entry.get("keep") if isinstance(entry, dict) else ("16" if entry == 16 else None)
            if keep and name not in quantized:
                kept[name] = str(keep)
    return kept




def open_source(path: str | Path) -> ExportSource:
    """Read a native quantized checkpoint folder (and its run's plan and report)."""
    path = Path(path).expanduser().resolve()
    if path.is_dir() and not (path / QUANT_MANIFEST).is_file() and (path / "quantized" / QUANT_MANIFEST).is_file():
        path = path / "quantized"            # a run directory was given
    if not (path / QUANT_MANIFEST).is_file():
        raise BadInput(f"{path} is not a Bitsmith quantized checkpoint (no {QUANT_MANIFEST})",
                       "pass RUN_DIR/quantized from a `bitsmith quantize` run (or the run directory)")
    from ..quant.checkpoint import read_quantized

    ckpt = read_quantized(path)
    run_dir = _run_dir_of(path)
    plan = _read_json(path / "plan.json") or (_read_json(run_dir / "plan.json") if run_dir else None)
    report = _read_json(path / "report.json") or (_read_json(run_dir / "report.json") if run_dir else None)
    job = _read_json(run_dir / "job.json") if run_dir else None
    manifest = dict(ckpt.manifest)
    if job is not None:
        manifest.setdefault("job", job)
    layers = dict(ckpt.layers)
    tokenizer_dir = path if any((path / f).is_file() for f in TOKENIZER_FILES[:2]) else None
    return ExportSource(config=dict(ckpt.config), layers=layers, dense=dict(ckpt.dense_state),
                        kept=_kept_layers(manifest, plan, set(layers)), tokenizer_dir=tokenizer_dir,
                        manifest=manifest, plan=plan, report=report, path=path,
                        act_order=asks_act_order(manifest, plan, job),
                        fp8=dict(getattr(ckpt, "fp8", {}) or {}), adapters=dict(ckpt.adapters or {}))


def source_from_model(model: torch.nn.Module, layers: dict[str, QuantizedWeight],
                      tokenizer_dir: str | Path | None = None, kept: dict[str, str] | None = None,
                      report: dict | None = None) -> ExportSource:
    """An ExportSource from a float model and its quantized layers (tests, the verifier).

    The dense state is the model's state dict minus the quantized layers' weights."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in layers:
        state.pop(f"{name}.weight", None)
    config = model.config.to_diff_dict()
    return ExportSource(config=config, layers=layers, dense=state, kept=dict(kept or {}),
                        tokenizer_dir=Path(tokenizer_dir) if tokenizer_dir else None,
                        manifest={"source": str(tokenizer_dir or "")}, report=report)
