"""The worker process: the event stream, exit codes, cancellation, SIGKILL."""

import json
import os
import signal
import subprocess
import sys

import pytest

from bitsmith.core.client import WorkerProcess
from bitsmith.core.events import decode, read_events
from bitsmith.core.jobs import make_job
from bitsmith.core.rundir import RunDir
from bitsmith.core.client import module_command


def _start(run_dir, job_doc):
    RunDir.create(run_dir, job_doc)
    return subprocess.Popen(module_command("bitsmith.core.worker", str(run_dir)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _long_eval(model_dir):
    # 400 windows of 32 tokens: a second or two on the tiny model, long enough to interrupt
    # right after its first progress event.
    return make_job("eval", model={"source": str(model_dir)}, data="builtin", seqlen=32, windows=400).to_dict()


def _read_until_progress(proc):
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if json.loads(line)["type"] == "progress":
            return lines
    raise AssertionError(f"no progress event; stderr: {proc.stderr.read()}")


def test_events_on_stdout_match_events_file(tmp_run, tiny_llama):
    job = make_job("eval", model={"source": str(tiny_llama)}, data="builtin-eval", seqlen=64, windows=3)
    proc = _start(tmp_run, job.to_dict())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    events = [decode(line) for line in lines]
    assert all(events), f"non-event output on stdout: {lines}"
    assert [e["type"] for e in events][-1] == "result"
    assert events == read_events(RunDir(tmp_run).events_file)
    run = RunDir(tmp_run)
    assert run.read_state()["state"] == "done"
    assert run.read_report()["windows"] == 3 and run.read_report()["ppl"] > 1


def test_bad_job_exits_2_with_an_error_event(tmp_run):
    tmp_run.mkdir()
    (tmp_run / "job.json").write_text(json.dumps({"version": 1, "kind": "eval", "model": {"source": "/no/such"}}))
    proc = subprocess.run(module_command("bitsmith.core.worker", str(tmp_run)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    error = [decode(line) for line in proc.stdout.splitlines()][-1]
    assert error["type"] == "error" and error["kind"] == "bad_input" and "does not exist" in error["message"]
    assert RunDir(tmp_run).read_state()["state"] == "failed"


def test_cancel_on_stdin_exits_3(tmp_run, tiny_llama):
    proc = _start(tmp_run, _long_eval(tiny_llama))
    _read_until_progress(proc)
    proc.stdin.write(json.dumps({"cmd": "cancel"}) + "\n")
    proc.stdin.flush()
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert decode(rest.splitlines()[-1])["kind"] == "cancelled"
    assert RunDir(tmp_run).read_state()["state"] == "cancelled"


def test_a_worker_whose_reader_dies_stops_cancelled_and_resumable(tmp_run, tiny_llama):
    """The window or `bitsmith run` killed: the worker's next event meets a broken pipe."""
    proc = _start(tmp_run, _long_eval(tiny_llama))
    _read_until_progress(proc)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]
    run = RunDir(tmp_run)
    assert run.read_state()["state"] == "cancelled"
    last = read_events(run.events_file)[-1]
    assert last["type"] == "error" and last["kind"] == "cancelled", last
    assert "Traceback" not in err and "nobody reads this worker's events" in err
    worker = WorkerProcess(tmp_run, resume=True)
    assert list(worker.events())[-1]["type"] == "result" and worker.returncode == 0


def test_sigkill_leaves_a_valid_resumable_run(tmp_run, tiny_llama):
    proc = _start(tmp_run, _long_eval(tiny_llama))
    _read_until_progress(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    run = RunDir(tmp_run)
    assert run.read_state()["state"] == "interrupted"
    assert json.loads(run.job_file.read_text())["kind"] == "eval"
    assert any(e["type"] == "progress" for e in read_events(run.events_file))
    worker = WorkerProcess(tmp_run, resume=True)
    events = list(worker.events())
    assert worker.returncode == 0 and events[-1]["type"] == "result", events[-3:]
    assert run.read_state()["state"] == "done"


@pytest.mark.parametrize("args", [["/definitely/not/a/dir"], []])
def test_worker_without_a_run_dir(args):
    proc = subprocess.run(module_command("bitsmith.core.worker", *args),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and decode(proc.stdout.splitlines()[0])["kind"] == "bad_input"
