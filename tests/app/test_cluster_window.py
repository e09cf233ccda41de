"""Run on: a Ray cluster (app/run_target.py, core/submit.py). A search sent from the window
to a local Ray instance's Jobs API streams into the same run view, lands its plan in the
table and its run in History; Cancel stops it on the cluster; the window imports neither
torch nor Ray for it. Skipped without Ray (the `ray_jobs` fixture, tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess

from bitsmith.core.client import python_command

SMALL = {"windows": 4, "seqlen": 64, "final_eval": False, "eval_every": 0, "eval_windows": 1, "threads": 1,
         "levels": [2, 3, 4], "pool_windows": 4, "fitness_seqlen": 32, "offspring": 4, "survivors": [2, 1],
         "tokens": [64, 128]}


def _search(w, runs: list, **fields):
    return lambda: runs.append(w.start_job("search", {**SMALL, **fields})) or runs[-1]


def test_a_search_on_the_cluster_streams_into_the_run_view_and_history(ray_jobs, run_to_end, opened):
    w = opened
    w.run_target.set_cluster(ray_jobs)
    runs, events = [], []
    w.client.event.connect(events.append)
    try:
        outcome = run_to_end(w, _search(w, runs, method="evopress", target_bits=3.0, generations=2))
    finally:
        w.client.event.disconnect(events.append)
        w.run_target.set_cluster(None)
    assert outcome == "done", w.runs.message.text()
    run = runs[0]
    assert events[0].get("cluster") == "submitted" and w.runs.title.toolTip() == f"on the Ray cluster at {ray_jobs}"
    steps, _ = w.plots.series[("fitness", "search")]           # drawn from the relayed events
    assert len(steps) >= 2
    plan = {n: e["bits"] for n, e in json.loads(run.plan_file.read_text())["layers"].items()}
    assert {r.name: r.bits for r in w.layers.rows} == plan
    record = next(r for r in w.history.records if r.run.path == run.path)
    assert record.state == "done" and (run.path / "submission.json").is_file()


def test_cancel_stops_the_search_on_the_cluster(ray_jobs, run_to_end, wait_for, opened):
    w = opened
    w.run_target.set_cluster(ray_jobs)
    runs = []

    def cancel_once_searching(event: dict) -> None:
        if event["type"] == "progress" and event.get("stage") == "search" and w.runs.cancel_button.text() == "Cancel":
            w.runs.cancel_button.click()

    w.client.event.connect(cancel_once_searching)
    try:
        outcome = run_to_end(w, _search(w, runs, method="evopress", target_bits=3.0, generations=100_000))
    finally:
        w.client.event.disconnect(cancel_once_searching)
        w.run_target.set_cluster(None)
    assert outcome == "cancelled", w.runs.message.text()
    assert runs[0].read_state()["state"] == "cancelled" and w.runs.resume_button.isEnabled()


def test_a_bad_address_is_said_before_anything_starts(opened):
    w = opened
    w.run_target.set_cluster("ray://head:10001")
    try:
        assert w.start_job("search", {**SMALL, "method": "sensitivity"}) is None
    finally:
        w.run_target.set_cluster(None)
    assert "http://HEAD:8265" in w.runs.message.text() and not w.client.running


def test_choosing_a_cluster_imports_neither_ray_nor_torch(tmp_path):
    script = f"""
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ["BITSMITH_RUNS"] = {str(tmp_path / "runs")!r}
from PySide6.QtCore import QSettings
from bitsmith.app.main import make_app
app = make_app()
from bitsmith.app.main_window import MainWindow
from bitsmith.core.client import worker_command
w = MainWindow(QSettings({str(tmp_path / 's.ini')!r}, QSettings.Format.IniFormat))
w.run_target.set_cluster("head.example:8265")
cmd = worker_command("/runs/r", submit_to=w.run_target.submit_address())
print(cmd[-3:] == ["/runs/r", "--address", "http://head.example:8265"], "ray" in sys.modules, "torch" in sys.modules)
"""
    out = subprocess.run(python_command("-c", script), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False", "False"]
