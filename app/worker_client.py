"""The worker client: one QProcess running `bitsmith.core.worker RUN_DIR`, its event lines
turned into Qt signals.

The worker prints one JSON event per line on stdout (core/events.py); this class decodes
them as they arrive (never blocking the event loop), sends `{"cmd":"cancel"}` on stdin,
kills a worker that does not stop in time, and tells a crash (exit without a `result` or
`error` event) from an ordinary end. The run directory stays on disk either way; a
crashed or cancelled run resumes by starting the worker again with `--resume`.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QTimer, Signal

from bitsmith.core.client import worker_command
from bitsmith.core.events import decode
from bitsmith.core.jobs import make_job
from bitsmith.core.rundir import RunDir

from .paths import new_run_path

CANCEL_GRACE_MS = 120_000  # a worker that has not stopped this long after `cancel` is killed
# (counted from the worker's first event: before it, the worker is still importing torch and
# has not started listening, which can take longer than the grace on a busy machine)


def create_run(kind: str, **fields) -> RunDir:
    """Validate a job (same checks as the CLI) and freeze it in a fresh run directory."""
    job = make_job(kind, **fields)
    model = job.to_dict().get("model")
    source = model.get("source", kind) if isinstance(model, dict) else kind
    return RunDir.create(new_run_path(kind, str(source)), job.to_dict())


class WorkerClient(QObject):
    """Runs one job at a time. Connect to the signals, then `start(run_dir)`."""

    event = Signal(dict)                 # every event, as decoded
    stage = Signal(str, str)             # stage, state
    progress = Signal(str, int, int, object)   # stage, done, total, eta_s (float | None)
    layer = Signal(dict)
    metric = Signal(dict)
    plan = Signal(dict)                  # {layer name: bits}
    error = Signal(str, str, str)        # kind, message, hint
    result = Signal(dict)                # the report
    log = Signal(str)
    warning = Signal(dict)               # a `log` event with level "warning" (e.g. tuning diverging)
    crashed = Signal(str)                # a message for the user: what happened, how to resume
    finished = Signal(str, int)          # outcome (done | failed | cancelled | crashed), exit code

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.run_dir: RunDir | None = None
        self._proc: QProcess | None = None
        self._buffer = b""
        self._ended_with: str | None = None     # "result" or the error kind
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._kill_timer = QTimer(self, singleShot=True, timeout=self._kill_after_grace)
        self._seen_event = False
        self._cancel_grace_ms: int | None = None     # set by cancel() before the first event
        self.cancel_requested = False                # a kill after Cancel ends as "cancelled"

    # --- control ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.state() != QProcess.ProcessState.NotRunning

    def start(self, run_dir: RunDir | str | Path, resume: bool = False, submit_to: str | None = None) -> None:
        """Start the worker for `run_dir`; `submit_to`: a Ray cluster's Jobs API address, where
        the job runs instead (core/submit.py speaks for it, with the same events)."""
        if self.running:
            raise RuntimeError("a job is already running")
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self._buffer, self._ended_with = b"", None
        self._seen_event, self._cancel_grace_ms = False, None
        self.cancel_requested = False
        self._stderr_tail.clear()
        proc = QProcess(self)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_process_error)
        cmd = worker_command(self.run_dir.path, resume=resume, submit_to=submit_to)
        self._proc = proc
        proc.start(cmd[0], cmd[1:])

    def cancel(self, grace_ms: int = CANCEL_GRACE_MS) -> None:
        """Ask the worker to stop between steps; kill it if it has not after `grace_ms`."""
        if not self.running:
            return
        self.cancel_requested = True
        self._proc.write((json.dumps({"cmd": "cancel"}) + "\n").encode())
        if self._seen_event:
            self._kill_timer.start(grace_ms)
        else:
            self._cancel_grace_ms = grace_ms

    def kill(self) -> None:
        """Stop the worker at once (SIGKILL): the run is left as a crash would leave it."""
        if self.running:
            self._proc.kill()

    def wait_finished(self, ms: int) -> bool:
        """Block up to `ms` for the process to end (only for shutting down)."""
        return self._proc.waitForFinished(ms) if self.running else True

    # --- reading events -----------------------------------------------------------------

    def _read_stdout(self) -> None:
        self._buffer += bytes(self._proc.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._dispatch(line)

    def _read_stderr(self) -> None:
        text = bytes(self._proc.readAllStandardError()).decode("utf-8", "replace")
        self._stderr_tail.extend(l for l in text.splitlines() if l.strip())

    def _dispatch(self, line: bytes) -> None:
        event = decode(line.decode("utf-8", "replace"))
        if event is None:
            return
        if not self._seen_event:
            self._seen_event = True
            if self._cancel_grace_ms is not None:
                self._kill_timer.start(self._cancel_grace_ms)
        self.event.emit(event)
        kind = event["type"]
        if kind == "stage":
            self.stage.emit(event.get("stage", ""), event.get("state", ""))
        elif kind == "progress":
            self.progress.emit(event.get("stage", ""), int(event.get("done", 0)),
                               int(event.get("total", 0)), event.get("eta_s"))
        elif kind == "layer":
            self.layer.emit(event)
        elif kind == "metric":
            self.metric.emit(event)
        elif kind == "plan":
            self.plan.emit(dict(event.get("layers", {})))
        elif kind == "error":
            self._ended_with = event.get("kind", "failure")
            self.error.emit(self._ended_with, event.get("message", ""), event.get("hint", ""))
        elif kind == "result":
            self._ended_with = "result"
            self.result.emit(event.get("report", {}))
        elif kind == "log":
            self.log.emit(event.get("message", ""))
            if event.get("level") == "warning":
                self.warning.emit(event)

    # --- the end --------------------------------------------------------------------------

    def _kill_after_grace(self) -> None:
        if self.running:
            self.log.emit("the worker did not stop in time after cancel; killing it")
            self._proc.kill()

    def _on_process_error(self, err: QProcess.ProcessError) -> None:
        if err == QProcess.ProcessError.FailedToStart:
            self._ended_with = "failure"
            self.error.emit("failure", f"could not start the worker: {self._proc.errorString()}",
                            "check that Bitsmith is installed (python -m bitsmith.core.worker)")
            self.finished.emit("failed", -1)

    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._kill_timer.stop()
        self._read_stdout()
        if self._buffer.strip():
            self._dispatch(self._buffer)
            self._buffer = b""
        self._read_stderr()
        if self._ended_with == "result":
            outcome = "done"
        elif self._ended_with == "cancelled":
            outcome = "cancelled"
        elif self._ended_with is not None:
            outcome = "failed"
        elif self.cancel_requested:
            # killed after Cancel (the grace ran out, or "Kill now"): what the user asked for
            outcome = "cancelled"
            self.error.emit("cancelled", "stopped after Cancel: the worker was killed before its next check",
                            f"the run is kept in {self.run_dir.path}; press Resume to go on from its last "
                            "saved step")
        else:
            outcome = "crashed"
            how = ("was killed" if status == QProcess.ExitStatus.CrashExit
                   else f"exited with code {code}")
            last = self._stderr_tail[-1] if self._stderr_tail else ""
            message = (f"The worker {how} before finishing. The run is kept in "
                       f"{self.run_dir.path} and can be resumed." + (f"\nLast log line: {last}" if last else ""))
            self.crashed.emit(message)
        self.finished.emit(outcome, code if status == QProcess.ExitStatus.NormalExit else -1)
