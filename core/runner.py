"""Run one job inside its run directory: the code path shared by the worker and the CLI.

`execute` turns every outcome into events, a state file and an exit code:
0 done, 2 bad input, 3 cancelled, 1 failure (DESIGN.md). It never raises.
"""

from __future__ import annotations

import logging
import time
import traceback

from .errors import BadInput, BitsmithError, Cancelled
from .events import Emitter, file_sink
from .jobs import CancelToken, RunContext, job_kinds, parse_job
from .rundir import RunDir

log = logging.getLogger("bitsmith")

EXIT_DONE, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 3


def _user_message(err: BaseException) -> tuple[str, str, str, int]:
    """(kind, message, hint, exit code) for an exception that ended a job."""
    if isinstance(err, BitsmithError):
        return err.kind, err.message, err.hint, err.exit_code
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return ("failure", f"ran out of memory: {err}",
                "use fewer or shorter windows, a smaller model, or a machine with more memory", EXIT_FAILURE)
    return ("failure", f"{type(err).__name__}: {err}",
            "this is a bug in Bitsmith; the traceback is in worker.log of the run directory", EXIT_FAILURE)


def execute(run: RunDir, emitter: Emitter, cancel: CancelToken | None = None, resume: bool = False) -> int:
    """Run the job frozen in `run`; events go to `emitter` and to `events.jsonl`."""
    # The file first: an event a reader has seen on stdout is already on disk.
    emitter = Emitter([file_sink(run.events_file), *emitter.sinks])
    cancel = cancel or CancelToken()
    started = time.time()
    try:
        job = parse_job(run.read_job_doc())
        run.write_state("running", kind=job.kind)
        ctx = RunContext(run_dir=run, emitter=emitter, cancel=cancel, resume=resume)
        emitter.stage(job.kind, "start")
        report = job_kinds()[job.kind].run(job.spec, ctx) or {}
        report = {"kind": job.kind, "seconds": round(time.time() - started, 2), **report}
        run.write_report(report)
        emitter.stage(job.kind, "end")
        emitter.result(report)
        run.write_state("done", kind=job.kind)
        return EXIT_DONE
    except BaseException as err:  # noqa: BLE001 - every outcome becomes an event
        if isinstance(err, KeyboardInterrupt):
            err = Cancelled("interrupted")
        kind, message, hint, code = _user_message(err)
        if code == EXIT_FAILURE:
            log.error("job failed:\n%s", traceback.format_exc())
        emitter.error(kind, message, hint)
        state = {"bad_input": "failed", "cancelled": "cancelled"}.get(kind, "failed")
        try:
            run.write_state(state, message=message)
        except OSError:
            pass
        return code


__all__ = ["execute", "EXIT_DONE", "EXIT_FAILURE", "EXIT_BAD_INPUT", "EXIT_CANCELLED", "BadInput"]
