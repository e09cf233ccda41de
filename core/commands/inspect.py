"""`bitsmith inspect MODEL [--json]`: the model's linear layers."""

from __future__ import annotations

import argparse

from ..cli import add_model_args, finish, model_spec, run_job_inline
from ..jobs import make_job


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="list a model's linear layers")
    add_model_args(parser)
    parser.add_argument("--json", action="store_true", help="print the full inventory as JSON")
    parser.set_defaults(func=run)


def _table(report: dict) -> str:
    model, summary = report["model"], report["summary"]
    lines = [f"{model['architecture']} ({model['parameters'] / 1e6:.1f}M parameters) from {model['location']}",
             f"{summary['layers']} linear layers in {summary['blocks']} blocks, "
             f"{summary['params'] / 1e6:.1f}M weights, {summary['bytes_16bit'] / 2**20:.1f} MiB at 16-bit", ""]
    lines += [f"{'layer':<48} {'role':<10} {'shape':>12}"]
    lines += [f"{l['name']:<48} {l['role']:<10} {l['d_out']:>5}x{l['d_in']:<6}" for l in report["layers"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    code, report = run_job_inline(make_job("inspect", model=model_spec(args)), args)
    return finish(code, report, args, summary=_table(report) if report else None)
