"""Jobs sent to a Ray cluster through its Jobs API (core/submit.py): the worker's events come
back on our stdout as a local worker prints them, cancel stops the job, the run directory is
the local one (shared storage), and every failure to get there is one error line.

The Ray tests use a local instance with its dashboard (`ray_jobs`, tests/conftest.py) and
skip without Ray; the rest need no Ray."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import pytest

from bitsmith.core.client import WorkerProcess, module_command
from bitsmith.core.errors import BadInput
from bitsmith.core.events import read_events
from bitsmith.core.jobs import make_job
from bitsmith.core.rundir import RunDir
from bitsmith.core.submit import EventRelay, jobs_address, run

SMALL_SEARCH = dict(windows=4, seqlen=64, threads=1, batch_size=4, eval_windows=1, eval_seqlen=64, budget="code",
                    fitness_seqlen=32, pool_windows=8, kl_topk=0, start_candidates=3, tokens=[64, 128],
                    survivors=[2, 1], offspring=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inspect_run(path, tiny_llama) -> RunDir:
    return RunDir.create(path, make_job("inspect", model={"source": str(tiny_llama)}).to_dict())


# --- without Ray ---------------------------------------------------------------------------

def test_addresses_of_the_jobs_api():
    assert jobs_address("10.0.0.5:8265") == "http://10.0.0.5:8265"
    assert jobs_address(" https://head.example:443/ ") == "https://head.example:443"
    for bad in ("ray://head:10001", "head", "http://head", "local:x"):
        with pytest.raises(BadInput, match="Jobs API"):
            jobs_address(bad)


def test_relay_passes_event_lines_and_keeps_the_rest_off_stdout():
    out, err = io.StringIO(), io.StringIO()
    relay = EventRelay(out, err)
    relay.feed('{"v":1,"t":1,"type":"stage","stage":"x","state":"start"}\n2026 INFO a log li')
    relay.feed('ne\n{"v":1,"t":2,"type":"error","kind":"cancelled","message":"m","hint":""}')
    relay.close()
    assert [json.loads(l)["type"] for l in out.getvalue().splitlines()] == ["stage", "error"]
    assert err.getvalue() == "2026 INFO a log line\n" and relay.ended_with == "cancelled" and relay.events == 2


def test_a_log_followed_again_from_its_start_relays_each_line_once():
    out = io.StringIO()
    relay = EventRelay(out, io.StringIO())
    first = [json.dumps({"v": 1, "t": i, "type": "log", "message": str(i)}) for i in range(3)]
    relay.feed("\n".join(first[:2]) + "\n" + first[2][:10])       # the stream breaks mid-line
    relay.restart()
    relay.feed("\n".join(first) + "\n")
    relay.close()
    assert [json.loads(l)["message"] for l in out.getvalue().splitlines()] == ["0", "1", "2"]


def test_without_ray_or_a_cluster_it_is_one_error_line(tiny_llama, tmp_path, monkeypatch):
    run_dir = _inspect_run(tmp_path / "run", tiny_llama)
    address = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setitem(sys.modules, "ray", None)            # `import ray` fails as when it is not installed
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    out = io.StringIO()
    assert run(run_dir.path, address, False, out, io.StringIO(), None) == 2
    [event] = [json.loads(l) for l in out.getvalue().splitlines()]
    assert event["kind"] == "bad_input" and "bitsmith[cluster]" in event["hint"]


def test_an_unreachable_cluster_is_one_error_line(tiny_llama, tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("aiohttp")
    run_dir = _inspect_run(tmp_path / "run", tiny_llama)
    address = f"http://127.0.0.1:{_free_port()}"
    worker = WorkerProcess(run_dir.path, submit_to=address)
    events = list(worker.events())
    assert worker.returncode == 2 and [e["type"] for e in events] == ["error"]
    assert address in events[0]["message"] and "ray start --head" in events[0]["hint"]
    assert not (run_dir.path / "submission.json").exists()


def test_a_node_that_cannot_see_the_run_directory_says_so(tmp_path):
    env = {**os.environ, "BITSMITH_SUBMITTED_FROM": "laptop"}
    out = subprocess.run(module_command("bitsmith.core.worker", str(tmp_path / "elsewhere")), env=env,
                         capture_output=True, text=True, timeout=120)
    event = json.loads(out.stdout.splitlines()[0])
    assert out.returncode == 2 and "cannot see the run directory" in event["message"]
    assert "laptop" in event["hint"] and "same path" in event["hint"]


# --- on a local Ray instance with the Jobs API ---------------------------------------------------

def test_a_submitted_job_streams_its_events_and_its_run_is_local(ray_jobs, tiny_llama, tmp_path):
    run_dir = _inspect_run(tmp_path / "run", tiny_llama)
    worker = WorkerProcess(run_dir.path, submit_to=ray_jobs)
    events = list(worker.events())
    assert worker.returncode == 0, [e.get("message") for e in events[-3:]]
    assert events[0]["type"] == "log" and events[0]["cluster"] == "submitted"
    assert events[-1]["type"] == "result" and events[-1]["report"]["summary"]["layers"] == 14
    # the same events the worker wrote into the run directory, which is this one
    assert [e["type"] for e in events[1:]] == [e["type"] for e in read_events(run_dir.events_file)]
    assert run_dir.read_state()["state"] == "done" and run_dir.read_report() is not None
    submission = json.loads((run_dir.path / "submission.json").read_text())
    assert submission["address"] == ray_jobs and submission["submission_id"].startswith("bitsmith-")


def test_cancel_stops_the_job_at_its_next_check(ray_jobs, tiny_llama, tmp_path):
    job = make_job("search", model={"source": str(tiny_llama)}, method="evopress", target_bits=2.5,
                   generations=100_000, **SMALL_SEARCH)
    run_dir = RunDir.create(tmp_path / "run", job.to_dict())
    worker = WorkerProcess(run_dir.path, submit_to=ray_jobs)
    events = []
    for event in worker.events():
        events.append(event)
        if event["type"] == "progress" and event.get("stage") == "search" and event.get("done", 0) >= 1:
            worker.cancel()                 # EvoPress is under way: generations go on until the cancel
    assert worker.returncode == 3, events[-3:]
    assert events[-1]["type"] == "error" and events[-1]["kind"] == "cancelled"
    assert run_dir.read_state()["state"] == "cancelled"


def test_a_job_whose_worker_never_starts_ends_with_one_error_line(ray_jobs, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("BITSMITH_CLUSTER_PYTHON", str(tmp_path / "no-python-here"))
    run_dir = _inspect_run(tmp_path / "run", tiny_llama)
    worker = WorkerProcess(run_dir.path, submit_to=ray_jobs)
    events = list(worker.events())
    assert worker.returncode == 1 and [e["type"] for e in events] == ["log", "error"]
    assert "ended FAILED before its worker finished" in events[-1]["message"]
    assert "BITSMITH_CLUSTER_PYTHON" in events[-1]["hint"]
    assert read_events(run_dir.events_file)[-1]["message"] == events[-1]["message"]     # History says so too
