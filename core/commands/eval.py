"""`bitsmith eval MODEL --data SRC --seqlen 512 --windows 16 [--json]`."""

from __future__ import annotations

import argparse

from ..cli import add_model_args, add_output_args, finish, model_spec, run_job_inline
from ..jobs import make_job


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="perplexity (and KL to a reference) on a text source")
    add_model_args(parser)
    parser.add_argument("--data", default="builtin-eval",
                        help="builtin-eval | builtin | file:PATH | hf:NAME[:CONFIG[:SPLIT]] (default builtin-eval)")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=16, help="first N windows (0 = all)")
    parser.add_argument("--reference", help="a model to compare with: also report KL(reference ‖ model)")
    parser.add_argument("--prompt", help="also generate a continuation of this prompt")
    add_output_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    job = make_job("eval", model=model_spec(args), data=args.data, seqlen=args.seqlen,
                   windows=args.windows or None, reference=args.reference, prompt=args.prompt)
    code, report = run_job_inline(job, args)
    summary = None
    if report:
        summary = (f"{report['model']['source']}: perplexity {report['ppl']:.3f} on {report['data']} "
                   f"({report['windows']} x {report['seqlen']} tokens)")
        if "kl" in report:
            summary += f", KL to {args.reference} {report['kl']:.4f}"
        if "sample" in report:
            summary += f"\n{report['sample']['prompt']} → {report['sample']['text']}"
    return finish(code, report, args, summary)
