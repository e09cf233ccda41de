"""`bitsmith tune QUANTIZED --method pv|ste|continuous|eora --steps N --lr LR --calib SRC --out RUN`."""

from __future__ import annotations

import argparse

from ..cli import add_model_args, add_output_args, finish, model_spec, run_job_inline
from ..jobs import make_job
from ..tune.config import TuneSpec

_DEFAULTS = TuneSpec()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="PV-Tuning / STE / continuous-only fine-tuning, or EoRA adapters")
    add_model_args(parser)
    parser.add_argument("--method", default="pv", choices=["pv", "ste", "continuous", "eora"])
    parser.add_argument("--teacher", help="the dense model (default: the checkpoint's base model)")
    parser.add_argument("--steps", type=int, default=_DEFAULTS.steps)
    parser.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="Adam lr of scales, zero points, norms")
    parser.add_argument("--code-lr", type=float, default=_DEFAULTS.code_lr, help="Adam lr of the straight-through buffers")
    parser.add_argument("--code-beta1", type=float, default=_DEFAULTS.code_beta1,
                        help="Adam beta1 of the straight-through buffers (reference 0)")
    parser.add_argument("--code-precondition", action=argparse.BooleanOptionalAction, default=_DEFAULTS.code_precondition,
                        help="scale each input column's V step by E[x_j^2]^(-1/2)")
    parser.add_argument("--code-lr-in-grid-steps", action=argparse.BooleanOptionalAction,
                        default=_DEFAULTS.code_lr_in_grid_steps,
                        help="--code-lr in units of each group's scale (grid steps per step)")
    parser.add_argument("--check-codes", action=argparse.BooleanOptionalAction, default=_DEFAULTS.check_codes,
                        help="keep a V step only if it lowers the loss of the next step's windows")
    parser.add_argument("--check-z", type=float, default=_DEFAULTS.check_z,
                        help="with --check-codes: the decrease must exceed this many standard errors")
    parser.add_argument("--tau", type=float, default=_DEFAULTS.tau, help="fraction of weights re-rounded per step (pv)")
    parser.add_argument("--delta-decay", type=float, default=_DEFAULTS.delta_decay)
    parser.add_argument("--rank", type=int, default=_DEFAULTS.rank, help="EoRA adapter rank")
    parser.add_argument("--calib", default=_DEFAULTS.calib,
                        help=f"calibration text source (default {_DEFAULTS.calib}: sampled from the dense model)")
    parser.add_argument("--windows", type=int, default=_DEFAULTS.windows, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=_DEFAULTS.seqlen)
    parser.add_argument("--batch", type=int, default=_DEFAULTS.batch, help="windows per step")
    parser.add_argument("--micro-batch", type=int, help="windows per forward/backward (default: --batch)")
    parser.add_argument("--eval-every", type=int, default=_DEFAULTS.eval_every)
    parser.add_argument("--eval-data", default=_DEFAULTS.eval_data)
    parser.add_argument("--eval-windows", type=int, default=_DEFAULTS.eval_windows)
    parser.add_argument("--checkpoint-every", type=int, default=_DEFAULTS.checkpoint_every)
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--teacher-topk", type=int, default=_DEFAULTS.teacher_topk,
                        help="teacher targets kept per token (0 = the full distribution)")
    parser.add_argument("--train-embeddings", action="store_true")
    parser.add_argument("--train-head", action="store_true")
    parser.add_argument("--no-train-zeros", action="store_true")
    add_output_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    job = make_job("tune", model=model_spec(args), teacher=args.teacher, method=args.method, steps=args.steps,
                   lr=args.lr, code_lr=args.code_lr, code_beta1=args.code_beta1,
                   code_precondition=args.code_precondition, code_lr_in_grid_steps=args.code_lr_in_grid_steps,
                   check_codes=args.check_codes, check_z=args.check_z, tau=args.tau, delta_decay=args.delta_decay,
                   rank=args.rank,
                   calib=args.calib, windows=args.windows, seqlen=args.seqlen, batch=args.batch,
                   micro_batch=args.micro_batch, eval_every=args.eval_every, eval_data=args.eval_data,
                   eval_windows=args.eval_windows, checkpoint_every=args.checkpoint_every, seed=args.seed,
                   teacher_topk=args.teacher_topk or None, train_embeddings=args.train_embeddings,
                   train_head=args.train_head, train_zeros=not args.no_train_zeros)
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
