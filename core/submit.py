"""`python -m bitsmith.core.submit RUN_DIR --address http://HEAD:8265 [--resume]`: run a job on a
Ray cluster through Ray's Jobs API, and behave like the worker doing it here.

The job's entrypoint is the worker itself (`python -P -m bitsmith.core.worker RUN_DIR`) on a
cluster node. Its stdout and stderr reach us as the job's log stream (`tail_job_logs`); the
event lines in it are printed on our stdout as they arrive and the rest goes to stderr, so
the window's WorkerClient and `bitsmith run --submit` read this process exactly as they
read a local worker. `{"cmd":"cancel"}` on stdin, SIGTERM or SIGINT stop the job
(`stop_job`): Ray sends the worker SIGTERM, which cancels it cooperatively, and kills it
only after STOP_WAIT_S. The exit code is the worker's (0 done, 2 bad input, 3 cancelled,
1 failure), read from its last event.

The run directory does not travel: the job writes into RUN_DIR itself, which must be on
storage that the cluster's nodes mount at the same path (for the search's scoring actors it
must be anyway). Run directories hold checkpoints of gigabytes, and Ray's Jobs API moves
files only towards the cluster (a working_dir upload), never back; so what the job writes
is in the local history the moment it is written, and nothing is copied when it ends.
`RUN_DIR/submission.json` records the address and the submission id (for `ray job logs`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import urlparse

from . import atomic
from .errors import BadInput, BitsmithError
from .events import Emitter, decode, file_sink, stream_sink

INSTALL_HINT = "install the cluster extra: pip install 'bitsmith[cluster]' (Ray with its Jobs API client)"
STOP_WAIT_S = 120          # SIGTERM to SIGKILL on stop_job: the window's own cancel grace
RECONNECTS = 5            # times a broken log stream is followed again while the job runs
AGENT_WAIT_S = 60         # how long a just-started head may take to accept jobs
EXIT_CODES = {"result": 0, "bad_input": 2, "cancelled": 3}


@dataclass(frozen=True)
class Submission:
    """What was sent where: written to RUN_DIR/submission.json before the job is submitted."""

    address: str               # the Jobs API (dashboard) URL
    submission_id: str
    entrypoint: str
    submitted_from: str        # this host
    t: float


def jobs_address(text: str) -> str:
    """The Jobs API URL for `http(s)://HOST:PORT` or `HOST:PORT`; BadInput for anything else."""
    text = text.strip().rstrip("/")
    url = urlparse(text if "://" in text else f"http://{text}")
    try:
        port = url.port
    except ValueError:                  # not a number
        port = None
    if url.scheme not in ("http", "https") or not url.hostname or port is None:
        raise BadInput(f"{text!r} is not the address of a Ray cluster's Jobs API",
                       "use the dashboard's address, e.g. http://HEAD:8265 (not ray://HEAD:10001)")
    return f"{url.scheme}://{url.hostname}:{port}"


def worker_entrypoint(run_dir: Path, resume: bool) -> str:
    """The shell command a cluster node runs: this Python (or $BITSMITH_CLUSTER_PYTHON, where
    the nodes install Bitsmith elsewhere) with the worker."""
    python = os.environ.get("BITSMITH_CLUSTER_PYTHON") or sys.executable
    args = [python, "-P", "-m", "bitsmith.core.worker", str(run_dir)] + (["--resume"] if resume else [])
    return " ".join(shlex.quote(a) for a in args)


def job_client(address: str) -> Any:
    """A JobSubmissionClient for `address`; BadInput naming the address and the fix."""
    from .search.cluster import reachable

    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise BadInput("sending a job to a Ray cluster needs Ray, which is not installed", INSTALL_HINT) from None
    url = urlparse(address)
    why = reachable(url.hostname or "", url.port or 0)
    if why is None:
        try:
            return JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError) as err:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    raise BadInput(f"cannot reach the Jobs API of the Ray cluster at {address} ({why})",
                   "start the head with `ray start --head --dashboard-host 0.0.0.0` (the dashboard serves the "
                   "Jobs API on port 8265) and check the address, or run on this machine")


# --- the log stream ----------------------------------------------------------------------

class EventRelay:
    """Splits the job's log chunks into lines: event lines to `out`, the rest to `err`; keeps
    the worker's last word (a result or an error kind) for the exit code. A stream followed
    again from the start (`restart`) skips the lines already relayed."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.partial = ""
        self.ended_with: str | None = None
        self.events = 0
        self.lines = 0           # complete lines seen in this stream
        self.skip = 0            # lines a restarted stream repeats

    def feed(self, chunk: str) -> None:
        *lines, self.partial = (self.partial + chunk).split("\n")
        for line in lines:
            self.lines += 1
            if self.lines > self.skip:
                self._line(line)

    def restart(self) -> None:
        """The log is about to be followed again from its first line."""
        self.skip, self.lines, self.partial = max(self.skip, self.lines), 0, ""

    def close(self) -> None:
        if self.partial.strip():
            self._line(self.partial)
        self.partial = ""

    def _line(self, line: str) -> None:
        event = decode(line)
        if event is None:
            if line.strip():
                print(line, file=self.err, flush=True)
            return
        self.events += 1
        if event["type"] in ("result", "error"):
            self.ended_with = "result" if event["type"] == "result" else event.get("kind", "failure")
        self.out.write(line.rstrip("\r") + "\n")
        self.out.flush()


async def _follow(client: Any, submission_id: str, relay: EventRelay) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        relay.feed(chunk)


