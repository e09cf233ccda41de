"""`python -m bitsmith.core.worker RUN_DIR [--resume]`: run one job, stream events.

stdout carries only event lines (one JSON object each); logs go to stderr and
`RUN_DIR/worker.log`. Commands arrive on stdin as JSON lines: `{"cmd": "cancel"}`.
SIGTERM and SIGINT also cancel cooperatively, and so does losing the reader of stdout
(the window closed or the command killed: a broken pipe), so the run ends cancelled and
resumable rather than failed. Exit codes: 0 done, 2 bad input, 3 cancelled, 1 failure.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from .events import Emitter, Sink, stream_sink
from .jobs import CancelToken
from .rundir import RunDir
from .runner import EXIT_BAD_INPUT, execute


def _listen_for_commands(cancel: CancelToken) -> None:
    """Read stdin until EOF; a `cancel` command sets the token."""
    for line in sys.stdin:
        try:
            cmd = json.loads(line).get("cmd")
        except (json.JSONDecodeError, AttributeError):
            logging.getLogger("bitsmith").warning("ignoring malformed command %r", line.strip())
            continue
        if cmd == "cancel":
            cancel.cancel()


def _events_to_parent(stream: TextIO, cancel: CancelToken) -> Sink:
    """Event lines on stdout. Once their reader is gone (a broken pipe: the window or the
    `bitsmith run` that started this worker died), stop writing there and cancel: the job
    stops at its next check and leaves a cancelled, resumable run, its events still in
    events.jsonl, instead of failing as if Bitsmith had a bug."""
    write = stream_sink(stream)
    reader_gone = False

    def sink(event: dict) -> None:
        nonlocal reader_gone
        if reader_gone:
            return
        try:
            write(event)
        except (BrokenPipeError, ConnectionResetError, ValueError):     # ValueError: closed by another thread
            reader_gone = True
            logging.getLogger("bitsmith").warning("nobody reads this worker's events any more; stopping "
                                                  "(resume with `bitsmith run RUN_DIR --resume`)")
            cancel.cancel()
            try:
                stream.close()      # drop the unflushed line, so exit does not raise again
            except OSError:
                pass

    return sink


def _setup_logging(run: RunDir) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(run.log_file)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def _lower_priority() -> None:
    """Run below the window's priority: on a machine with few cores the worker's compute
    threads would otherwise preempt the GUI thread and stall the window's event loop.
    A niced worker still takes every core nobody else wants. BITSMITH_WORKER_NICE=0 opts out."""
    increment = int(os.environ.get("BITSMITH_WORKER_NICE", "5"))
    if increment > 0 and hasattr(os, "nice"):
        try:
            os.nice(increment)
        except OSError:
            pass


def _no_run_dir(paths: list[str]) -> tuple[str, str]:
    """(message, hint) for a missing run directory; a job sent to a Ray cluster
    (core/submit.py) names the shared storage it needs."""
    sender = os.environ.get("BITSMITH_SUBMITTED_FROM")
    if sender and len(paths) == 1:
        import socket

        return (f"the Ray cluster's node {socket.gethostname()} cannot see the run directory {paths[0]}",
                f"put the runs folder (BITSMITH_RUNS) on storage that {sender} and every node mount at the same "
                "path, or run on this machine")
    return f"expected one existing run directory, got {paths!r}", "usage: python -m bitsmith.core.worker RUN_DIR [--resume]"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in args
    paths = [a for a in args if not a.startswith("--")]
    # Events keep a private handle on file descriptor 1; anything else that prints, from
    # Python or from C, is sent to stderr, so stdout carries event lines alone.
    sys.stdout.flush()
    events_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    cancel = CancelToken()
    emitter = Emitter([_events_to_parent(events_out, cancel)])
    if len(paths) != 1 or not Path(paths[0]).is_dir():
        emitter.error("bad_input", *_no_run_dir(paths))
        return EXIT_BAD_INPUT
    run = RunDir(paths[0])
    _setup_logging(run)
    _lower_priority()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: cancel.cancel())
    threading.Thread(target=_listen_for_commands, args=(cancel,), daemon=True).start()
    return execute(run, emitter, cancel, resume=resume)


if __name__ == "__main__":
    sys.exit(main())
