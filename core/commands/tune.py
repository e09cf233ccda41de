"""`bitsmith tune QUANTIZED --method pv|ste|continuous|eora --steps N --lr LR --calib SRC --out RUN`.

Every flag but the model's and the output's is a field of TuneSpec (core/tune/config.py),
generated with its default and help (core/spec_args.py)."""

from __future__ import annotations

import argparse

from ..cli import add_model_args, add_output_args, finish, model_spec, run_job_inline
from ..jobs import make_job
from ..spec_args import add_spec_args, spec_values
from ..tune.config import TuneSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="PV-Tuning / STE / continuous-only fine-tuning, or EoRA adapters")
    add_model_args(parser)
    add_spec_args(parser, TuneSpec)
    add_output_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    job = make_job("tune", model=model_spec(args), **spec_values(TuneSpec, args))
    code, report = run_job_inline(job, args)
    summary = None
    if report:
        if report["method"] == "eora":
            summary = (f"EoRA rank {report['rank']}: held-out perplexity {report['without']['ppl']:.3f} → "
                       f"{report['with']['ppl']:.3f}, KL {report['without']['kl']:.4f} → {report['with']['kl']:.4f}; "
                       f"checkpoint in {report['quantized']}")
        else:
            summary = (f"{report['method']} {report['steps']} steps: held-out perplexity {report['before']['ppl']:.3f} → "
                       f"{report['best']['ppl']:.3f} (best at step {report['best_step']}), KL "
                       f"{report['before']['kl']:.4f} → {report['best']['kl']:.4f}; checkpoint in {report['quantized']}")
    return finish(code, report, args, summary)