def follow_logs(client: Any, submission_id: str, relay: EventRelay) -> str | None:
    """Relay the job's log until the job ends, following it again (up to RECONNECTS times)
    where the stream breaks off first; None, or why it broke off for good."""
    why = None
    for _ in range(RECONNECTS + 1):
        try:
            asyncio.run(_follow(client, submission_id, relay))
            why = None
        except (RuntimeError, OSError) as err:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        try:
            if client.get_job_status(submission_id).is_terminal():
                break
        except (RuntimeError, ConnectionError) as err:     # the cluster went away
            why = why or (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            break
        time.sleep(1.0)
        relay.restart()
    relay.close()
    return why


def wait_terminal(client: Any, submission_id: str, timeout_s: float = 30.0) -> Any:
    """The job's JobInfo once its status is terminal (the log stream may end just before)."""
    deadline = time.monotonic() + timeout_s
    info = client.get_job_info(submission_id)
    while not info.status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        info = client.get_job_info(submission_id)
    return info


# --- stopping ----------------------------------------------------------------------------

class Stopper:
    """Calls stop_job once, from its own thread, when asked (stdin `cancel`, SIGTERM, SIGINT)."""

    def __init__(self, stop: Callable[[], Any], emitter: Emitter) -> None:
        self.requested = threading.Event()
        self._stop, self._emitter = stop, emitter
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        self.requested.wait()
        try:
            self._stop()
            self._emitter.log("asked the Ray cluster to stop the job (the worker stops at its next check)")
        except Exception as err:      # the job ended meanwhile, or the cluster went away
            self._emitter.log(f"could not stop the Ray job: {err}")

    def listen(self, stdin: TextIO) -> None:
        def read() -> None:
            for line in stdin:
                try:
                    if json.loads(line).get("cmd") == "cancel":
                        self.requested.set()
                except (json.JSONDecodeError, AttributeError):
                    continue
        threading.Thread(target=read, daemon=True).start()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.requested.set())


# --- the whole run -----------------------------------------------------------------------

def submit(run_dir: Path, address: str, resume: bool, emitter: Emitter) -> tuple[Any, Submission]:
    """Record the submission in RUN_DIR, then submit the worker as a Ray job."""
    if not (run_dir / "job.json").is_file():
        raise BadInput(f"{run_dir} holds no job.json", "pass a run directory made by bitsmith")
    client = job_client(address)
    entry = worker_entrypoint(run_dir, resume)
    sub = Submission(address, f"bitsmith-{uuid.uuid4().hex[:12]}", entry, platform.node(), time.time())
    atomic.write_json(run_dir / "submission.json", asdict(sub))
    runtime_env = {"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), "BITSMITH_SUBMITTED_FROM": sub.submitted_from}}
    _submit_when_ready(client, address, dict(entrypoint=entry, submission_id=sub.submission_id,
                                             runtime_env=runtime_env))
    emitter.log(f"submitted to the Ray cluster at {address} as job {sub.submission_id}; its events follow",
                cluster="submitted", submission_id=sub.submission_id)
    return client, sub


def _submit_when_ready(client: Any, address: str, job: dict) -> None:
    """submit_job, waiting up to AGENT_WAIT_S for a head that has just started (its job agent
    answers "No available agent ..., please try again later" for a few seconds)."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            client.submit_job(**job)
            return
        except (RuntimeError, ConnectionError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            if "try again later" not in first or time.monotonic() > deadline:
                raise BitsmithError(f"the Ray cluster at {address} refused the job ({first})",
                                    f"check `ray job list --address {address}` and the cluster's logs") from None
        time.sleep(1.0)


def _ended_without_word(run_dir: Path, sub: Submission, info: Any, broke: str | None, stopped: bool,
                        emitter: Emitter) -> str:
    """The job ended and its worker said nothing final: say why, here and in events.jsonl."""
    status = getattr(info.status, "value", str(info.status))
    kind = "cancelled" if stopped or status == "STOPPED" else "failure"
    why = f"the log stream broke off ({broke}); " if broke else ""
    message = (f"the Ray job {sub.submission_id} ended {status} before its worker finished: "
               f"{why}{(info.message or '').strip()[:300]}")
    hint = (f"its log: ray job logs {sub.submission_id} --address {sub.address}; the run directory must be on "
            "storage every node mounts at the same path, with Bitsmith installed there "
            "(BITSMITH_CLUSTER_PYTHON names its Python)")
    Emitter([*emitter.sinks, file_sink(run_dir / "events.jsonl")]).error(kind, message, hint)
    return kind


def run(run_dir: Path, address: str, resume: bool, out: TextIO, err: TextIO, stdin: TextIO | None) -> int:
    emitter = Emitter([stream_sink(out)])
    try:
        client, sub = submit(run_dir, jobs_address(address), resume, emitter)
    except BitsmithError as problem:
        emitter.error(problem.kind, problem.message, problem.hint)
        return problem.exit_code
    stopper = Stopper(lambda: client.stop_job(sub.submission_id), emitter)
    if stdin is not None:
        stopper.listen(stdin)
    relay = EventRelay(out, err)
    broke = follow_logs(client, sub.submission_id, relay)
    info = wait_terminal(client, sub.submission_id)
    ended = relay.ended_with or _ended_without_word(run_dir, sub, info, broke, stopper.requested.is_set(), emitter)
    return EXIT_CODES.get(ended, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitsmith.core.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--address", required=True, help="the cluster's Jobs API, e.g. http://HEAD:8265")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    # as the worker: stdout carries event lines only
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return run(Path(args.run_dir).resolve(), args.address, args.resume, out, sys.stderr, sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
