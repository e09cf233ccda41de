"""The `bitsmith` command. Subcommands live in `core/commands/`, one module each, found
at start-up: a module defines `register(subparsers)` and sets `func` on its parser.

Every subcommand that does work builds a job and runs it with the same code path as the
worker (`runner.execute`) in a run directory (`--out`, or a temporary one). Errors are one
line on stderr and a non-zero exit (2 bad input, 3 cancelled, 1 failure), no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import pkgutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import BitsmithError
from .events import Emitter, stream_sink
from .jobs import Job, ModelSpec
from .rundir import RunDir
from .terminal import TerminalRenderer


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="default | HF folder | .gguf file | hub id | quantized checkpoint")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model's own Python code to run (only for authors you trust)")
    parser.add_argument("--offload", default="auto", choices=["auto", "ram", "disk"],
                        help="where the weights wait while one block at a time is worked on: CPU RAM in "
                        "their stored dtype, or (disk) their safetensors files (default auto: ram)")
    parser.add_argument("--max-memory", type=float, metavar="GB",
                        help="RAM the job may use; a job estimated to need more is refused before it starts "
                        "(default: what the machine has free)")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(source=args.model, device=args.device, dtype=args.dtype,
                     trust_remote_code=args.trust_remote_code, offload=getattr(args, "offload", "auto"),
                     max_memory_gb=getattr(args, "max_memory", None))


def add_output_args(parser: argparse.ArgumentParser, out_required: bool = False) -> None:
    parser.add_argument("--out", required=out_required, help="run directory to create")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--events", action="store_true", help="print raw event lines on stdout")
    parser.add_argument("--resume", action="store_true", help="continue the run already in --out")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the job's estimated peak RAM, GPU memory, disk and time (a probe of one "
                        "block on this machine), and whether it fits; run nothing")


def dry_run(job: Job, args: argparse.Namespace) -> int:
    """`--dry-run`: the pre-flight estimate, as a summary or JSON; exit 2 when it does not fit."""
    from .estimate import estimate_job

    est = estimate_job(job, probe=True, run_dir=Path(args.out) if getattr(args, "out", None) else None)
    if getattr(args, "json", False):
        print(json.dumps(est.to_dict(), indent=2))
    else:
        print(est.summary())
        for name, phase in est.phases.items():
            secs = f", {phase['seconds']:.0f} s" if "seconds" in phase else ""
            gpu = f", GPU {phase['gpu'] / 2**30:.2f} GB" if phase.get("gpu") else ""
            print(f"  {name:10s} RAM {phase['ram'] / 2**30:.2f} GB{gpu}{secs}")
    return 0 if est.fits else 2


def run_job_inline(job: Job, args: argparse.Namespace) -> tuple[int, dict | None]:
    """Run `job` in this process in `args.out` (or a temporary run directory)."""
    from .runner import execute

    if getattr(args, "dry_run", False):
        return dry_run(job, args), None
    sinks = [stream_sink(sys.stdout)] if getattr(args, "events", False) else [TerminalRenderer()]
    out = getattr(args, "out", None)
    resume = bool(getattr(args, "resume", False))
    if out is None:
        with tempfile.TemporaryDirectory(prefix="bitsmith-") as tmp:
            run = RunDir.create(Path(tmp) / "run", job.to_dict())
            code = execute(run, Emitter(sinks))
            return code, run.read_report()
    run = RunDir.create(out, job.to_dict(), exist_ok=resume)
    code = execute(run, Emitter(sinks), resume=resume)
    return code, run.read_report()


def finish(code: int, report: dict | None, args: argparse.Namespace, summary: str | None = None) -> int:
    """Print the outcome the way the user asked for it; return the exit code."""
    if code == 0 and report is not None and not getattr(args, "events", False):
        if getattr(args, "json", False):
            print(json.dumps(report, indent=2))
        elif summary:
            print(summary)
        else:
            print(json.dumps({k: v for k, v in report.items() if not isinstance(v, (list, dict))}, indent=2))
    return code


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    parser = argparse.ArgumentParser(prog="bitsmith", description="Compress language models: plan bits, "
                                     "quantize (GPTQ), search, tune, evaluate, export.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{mod.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return int(args.func(args) or 0)
    except BitsmithError as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 3


def entry() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    entry()
