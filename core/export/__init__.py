"""Export a Bitsmith quantized checkpoint to formats other tools load.

    gptq                GPTQModel layout; mixed plans in its `dynamic` block (GPTQModel, vLLM,
                        SGLang; transformers reads uniform plans only)
    compressed-tensors  pack-quantized, every layer symmetric by default (transformers, the
                        compressed-tensors library; vLLM for 4/8-bit layers)
    gguf                llama.cpp (and transformers' GGUF loader), Llama architectures
    native              a copy of the Bitsmith checkpoint with plan, report, provenance

`export_checkpoint(source, format, out)` writes the folder atomically (staged, then renamed)
with a README model card and a bitsmith-export.json record, and returns a report: files,
per-format warnings, which layers the format cannot represent exactly, the measured cost of
what it rounds, which readers load the file (readers.py), and its size against the model it
was quantized from.
`export_warnings(plan_or_manifest, format)` gives the warnings up front, from the plan alone,
including every reader that will refuse or misread the file (registry.reader_verdicts).

Each format registers itself from its own file in formats/ (registry.py); this package's
import stays torch-free (the window imports it): source.py, the writers and the card load
when an export runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import staged_dir
from .checks import export_warnings
from .registry import ExportFormat, check_options, export_formats, format_names, reader_verdicts
from .settings import layer_settings

if TYPE_CHECKING:
    from .source import ExportSource


def __getattr__(name: str):
    """ExportSource, open_source, source_from_model on first use: source.py imports torch,
    and the window imports this package (for the checks and estimates) without torch."""
    if name in ("ExportSource", "open_source", "source_from_model"):
        from . import source

        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


EXPORT_RECORD = "bitsmith-export.json"     # what `bitsmith verify` reads: format, source checkpoint, options


def _data_warnings(fmt: ExportFormat, report: dict) -> list[str]:
    """Findings that need the tensors: rounded zero points (any format), then the format's own."""
    out = list(report.get("notes", []))
    rounded = report.get("rounded_zero_layers") or {}
    if rounded:
        worst = max(r["added_rel_error"] for r in rounded.values())
        out.append(f"{len(rounded)} layers have fractional zero points (after tuning); {fmt.name} stores integers, "
                   f"so they were rounded (added relative weight error up to {worst:.2e})")
    return out + fmt.data_warnings(report)


def _readers(source: ExportSource, fmt: str, options: dict, report: dict) -> list[dict]:
    from dataclasses import asdict

    known = {"ct_layout": options.get("ct_layout", "sym")}
    if "groups" in report:
        known["groups"] = report["groups"]
    return [{**asdict(v), "needs": list(v.needs)} for v in reader_verdicts(fmt, layer_settings(source), known)]


def export_checkpoint(source: ExportSource | str | Path, fmt: str, out: str | Path,
                      options: dict | None = None) -> dict:
    """Export `source` (an ExportSource or a checkpoint folder) as `fmt` into folder `out`."""
    from ..errors import BadInput
    from .card import bits_summary, model_card
    from .common import folder_bytes, source_model_size, write_json

    formats = export_formats()
    if fmt not in formats:
        raise BadInput(f"unknown export format {fmt!r}", f"use one of: {', '.join(formats)}")
    format_ = formats[fmt]
    options = dict(options or {})
    check_options(options)
    from .source import ExportSource, open_source

    if not isinstance(source, ExportSource):
        source = open_source(source)
    out = Path(out).expanduser().resolve()
    if source.path is not None and (out == source.path or source.path in out.parents):
        raise BadInput(f"the export folder {out} is inside the checkpoint it exports",
                       "choose an --out folder outside the checkpoint")
    warnings = export_warnings(source, fmt, lowbit=options.get("lowbit", "lossless"),
                               arch=source.model_type, act_order=source.act_order,
                               ct_layout=options.get("ct_layout", "sym"), embed_bits=int(options.get("embed_bits", 8)))
    with staged_dir(out) as tmp:
        report = format_.write(source, tmp, options)
        warnings += _data_warnings(format_, report)
        report["readers"] = _readers(source, fmt, options, report)
        report["source_model"] = source_model_size(source)
        record = {"format": fmt, "source_checkpoint": str(source.path) if source.path else None,
                  "options": {k: v for k, v in options.items() if k != "max_shard_bytes"},
                  "measured_ppl": source.measured_ppl(), "gguf_file": report.get("gguf_file"),
                  "readers": report["readers"]}
        write_json(tmp / EXPORT_RECORD, record)
        report["weight_bytes"] = folder_bytes(tmp, weights_only=True)     # what the card compares
        (tmp / "README.md").write_text(model_card(source, fmt, str(out), report, warnings), encoding="utf-8")
        report["bytes"] = folder_bytes(tmp)
    report["files"] = sorted(set(report.get("files", [])) | {"README.md", EXPORT_RECORD})
    if not format_.holds_checkpoint and source.adapters:
        report["not_representable"] = sorted(set(report.get("not_representable", [])) | set(source.adapters))
    return {"format": fmt, "out": str(out), "warnings": warnings, **bits_summary(source),
            "measured_ppl": source.measured_ppl(), **report}


__all__ = ["EXPORT_RECORD", "ExportSource", "export_checkpoint", "export_formats", "export_warnings", "format_names",
           "layer_settings", "open_source", "reader_verdicts", "source_from_model"]
