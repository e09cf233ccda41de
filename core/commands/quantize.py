"""`bitsmith quantize MODEL --method METHOD --bits B [--plan PLAN.json] [--group-size G] [--sym]
[--act-order] [--keep REGEX]... --calib SRC --calib-windows N --seqlen L --out RUN_DIR`.

The plan's flags (--bits, --group-size, --sym, --keep, --plan) and --calib-windows are
written here; every other flag is a field of QuantizeSpec (core/quant/config.py), generated
with its default and help (core/spec_args.py)."""

from __future__ import annotations

import argparse

from ..cli import add_model_args, add_output_args, finish, model_spec, run_job_inline
from ..jobs import make_job
from ..plan import uniform_plan_spec
from ..quant.config import QuantizeSpec
from ..quant.registry import quantizer, quantizer_names
from ..spec_args import add_spec_args, spec_values

_D = QuantizeSpec()
_WRITTEN_HERE = ("plan", "calib_windows")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quantize", help=f"quantize a model per a bit plan ({', '.join(quantizer_names())})",
                                   description="Quantize every linear layer of the decoder blocks. Without "
                                   "--plan, every layer gets --bits/--group-size/--sym, except layers matching "
                                   "a --keep pattern, which stay at 16-bit.")
    add_model_args(parser)
    parser.add_argument("--bits", type=int, default=4, help="bits per weight, 2–8 (default 4)")
    parser.add_argument("--group-size", type=int, default=64,
                        help="input columns per scale/zero (default 64; a size that does not divide a "
                        "layer's width falls back to its largest divisor below)")
    parser.add_argument("--sym", action="store_true", help="symmetric grid (default asymmetric)")
    parser.add_argument("--keep", action="append", default=[], metavar="REGEX",
                        help="keep layers whose name matches REGEX at 16-bit (repeatable)")
    parser.add_argument("--plan", help="plan.json (rules or per-layer entries); replaces --bits/--group-size/--sym/--keep")
    parser.add_argument("--calib-windows", type=int, default=None,
                        help=f"calibration windows (default {_D.calib_windows}; 0 for a method that needs no data, "
                        "such as rtn, which then reports weight-space errors)")
    add_spec_args(parser, QuantizeSpec, skip=_WRITTEN_HERE)
    add_output_args(parser)
    parser.set_defaults(func=run)


def _calib_windows(args: argparse.Namespace) -> int:
    if args.calib_windows is not None:
        return args.calib_windows
    return _D.calib_windows if quantizer(args.method).calibrated else 0


def run(args: argparse.Namespace) -> int:
    plan = args.plan if args.plan else uniform_plan_spec(args.bits, args.group_size, args.sym, args.keep)
    job = make_job("quantize", model=model_spec(args), plan=plan, calib_windows=_calib_windows(args),
                   **spec_values(QuantizeSpec, args, skip=_WRITTEN_HERE))
    code, report = run_job_inline(job, args)
    summary = None
    if report:
        lines = [f"{report['model']['source']}: {report['method']} → {report['quantized_dir']}",
                 f"  {report['avg_code_bits']:.3f} bits/weight in codes, {report['effective_bits']:.3f} with "
                 f"scales and zeros, {report['total_bytes'] / 2**20:.1f} MiB (16-bit: {report['bytes_16bit'] / 2**20:.1f} MiB)"]
        if report.get("mean_rel_error") is not None:
            lines.append(f"  mean relative output error {report['mean_rel_error']:.4g}")
        lines.append(f"  {report['quantize_seconds']:.1f} s quantizing, {report['total_seconds']:.1f} s in all")
        summary = "\n".join(lines)
    return finish(code, report, args, summary)
