"""Export a Bitsmith quantized checkpoint to formats other tools load.

    gptq                GPTQModel / AutoGPTQ layout (transformers, vLLM, SGLang)
    compressed-tensors  pack-quantized (vLLM, transformers, llm-compressor)
    gguf                llama.cpp (and transformers' GGUF loader), Llama architectures
    native              a copy of the Bitsmith checkpoint with plan, report, provenance

`export_checkpoint(source, format, out)` writes the folder atomically (staged, then renamed)
with a README model card and returns a report: files, per-format warnings, which layers the
format cannot represent exactly, and the measured cost of what it rounds.
`export_warnings(plan_or_manifest, format)` gives the warnings up front, from the plan alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..atomic import staged_dir
from .checks import FORMATS, export_warnings, layer_settings

if TYPE_CHECKING:
    from .source import ExportSource


def __getattr__(name: str):
    """ExportSource, open_source, source_from_model on first use: source.py imports torch,
    and the window imports this package (for the checks and estimates) without torch."""
    if name in ("ExportSource", "open_source", "source_from_model"):
        from . import source

        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

LOWBIT_MODES = ("lossless", "kquant")


def _writer(fmt: str) -> Callable:
    if fmt == "gptq":
        from .gptq import export_gptq
        return export_gptq
    if fmt == "compressed-tensors":
        from .compressed import export_compressed
        return export_compressed
    if fmt == "gguf":
        from .gguf_file import export_gguf
        return export_gguf
    from .native import export_native
    return export_native


def _data_warnings(fmt: str, report: dict) -> list[str]:
    """Findings that need the tensors: rounded zero points, inexact GGUF layers."""
    out = list(report.get("notes", []))
    rounded = report.get("rounded_zero_layers") or {}
    if rounded:
        worst = max(r["added_rel_error"] for r in rounded.values())
        out.append(f"{len(rounded)} layers have fractional zero points (after tuning); {fmt} stores integers, "
                   f"so they were rounded (added relative weight error up to {worst:.2e})")
    if fmt == "compressed-tensors" and any("asym" in k for k in report.get("config_groups", {})):
        out.append("transformers 5.x with compressed-tensors 0.20 cannot load asymmetric pack-quantized layers "
                   "(its meta-device setup keeps weight_zero_point unpacked and the shape check fails); the "
                   "library's own decompress reads them (as Bitsmith's tests check); vLLM was not tried here")
    if fmt == "gguf" and report.get("not_exact"):
        names = report["not_exact"]
        worst = max(names, key=lambda n: report["layers"][n]["rel_error"])
        out.append(f"{len(names)} layers are not stored exactly in GGUF; the largest added relative weight error "
                   f"is {report['layers'][worst]['rel_error']:.3g} in {worst} "
                   f"({report['layers'][worst].get('note', '')})")
    return out


def export_checkpoint(source: ExportSource | str | Path, fmt: str, out: str | Path,
                      options: dict | None = None) -> dict:
    """Export `source` (an ExportSource or a checkpoint folder) as `fmt` into folder `out`."""
    from ..errors import BadInput
    from .card import bits_summary, model_card

    if fmt not in FORMATS:
        raise BadInput(f"unknown export format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    options = dict(options or {})
    if options.get("lowbit", "lossless") not in LOWBIT_MODES:
        raise BadInput(f"unknown --lowbit mode {options['lowbit']!r}", "use lossless or kquant")
    from .source import ExportSource, open_source

    if not isinstance(source, ExportSource):
        source = open_source(source)
    out = Path(out).expanduser().resolve()
    if source.path is not None and (out == source.path or source.path in out.parents):
        raise BadInput(f"the export folder {out} is inside the checkpoint it exports",
                       "choose an --out folder outside the checkpoint")
    warnings = export_warnings(source, fmt, lowbit=options.get("lowbit", "lossless"),
                               arch=source.model_type, act_order=source.act_order)
    with staged_dir(out) as tmp:
        report = _writer(fmt)(source, tmp, options)
        warnings += _data_warnings(fmt, report)
        card = model_card(source, fmt, str(out), report, warnings)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    report["files"] = sorted(set(report.get("files", [])) | {"README.md"})
    if fmt != "native" and source.adapters:
        report["not_representable"] = sorted(set(report.get("not_representable", [])) | set(source.adapters))
    return {"format": fmt, "out": str(out), "warnings": warnings, **bits_summary(source),
            "measured_ppl": source.measured_ppl(), **report}


__all__ = ["FORMATS", "LOWBIT_MODES", "ExportSource", "export_checkpoint", "export_warnings",
           "layer_settings", "open_source", "source_from_model"]
