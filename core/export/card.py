"""The README.md model card every export carries: plan summary, bits, perplexity, how to load.
The format's own text (notes, imports, extra lines) comes from its file in formats/."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .registry import export_formats

if TYPE_CHECKING:
    from .source import ExportSource


def bits_summary(source: ExportSource) -> dict:
    """Average bits per weight of the linear layers: codes alone and with scale/zero overhead."""
    code = over = params = 0
    for qw in source.layers.values():
        n = qw.codes.numel()
        code, over, params = code + qw.bits * n, over + 32 * qw.scales.numel(), params + n
    for name in source.kept:
        w = source.dense.get(f"{name}.weight")
        if w is not None:
            code, params = code + (8 if source.kept[name] == "fp8" else 16) * w.numel(), params + w.numel()
    return {"avg_code_bits": code / params if params else 0.0,
            "effective_bits": (code + over) / params if params else 0.0, "linear_params": params}


def plan_summary(source: ExportSource) -> list[str]:
    counts = Counter(f"{qw.bits}-bit g{qw.group_size}{' sym' if qw.sym else ''}" for qw in source.layers.values())
    counts.update(f"kept ({k})" for k in source.kept.values())
    return [f"- {label}: {n} layer{'s' if n != 1 else ''}" for label, n in sorted(counts.items())]


def _size_lines(format_report: dict) -> list[str]:
    size, src = format_report.get("weight_bytes"), format_report.get("source_model")
    if not size:
        return []
    line = f"Weight files: **{size:,} bytes** ({size / 1e6:.1f} MB)"
    if src:
        line += (f", {size / src['bytes']:.3f}× the {src['bytes']:,} bytes of the model it was quantized from "
                 f"({src['path']})")
    return [line + "."]


def _embedding_lines(format_report: dict) -> list[str]:
    return [f"`{name}` is stored as {e['type']} (relative error {e['rel_error']:.2e} against the float tensor)."
            for name, e in (format_report.get("embeddings") or {}).items()]


def readers_table(readers: list[dict], out: str, gguf_file: str) -> list[str]:
    """Markdown rows: reader, verdict, the exact call, what happens, where it was seen."""
    lines = ["| reader | verdict | call | what happens | seen in |", "|---|---|---|---|---|"]
    for r in readers:
        call = r["call"].format(out=out, gguf_file=gguf_file)
        lines.append(f"| {r['reader']} | **{r['verdict']}** | `{call}` | {r['why'] or '–'} | {r['evidence']} |")
    return lines


def model_card(source: ExportSource, fmt: str, out: str, format_report: dict, warnings: list[str]) -> str:
    format_ = export_formats()[fmt]
    bits = bits_summary(source)
    ppl = source.measured_ppl()
    base = source.manifest.get("base_model") or {}
    title = base.get("source") or source.config.get("_name_or_path") or source.model_type or "model"
    if title == "default":
        title = "SmolLM2-135M-Instruct (Bitsmith's default model)"
    lines = [f"# {title} — Bitsmith {fmt} export", "",
             f"Quantized with Bitsmith; exported as **{fmt}**.", "", "## Plan", ""]
    lines += plan_summary(source)
    lines += ["", f"Average bits per weight of the linear layers: **{bits['avg_code_bits']:.3f}** in codes, "
                  f"**{bits['effective_bits']:.3f}** with 16-bit scales and zeros "
                  f"({bits['linear_params']:,} weights)."]
    lines += format_.card_lines(format_report)
    lines += _embedding_lines(format_report) + _size_lines(format_report)
    lines += ["", "## Quality", ""]
    if ppl:
        where = ", ".join(f"{k} {v}" for k, v in ppl.items() if k != "ppl")
        lines.append(f"Perplexity measured by the run: **{ppl['ppl']:.4g}**" + (f" ({where})." if where else "."))
    else:
        lines.append("The run that made this checkpoint measured no perplexity.")
    lines.append(f"`bitsmith verify {out}` loads this folder with every reader installed and prints each "
                 "one's perplexity beside Bitsmith's.")
    lines += ["", "## Format", "", format_.card_notes]
    if warnings:
        lines += ["", "## Notes and warnings", ""] + [f"- {w}" for w in warnings]
    gguf_file = format_report.get("gguf_file", "model.gguf")
    lines += ["", "## Who reads it", ""]
    if format_.card_imports:
        lines += [f"Python calls assume `{format_.card_imports}`.", ""]
    lines += readers_table(format_report.get("readers", []), out, gguf_file) + [""]
    return "\n".join(lines)
