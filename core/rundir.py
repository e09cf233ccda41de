"""The run directory: the unit of history (DESIGN.md, "One job, one run directory").

    RUN_DIR/job.json        the frozen spec
    RUN_DIR/state.json      running | done | failed | cancelled, with the worker's pid and host
    RUN_DIR/events.jsonl    every event, appended as it happens
    RUN_DIR/plan.json       the resolved per-layer plan
    RUN_DIR/checkpoint/     state to resume a search or tuning run
    RUN_DIR/quantized/      the native quantized checkpoint
    RUN_DIR/export/         exported formats
    RUN_DIR/report.json     final metrics
    RUN_DIR/worker.log      the worker's log
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .errors import BadInput


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path).resolve())

    # Paths, named for what they hold.
    job_file = property(lambda self: self.path / "job.json")
    state_file = property(lambda self: self.path / "state.json")
    events_file = property(lambda self: self.path / "events.jsonl")
    plan_file = property(lambda self: self.path / "plan.json")
    report_file = property(lambda self: self.path / "report.json")
    log_file = property(lambda self: self.path / "worker.log")
    checkpoint_dir = property(lambda self: self.path / "checkpoint")
    quantized_dir = property(lambda self: self.path / "quantized")
    export_dir = property(lambda self: self.path / "export")

    @classmethod
    def create(cls, path: str | os.PathLike, job_doc: dict, *, exist_ok: bool = False) -> "RunDir":
        """Make the folder and freeze the job. An existing run is only reused for the same job."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise BadInput(f"{run.path} exists and is not a folder", "choose another --out path")
        if run.job_file.exists():
            old = json.loads(run.job_file.read_text())
            if old != job_doc:
                raise BadInput(f"{run.path} already holds a different job",
                               "choose a new --out folder, or resume that run with `bitsmith run RUN_DIR --resume`")
            if not exist_ok:
                raise BadInput(f"{run.path} already holds this job",
                               "resume it with `bitsmith run RUN_DIR --resume`, or choose a new --out folder")
        elif run.path.exists() and any(run.path.iterdir()):
            raise BadInput(f"{run.path} is not empty and holds no job", "choose an empty or new --out folder")
        run.path.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run.job_file, job_doc)
        return run

    def read_job_doc(self) -> dict:
        if not self.job_file.exists():
            raise BadInput(f"{self.path} holds no job.json", "pass a run directory made by bitsmith")
        try:
            return json.loads(self.job_file.read_text())
        except json.JSONDecodeError as err:
            raise BadInput(f"{self.job_file} is not valid JSON ({err.msg})", "fix or recreate the run") from None

    def write_state(self, state: str, **fields) -> None:
        atomic.write_json(self.state_file, {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
                                            "t": time.time(), **fields})

    def read_state(self) -> dict:
        """The recorded state; a `running` run whose worker is gone reads as `interrupted` (a
        worker on another host, e.g. a Ray cluster's node, cannot be looked up from here)."""
        if not self.state_file.exists():
            return {"state": "new" if self.job_file.exists() else "missing"}
        state = json.loads(self.state_file.read_text())
        here = state.get("host", socket.gethostname()) == socket.gethostname()
        if state.get("state") == "running" and here and not _pid_alive(int(state.get("pid", -1))):
            state["state"] = "interrupted"
        return state

    def read_report(self) -> dict | None:
        if not self.report_file.exists():
            return None
        return json.loads(self.report_file.read_text())

    def write_report(self, report: dict) -> None:
        atomic.write_json(self.report_file, report)
