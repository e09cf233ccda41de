"""`bitsmith quantize MODEL --method METHOD --bits B [--plan PLAN.json] [--group-size G] [--sym]
[--act-order] [--keep REGEX]... --calib SRC --calib-windows N --seqlen L --out RUN_DIR`."""

from __future__ import annotations

import argparse

from ..cli import add_model_args, add_output_args, finish, model_spec, run_job_inline
from ..jobs import make_job
from ..serve import SERVE_TARGETS, serve_help
from ..quant.config import DEFAULT_CALIB, QuantizeSpec
from ..plan import uniform_plan_spec
from ..quant.registry import quantizer, quantizer_names, quantizers

_D = QuantizeSpec()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quantize", help=f"quantize a model per a bit plan ({', '.join(quantizer_names())})",
                                   description="Quantize every linear layer of the decoder blocks. Without "
                                   "--plan, every layer gets --bits/--group-size/--sym, except layers matching "
                                   "a --keep pattern, which stay at 16-bit.")
    add_model_args(parser)
    parser.add_argument("--method", choices=quantizer_names(), default=_D.method,
                        help="; ".join(f"{q.name}: {q.description}" for q in quantizers().values()))
    parser.add_argument("--bits", type=int, default=4, help="bits per weight, 2–8 (default 4)")
    parser.add_argument("--group-size", type=int, default=64,
                        help="input columns per scale/zero (default 64; a size that does not divide a "
                        "layer's width falls back to its largest divisor below)")
    parser.add_argument("--sym", action="store_true", help="symmetric grid (default asymmetric)")
    parser.add_argument("--keep", action="append", default=[], metavar="REGEX",
                        help="keep layers whose name matches REGEX at 16-bit (repeatable)")
    parser.add_argument("--plan", help="plan.json (rules or per-layer entries); replaces --bits/--group-size/--sym/--keep")
    parser.add_argument("--serve", choices=list(SERVE_TARGETS), default=_D.serve,
                        help=serve_help())
    parser.add_argument("--calib", default=DEFAULT_CALIB,
                        help=f"calibration text: builtin | selfgen | file:PATH | hf:NAME; 'a+b' mixes (default {DEFAULT_CALIB})")
    parser.add_argument("--calib-windows", type=int, default=None,
                        help=f"calibration windows (default {_D.calib_windows}; 0 for a method that needs no data, "
                        "such as rtn, which then reports weight-space errors)")
    parser.add_argument("--seqlen", type=int, default=_D.seqlen)
    parser.add_argument("--seed", type=int, default=_D.seed)
    parser.add_argument("--damp", type=float, default=_D.damp, help=f"GPTQ dampening (default {_D.damp})")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--act-order", dest="act_order", action="store_true", default=_D.act_order,
                       help="GPTQ columns by descending Hessian diagonal, static groups" +
                       (" (default)" if _D.act_order else ""))
    order.add_argument("--no-act-order", dest="act_order", action="store_false")
    clip = parser.add_mutually_exclusive_group()
    clip.add_argument("--clip", dest="clip", action="store_true", default=_D.clip,
                      help="search each group's range (shrink down to 0.8, weighted by the Hessian "
                           f"diagonal; default: {_clip_defaults()})")
    clip.add_argument("--no-clip", dest="clip", action="store_false")
    parser.add_argument("--batch-size", type=int, default=_D.batch_size,
                        help=f"calibration windows per forward pass (default {_D.batch_size})")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores; on a busy machine 1 "
                        "runs GPTQ several times faster, with slightly different numbers)")
    add_output_args(parser)
    parser.set_defaults(func=run)


def _clip_defaults() -> str:
    return ", ".join(f"{q.clip} for {q.name}" for q in quantizers().values())


def _calib_windows(args: argparse.Namespace) -> int:
    if args.calib_windows is not None:
        return args.calib_windows
    return _D.calib_windows if quantizer(args.method).calibrated else 0


def run(args: argparse.Namespace) -> int:
    plan = args.plan if args.plan else uniform_plan_spec(args.bits, args.group_size, args.sym, args.keep)
    job = make_job("quantize", model=model_spec(args), method=args.method, plan=plan, calib=args.calib,
                   calib_windows=_calib_windows(args), seqlen=args.seqlen, seed=args.seed, damp=args.damp,
                   act_order=args.act_order, clip=args.clip, serve=args.serve,
                   batch_size=args.batch_size, threads=args.threads)
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
