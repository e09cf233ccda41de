"""`bitsmith export QUANTIZED --format FORMAT --out DIR [--lowbit lossless|kquant] [--ct-layout sym|asym]
[--embed-bits 8|16] [--checkpoint-format auto|v2]`: the formats and the options' choices come from
the export-format registry (core/export/registry.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import finish, run_job_inline
from ..export.registry import export_formats, export_option
from ..jobs import make_job


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write a quantized checkpoint in a format other tools load")
    parser.add_argument("quantized", help="a quantized checkpoint folder (RUN_DIR/quantized) or its run directory")
    parser.add_argument("--format", required=True, choices=list(export_formats()))
    parser.add_argument("--out", required=True, help="the folder to write (replaced whole if it exists)")
    _option(parser, "lowbit", help="GGUF: 2/3-bit layers exact in a 4-bit block type (default) or re-encoded "
                                   "to Q2_K/Q3_K")
    _option(parser, "ct_layout", help="compressed-tensors: every layer symmetric, asymmetric ones with one more "
                                      "bit, so transformers loads it (default); or asym: zero points kept at the "
                                      "plan's bits (transformers refuses it)")
    _option(parser, "embed_bits", type=int,
            help="GGUF: the token embedding and the head as Q8_0 (8, default) or F16 (16)")
    _option(parser, "checkpoint_format", help="GPTQ: v1 when every zero point allows it (auto), or always v2")
    parser.add_argument("--run", help="run directory to record the job in (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--events", action="store_true", help="print raw event lines on stdout")
    parser.set_defaults(func=run)


def _option(parser: argparse.ArgumentParser, key: str, **kwargs) -> None:
    """--KEY with the choices and default of the format option `key` (registry.FormatOption)."""
    option = export_option(key)
    parser.add_argument("--" + key.replace("_", "-"), default=option.default, choices=list(option.choices), **kwargs)


def run(args: argparse.Namespace) -> int:
    job = make_job("export", source=str(Path(args.quantized).expanduser().resolve()), format=args.format,
                   out=str(Path(args.out).expanduser().resolve()), lowbit=args.lowbit,
                   checkpoint_format=args.checkpoint_format, ct_layout=args.ct_layout, embed_bits=args.embed_bits)
    run_args = argparse.Namespace(out=args.run, events=args.events, resume=False)
    code, report = run_job_inline(job, run_args)
    summary = None
    if report:
        lines = [f"{report['format']} export in {report['out']}: {report['avg_code_bits']:.3f} bits/weight in codes, "
                 f"{report['effective_bits']:.3f} with scales and zeros"]
        lines += export_formats()[report["format"]].summary_lines(report)
        if report.get("weight_bytes"):
            src = report.get("source_model")
            lines.append(f"weight files {report['weight_bytes']:,} bytes" + (
                f", {report['weight_bytes'] / src['bytes']:.3f}x the {src['bytes']:,} bytes of {src['path']}" if src else ""))
        lines += [f"{r['reader']} {r['verdict']}: {r['call'].format(out=report['out'], gguf_file=report.get('gguf_file'))}"
                  for r in report.get("readers", [])]
        lines += [f"warning: {w}" for w in report["warnings"]]
        summary = "\n".join(lines)
    return finish(code, report, args, summary)
