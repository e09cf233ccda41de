"""`bitsmith search MODEL --method evopress|spike|sensitivity --target-bits 3.0 [--preset cpu|reference]
[--levels 2,3,4,5,6] [--group-size 64] --out RUN [--resume]`."""

from __future__ import annotations

import argparse

from ..cli import add_model_args, add_output_args, finish, model_spec, run_job_inline
from ..errors import BadInput
from ..jobs import make_job
from ..serve import SERVE_TARGETS, serve_help
from ..jobkinds.search import SearchSpec

_D = SearchSpec()


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


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="choose per-layer bit-widths (EvoPress, spike-aware, sensitivity)",
        description="Search a per-layer bit allocation under an average-bits budget and write RUN/plan.json "
        "for `bitsmith quantize --plan`. EvoPress and the sensitivity baseline first build a database of "
        "GPTQ variants of every layer at every level (reusable with --database).")
    add_model_args(parser)
    parser.add_argument("--method", choices=["evopress", "spike", "sensitivity", "fisher"], default=_D.method,
                        help="evopress (default); spike: keep activation-spike layers; sensitivity: knapsack of "
                        "Hessian-weighted errors; fisher: knapsack of gradient-weighted output errors (fast)")
    parser.add_argument("--target-bits", type=float, default=_D.target_bits,
                        help="average bits per weight over the searched layers (default 3.0), as --budget counts")
    parser.add_argument("--targets", type=_floats,
                        help="a budget sweep, e.g. 2.5,3,3.5,4: one plan per target (RUN/sweep/), one database")
    parser.add_argument("--budget", choices=["effective", "code"], default=_D.budget,
                        help="effective (default): codes plus scales and zero points (4-bit g64 = 4.5); "
                        "code: the codes alone (4-bit = 4.0)")
    parser.add_argument("--preset", choices=["cpu", "reference"], default=_D.preset,
                        help="cpu: under 15 minutes on a small model on 2 cores; reference: EvoPress's defaults")
    parser.add_argument("--levels", type=_ints, default=_D.levels, help="bit-widths to choose from (default 2,3,4,5,6)")
    parser.add_argument("--group-size", type=int, default=_D.group_size)
    parser.add_argument("--sym", action="store_true", help="symmetric grid (default asymmetric)")
    parser.add_argument("--calib", default=_D.calib, help=f"calibration text (default {_D.calib})")
    parser.add_argument("--windows", type=int, help="calibration windows for Hessians / spike scores")
    parser.add_argument("--seqlen", type=int, default=_D.seqlen)
    parser.add_argument("--seed", type=int, default=_D.seed)
    parser.add_argument("--serve", choices=list(SERVE_TARGETS), default=_D.serve,
                        help=serve_help())
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on a busy machine, else all)")
    parser.add_argument("--cluster", help="build the variant database and score EvoPress candidates on Ray (pip install "
                        "'bitsmith[cluster]'): "
                        "local:N (N actors on this machine), ray://HOST:PORT (a running cluster), or auto "
                        "(RAY_ADDRESS or `ray start`); the run directory must be on storage every node mounts")
    parser.add_argument("--cluster-actors", type=int,
                        help="actors on a ray:// or auto cluster (default: one per GPU, else one per node)")
    evo = parser.add_argument_group("EvoPress (defaults from the preset)")
    evo.add_argument("--generations", type=int)
    evo.add_argument("--offspring", type=int)
    evo.add_argument("--survivors", type=_ints, help="per stage, e.g. 16,4,1")
    evo.add_argument("--tokens", type=_ints, help="tokens per stage, e.g. 2048,16384,131072")
    evo.add_argument("--kl-topk", type=int, help="top-k sparse KL (0: full KL)")
    evo.add_argument("--mutation", choices=["within", "exchange"],
                     help="within: budget-neutral flips inside equal-size groups (the reference); exchange: also "
                     "between sizes that divide, e.g. one q_proj level against three k/v levels")
    evo.add_argument("--eval-every", type=int, help="perplexity every k generations (0: never)")
    evo.add_argument("--eval-data", default=_D.eval_data)
    evo.add_argument("--eval-windows", type=int)
    evo.add_argument("--no-final-eval", action="store_true", help="skip the perplexity of the chosen plan")
    parser.add_argument("--database", help="reuse the variant database of another search run (its folder)")
    parser.add_argument("--database-inputs", choices=["dense", "propagated"], default=_D.database_inputs,
                        help="dense: every variant from the dense model's Hessians (the reference); propagated: "
                        "from inputs through the model quantized at the target, as `quantize` makes them")
    spike = parser.add_argument_group("spike-aware")
    spike.add_argument("--spike-threshold", type=float, default=_D.spike_threshold)
    spike.add_argument("--spike-top-k", type=int)
    spike.add_argument("--keep-bits", type=int, choices=[16, 8], default=_D.spike_keep_bits)
    parser.add_argument("--then-quantize", action="store_true", help="quantize per the plan into RUN/quantized")
    add_output_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        raise BadInput("--resume needs --out RUN, the run to continue", "pass the run directory with --out")
    job = make_job("search", model=model_spec(args), method=args.method, target_bits=args.target_bits,
                   levels=args.levels, group_size=args.group_size, sym=args.sym, preset=args.preset,
                   calib=args.calib, windows=args.windows, seqlen=args.seqlen, seed=args.seed,
                   generations=args.generations, offspring=args.offspring, survivors=args.survivors,
                   tokens=args.tokens, kl_topk=args.kl_topk, mutation=args.mutation, eval_every=args.eval_every,
                   eval_data=args.eval_data,
                   eval_windows=args.eval_windows, final_eval=not args.no_final_eval, database=args.database,
                   database_inputs=args.database_inputs,
                   spike_threshold=args.spike_threshold, spike_top_k=args.spike_top_k,
                   spike_keep_bits=args.keep_bits, then_quantize=args.then_quantize, threads=args.threads,
                   serve=args.serve, budget=args.budget, targets=args.targets, cluster=args.cluster,
                   cluster_actors=args.cluster_actors)
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
