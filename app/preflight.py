"""The pre-flight estimate of a job, computed outside the window.

The estimate needs torch (a probe times one block of the model), and the window process
never imports torch, so a separate process runs `bitsmith run JOB --dry-run --json` on the
exact job document the Run button would start, and this module reads its JSON
(core/estimate.py's `Estimate.to_dict()`). One estimate runs at a time: a new request
kills the one still running, whose answer would describe settings that are gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QTemporaryDir, Signal

from bitsmith.core.client import estimate_command
from bitsmith.core.runner import EXIT_BAD_INPUT     # the CLI's exit code for a job it refuses as given

GB = 2**30


@dataclass(frozen=True)
class Preflight:
    """What a job will need, as the engine estimated it (bytes and seconds)."""

    kind: str
    peak_ram: int
    peak_gpu: int
    disk: int
    seconds: float | None           # None: no timing probe
    device: str                     # cpu | cuda: where the blocks are computed
    fits: bool
    refusal: str | None             # what does not fit, and the setting that would
    ram_available: int | None
    gpu_free: int | None
    workload: dict                  # the settings that move memory and time, as the engine read the job

    @classmethod
    def from_doc(cls, doc: dict) -> "Preflight":
        limits = doc.get("limits") or {}
        return cls(kind=doc["job"], peak_ram=int(doc["peak_ram"]), peak_gpu=int(doc["peak_gpu"]),
                   disk=int(doc["disk"]), seconds=doc.get("seconds"),
                   device=(doc.get("workload") or {}).get("device", "cpu"), fits=bool(doc["fits"]),
                   refusal=doc.get("refusal"), ram_available=limits.get("ram"), gpu_free=limits.get("gpu"),
                   workload=dict(doc.get("workload") or {}))


@dataclass(frozen=True)
class NoEstimate:
    """Why there is no estimate. `bad_input`: the job cannot be estimated as it stands (a kind
    with no estimate yet, a missing data file), as opposed to the estimate itself failing."""

    reason: str
    bad_input: bool = False


def size_text(n: int) -> str:
    """Bytes as GB, or MB below one GB (a small model's disk would read "0.00 GB")."""
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**20:.2f} MB"


def duration_text(seconds: float) -> str:
    """Seconds as a person reads a wait: "40 s", "3.5 min", "2.1 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def failure(stdout: str, stderr: str, code: int) -> NoEstimate:
    """Why an estimate gave no JSON: the CLI's one-line `error: …`, else its last line."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    if errors:
        return NoEstimate(errors[-1].removeprefix("error:").strip(), bad_input=code == EXIT_BAD_INPUT)
    last = lines[-1] if lines else stdout.strip()[-200:]
    return NoEstimate(f"the estimate exited with code {code}" + (f": {last}" if last else ""))


def parse_output(stdout: str, stderr: str, code: int) -> Preflight | NoEstimate:
    """The estimate, or why there is none. Exit 0 is "fits", 2 with JSON "does not fit"."""
    try:
        return Preflight.from_doc(json.loads(stdout))
    except (json.JSONDecodeError, KeyError, TypeError):
        return failure(stdout, stderr, code)


class PreflightProcess(QObject):
    """Runs one estimate at a time; `start` replaces (kills) the one running."""

    answered = Signal(object)       # Preflight, or NoEstimate

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._proc: QProcess | None = None
        self._files = QTemporaryDir()   # job documents; removed with this object
        self._count = 0
        self.started = 0                # processes started (tests count them)

    @property
    def running(self) -> bool:
        return self._proc is not None

    def start(self, job_doc: dict, out: Path) -> None:
        self.stop()
        self._count += 1
        job_file = Path(self._files.path()) / f"job-{self._count}.json"   # a killed process may still read its own
        job_file.write_text(json.dumps(job_doc))
        proc = QProcess(self)
        proc.finished.connect(lambda code, status, p=proc: self._finished(p, code, status))
        proc.errorOccurred.connect(lambda err, p=proc: self._failed_to_start(p, err))
        cmd = estimate_command(job_file, out)
        self._proc = proc
        self.started += 1
        proc.start(cmd[0], cmd[1:])
        proc.closeWriteChannel()

    def stop(self) -> None:
        """Kill the running estimate; its answer is dropped when it ends."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()

    def _finished(self, proc: QProcess, code: int, status: QProcess.ExitStatus) -> None:
        proc.deleteLater()
        if proc is not self._proc:
            return                      # replaced or stopped: its settings are gone
        self._proc = None
        stdout = bytes(proc.readAllStandardOutput()).decode("utf-8", "replace")
        stderr = bytes(proc.readAllStandardError()).decode("utf-8", "replace")
        if status == QProcess.ExitStatus.CrashExit:
            tail = stderr.strip()[-200:]
            self.answered.emit(NoEstimate("the estimate process was killed" + (f": {tail}" if tail else "")))
            return
        self.answered.emit(parse_output(stdout, stderr, code))

    def _failed_to_start(self, proc: QProcess, err: QProcess.ProcessError) -> None:
        if err == QProcess.ProcessError.FailedToStart and proc is self._proc:
            self._proc = None
            proc.deleteLater()
            self.answered.emit(NoEstimate(f"could not start the estimate: {proc.errorString()}"))
