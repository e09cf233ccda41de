"""Start a worker process for a run directory and read its events (used by `bitsmith run`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from .events import decode


def python_command(*args: str) -> list[str]:
    """`python -P ARGS`: this interpreter with a safe `sys.path`.

    `-P` keeps the working directory off `sys.path`. Without it, a process started from the
    repository root imports our top-level `kernels/` folder in place of Hugging Face's
    `kernels` package, which transformers (5.25 and later) imports whenever a model loads.
    """
    return [sys.executable, "-P", *args]


def module_command(module: str, *args: str) -> list[str]:
    """`python -P -m MODULE ARGS` (see `python_command`)."""
    return python_command("-m", module, *args)


def _frozen_worker() -> str:
    return str(Path(sys.executable).with_name("bitsmith-worker" + (".exe" if sys.platform == "win32" else "")))


def worker_command(run_dir: str | Path, resume: bool = False, submit_to: str | None = None) -> list[str]:
    """The command line that runs the worker; a frozen app ships a separate worker program.
    `submit_to`: a Ray cluster's Jobs API address: the job runs there, and this command
    (core/submit.py) speaks for it as the worker would."""
    if submit_to:
        return module_command("bitsmith.core.submit", str(Path(run_dir).resolve()), "--address", submit_to) \
            + (["--resume"] if resume else [])
    if getattr(sys, "frozen", False):
        cmd = [_frozen_worker(), str(run_dir)]
    else:
        cmd = module_command("bitsmith.core.worker", str(run_dir))
    return cmd + (["--resume"] if resume else [])


def estimate_command(job_file: str | Path, out: str | Path) -> list[str]:
    """`bitsmith run JOB --dry-run --json --out OUT`: the job's pre-flight estimate as JSON on
    stdout (OUT: where the run would go, for its free disk). A frozen app has no `python -m`:
    its worker program runs the command line after `--cli`."""
    args = ["run", str(job_file), "--dry-run", "--json", "--out", str(out)]
    if getattr(sys, "frozen", False):
        return [_frozen_worker(), "--cli", *args]
    return module_command("bitsmith.core.cli", *args)


class WorkerProcess:
    """A running worker: iterate `events()`, call `cancel()`, read `returncode` at the end."""

    def __init__(self, run_dir: str | Path, resume: bool = False, submit_to: str | None = None) -> None:
        self.proc = subprocess.Popen(worker_command(run_dir, resume, submit_to), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def events(self) -> Iterator[dict]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = decode(line)
            if event is not None:
                yield event
        self.proc.wait()

    def cancel(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "cancel"}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode
