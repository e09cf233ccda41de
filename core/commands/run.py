"""`bitsmith run JOB.json [--out RUN_DIR] [--events] [--submit ADDRESS]` and `bitsmith run RUN_DIR
--resume`: a job through a separate worker process (or a Ray cluster's Jobs API, core/submit.py),
with a progress bar or raw event lines.
`bitsmith run JOB.json --dry-run [--json]`: the job's pre-flight estimate, nothing run (the
window estimates the job it would start this way, from the exact job document)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..cli import dry_run
from ..client import WorkerProcess
from ..errors import BadInput
from ..jobs import load_job_file
from ..rundir import RunDir
from ..terminal import TerminalRenderer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a job file (or resume a run directory) in a worker")
    parser.add_argument("target", help="JOB.json, or a run directory with --resume")
    parser.add_argument("--out", help="run directory to create (default runs/KIND-TIMESTAMP)")
    parser.add_argument("--resume", action="store_true", help="continue the run directory TARGET")
    parser.add_argument("--events", action="store_true", help="print raw event lines instead of a progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    parser.add_argument("--submit", metavar="ADDRESS",
                        help="run it on a Ray cluster through its Jobs API (e.g. http://HEAD:8265); the run "
                        "directory must be on storage every node mounts at the same path")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the job's estimated peak RAM, GPU memory, disk and time, and whether it "
                        "fits (--out: where the run would go, for its free disk); run nothing")
    parser.set_defaults(func=run)


def _prepare(args: argparse.Namespace) -> RunDir:
    target = Path(args.target)
    if args.resume:
        if not (target / "job.json").is_file():
            raise BadInput(f"{target} is not a run directory (no job.json)", "pass the folder a run was written to")
        return RunDir(target)
    if target.is_dir():
        raise BadInput(f"{target} is a folder", "pass a job file, or add --resume to continue a run directory")
    job = load_job_file(target)
    out = args.out or f"runs/{job.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    return RunDir.create(out, job.to_dict())


def run(args: argparse.Namespace) -> int:
    if args.dry_run:
        if args.resume:
            raise BadInput("--dry-run estimates a job file, not a run to resume", "pass JOB.json without --resume")
        return dry_run(load_job_file(args.target), args)
    run_dir = _prepare(args)
    print(f"run directory: {run_dir.path}", file=sys.stderr)
    render = TerminalRenderer()
    worker = WorkerProcess(run_dir.path, resume=args.resume, submit_to=args.submit)
    report = None
    try:
        for event in worker.events():
            if args.events:
                print(json.dumps(event), flush=True)
            else:
                render(event)
            if event["type"] == "result":
                report = event["report"]
    except KeyboardInterrupt:
        worker.cancel()
        worker.wait(timeout=30)
    code = worker.wait()
    if report is not None and not args.events:
        print(json.dumps(report, indent=2) if args.json else
              json.dumps({k: v for k, v in report.items() if not isinstance(v, (list, dict))}, indent=2))
    return code
