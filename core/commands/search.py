"""`bitsmith search MODEL --method evopress|spike|sensitivity|fisher --target-bits 3.0 [--preset cpu|reference]
[--levels 2,3,4,5,6] [--group-size 64] --out RUN [--resume]`.

Every flag but the model's and the output's is a field of SearchSpec (core/search/config.py),
generated with its default and help (core/spec_args.py); the --method choices are the
registered allocators."""

from __future__ import annotations

import argparse

from ..cli import add_model_args, add_output_args, finish, model_spec, run_job_inline
from ..errors import BadInput
from ..jobs import make_job
from ..search.config import SearchSpec
from ..search.registry import allocator_names
from ..spec_args import add_spec_args, spec_values


def _sweep_table(report: dict) -> str:
    """The sweep's Pareto table: one row per target."""
    lines = [f"{report['model']['source']}: {report['method']} sweep ({report['budget_kind']} bits)",
             f"  {'target':>6} {'code':>6} {'eff.':>6} {'MiB':>8} {'KL':>8} {'ppl':>9}  plan"]
    for row in report["sweep"]:
        kl = f"{row['kl']:.4f}" if row["kl"] is not None else "–"
        ppl = f"{row['ppl']:.2f}" if row["ppl"] is not None else "–"
        lines.append(f"  {row['target_bits']:>6g} {row['avg_code_bits']:>6.3f} {row['effective_bits']:>6.3f} "
                     f"{row['mb']:>8.2f} {kl:>8} {ppl:>9}  {row['plan_file']}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help=f"choose per-layer bit-widths ({', '.join(allocator_names())})",
        description="Search a per-layer bit allocation under an average-bits budget and write RUN/plan.json "
        "for `bitsmith quantize --plan`. EvoPress and the sensitivity baseline first build a database of "
        "GPTQ variants of every layer at every level (reusable with --database).")
    add_model_args(parser)
    add_spec_args(parser, SearchSpec)
    add_output_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        raise BadInput("--resume needs --out RUN, the run to continue", "pass the run directory with --out")
    job = make_job("search", model=model_spec(args), **spec_values(SearchSpec, args))
    code, report = run_job_inline(job, args)
    summary = None
    if report and "sweep" in report:
        summary = _sweep_table(report)
    elif report:
        lines = [f"{report['model']['source']}: {report['method']} plan → {report['plan_file']}",
                 f"  {report['avg_code_bits']:.3f} bits/weight in codes, {report['effective_bits']:.3f} with "
                 f"scales and zeros; layers by bits {report['budget']['bits_histogram']}"]
        if "evopress" in report:
            e = report["evopress"]
            lines.append(f"  {e['generations']} generations, KL {e['fitness']:.4f}, {e['forward_tokens']} forward "
                         f"tokens ({e['prefix_saving']:.0%} saved by shared prefixes), {e['search_seconds']:.0f} s")
            if "cluster" in e:
                c = e["cluster"]
                lines.append(f"  scored on {c['actors']} Ray actors ({', '.join(map(str, c['hosts']))}), "
                             f"{len(c['lost_actors'])} lost, {c['rescored_units']} units re-scored")
        if "database" in report:
            lines.append(f"  variant database built in {report['database']['build_seconds']:.0f} s")
        if "spike" in report:
            lines.append(f"  kept: {', '.join(report['spike']['kept']) or 'none'}")
        if "ppl" in report:
            lines.append(f"  perplexity {report['ppl']:.3f} on {report['eval']['data']}")
        if "quantize" in report:
            lines.append(f"  quantized → {report['quantize']['quantized_dir']}")
        summary = "\n".join(lines)
    return finish(code, report, args, summary)
