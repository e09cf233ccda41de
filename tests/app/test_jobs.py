"""Jobs through the real worker on the tiny Llama: quantize (events reach the table, heat
map and plots; the event loop never stalls), evaluate the checkpoint (Pareto, history,
compare, export warnings), cancel and resume, a killed worker, Try it."""

from __future__ import annotations

import gc
import os
import time

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from bitsmith.app.heatmap import KEPT_LEVEL
from bitsmith.app.layer_model import KEEP_BITS


MAX_STALL_MS = 100


class StallProbe:
    """A 10 ms QTimer; records how late each tick is. Two figures per gap between ticks:
    wall-clock lateness (what a user feels) and the GUI thread's own CPU time in it (the
    work the window did; unlike wall time it does not grow when the OS runs other
    processes on a busy machine)."""

    def __init__(self, interval_ms: int = 10) -> None:
        self.interval = interval_ms
        self.late: list[float] = []
        self.busy: list[float] = []
        self.timer = QTimer(interval=interval_ms, timeout=self._tick)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)

    def start(self) -> None:
        # The window's process holds neither torch nor Ray (test_torch_free.py); this pytest
        # process holds both from other tests (~500k objects once Ray is imported), and a full
        # collection of them took 270-400 ms of GUI-thread CPU in CI. Freeze what exists now so
        # the probe measures the window's own work and garbage, as in the app.
        gc.collect()
        gc.freeze()
        self.wall, self.cpu = time.monotonic(), time.thread_time()
        self.timer.start()

    def _tick(self) -> None:
        wall, cpu = time.monotonic(), time.thread_time()
        self.late.append(1000 * (wall - self.wall) - self.interval)
        self.busy.append(1000 * (cpu - self.cpu))
        self.wall, self.cpu = wall, cpu

    def stop(self) -> tuple[float, float]:
        self.timer.stop()
        gc.unfreeze()
        return max(self.late), max(self.busy)


def machine_overloaded() -> bool:
    """More runnable processes than cores: wall-clock lateness then measures the OS
    scheduler as much as the window."""
    return os.getloadavg()[0] > (os.cpu_count() or 1)


def _quantize(w):
    form = w.strategies.forms["quantize"]
    for name, value in (("method", "gptq"), ("calib", "builtin"), ("calib_windows", 4), ("seqlen", 64)):
        form.set_value(name, value)
    w.strategies.setCurrentIndex(list(w.strategies.forms).index("quantize"))
    w.strategies.run_buttons["quantize"].click()
    assert w.client.running, w.runs.message.text()


def test_quantize_through_worker_fills_table_and_plots_without_stalls(wait_for, opened):
    w = opened
    # A mixed plan: down_proj kept at 16-bit, the rest 3-bit.
    w.set_uniform(3)
    downs = [i for i, r in enumerate(w.layers.rows) if r.role == "down_proj"]
    w.layers.set_bits(downs, KEEP_BITS)
    layer_events = []
    w.client.layer.connect(layer_events.append)
    w.tabs.setCurrentIndex(1)               # the Run page with the live plots, painted once
    QApplication.processEvents()
    probe = StallProbe()
    probe.start()
    outcome = wait_for(w.client.finished, lambda: _quantize(w))[0]
    late, busy = probe.stop()
    w.client.layer.disconnect(layer_events.append)
    assert outcome == "done", w.runs.message.text()
    load = os.getloadavg()[0]
    print(f"\nquantize job: {len(probe.late)} ticks; worst lateness {late:.0f} ms, worst GUI-thread CPU "
          f"between ticks {busy:.0f} ms (load average {load:.1f} on {os.cpu_count()} cores)")
    assert busy < MAX_STALL_MS
    if not machine_overloaded():
        assert late < MAX_STALL_MS
    # Every layer got its event, and the table, heat map and plots show them.
    assert len(layer_events) == 14
    rows = {r.name: r for r in w.layers.rows}
    for event in layer_events:
        row = rows[event["name"]]
        assert row.bits == (KEEP_BITS if row.role == "down_proj" else 3)
        if event.get("keep") is None:
            assert row.rel_error == pytest.approx(event["rel_error"]) and 0 < row.rel_error < 1
    w.plots.redraw()
    assert len(w.plots.errors) == 12 or len(w.plots.errors) == 14
    assert len(w.plots.error_bars.opts["height"]) == len(w.plots.errors)
    grid, roles, blocks = w.heatmap.matrix()
    assert grid[0, roles.index("down_proj")] == KEPT_LEVEL and grid[1, roles.index("q_proj")] == 3
    assert w.runs.bar.value() == w.runs.bar.maximum() == 1 and w.runs.title.text() == "Finished"
    # History lists the run with the plan's average code bits (core/plan arithmetic).
    record = next(r for r in w.history.records if r.kind == "quantize")
    assert record.state == "done" and record.has_quantized
    assert record.avg_bits == pytest.approx(float(w.budget.text().split("avg code bits ")[1].split()[0]), abs=1e-3)
    assert w.checkpoints and w.checkpoints[0][1] == str(record.run.quantized_dir)


def test_eval_of_checkpoint_reaches_plots_pareto_history_and_compare(wait_for, opened):
    w = opened
    assert w.checkpoints, "needs the quantize test's run"
    form = w.strategies.forms["eval"]
    form.set_value("windows", 2)
    form.set_value("seqlen", 64)
    choice = w.strategies.model_choice["eval"]
    choice.setCurrentIndex(choice.findData(w.checkpoints[0][1]))
    metrics = []
    w.client.metric.connect(metrics.append)
    outcome = wait_for(w.client.finished, w.strategies.run_buttons["eval"].click)[0]
    w.client.metric.disconnect(metrics.append)
    assert outcome == "done", w.runs.message.text()
    ppl = [m for m in metrics if m["name"] == "ppl"]
    assert len(ppl) == 1 and ppl[0]["value"] > 1
    w.plots.redraw()
    assert ("ppl", "eval") in w.plots.series
    # Pareto: the checkpoint's eval is a point at the quantize run's average bits.
    points = w.plots.pareto_points.data
    assert len(points) >= 1
    quantize = next(r for r in w.history.records if r.kind == "quantize")
    assert any(p["data"]["bits"] == pytest.approx(quantize.avg_bits) and
               p["data"]["ppl"] == pytest.approx(ppl[0]["value"]) for p in points)
    # Open one run, and compare two side by side.
    evaluation = next(r for r in w.history.records if r.kind == "eval" and r.state == "done")
    w.history.select_names([quantize.name, evaluation.name])
    assert w.history.compare_button.isEnabled()
    w.history.compare_button.click()
    dialog = w.last_dialog
    assert [v.record.name for v in dialog.views] == [quantize.name, evaluation.name]
    assert len(dialog.views[0].plots.errors) >= 12             # the quantize run's layer errors, from events.jsonl
    assert ("ppl", "eval") in dialog.views[1].plots.series
    dialog.close()
    # Export: the warnings come from the checkpoint's manifest before anything runs.
    w.open_export()
    export = w.last_dialog
    export.format.setCurrentText("gguf")
    assert export.export_button.isEnabled() and export.warnings.toPlainText().strip()
    export.close()


def test_cancel_then_resume(wait_for, opened):
    w = opened
    form = w.strategies.forms["eval"]
    form.set_value("windows", 4)
    form.set_value("seqlen", 64)
    w.strategies.model_choice["eval"].setCurrentIndex(0)            # the open (dense) model

    def start_and_cancel():
        w.strategies.run_buttons["eval"].click()
        w.runs.cancel_button.click()      # queued on the worker's stdin; honoured at the first check

    outcome = wait_for(w.client.finished, start_and_cancel)[0]
    assert outcome == "cancelled"
    assert "Cancelled" in w.runs.message.text() and w.runs.resume_button.isEnabled()
    run = w.client.run_dir
    assert run.read_state()["state"] == "cancelled"
    outcome = wait_for(w.client.finished, w.runs.resume_button.click)[0]
    assert outcome == "done" and w.client.run_dir == run
    assert run.read_state()["state"] == "done" and run.read_report()["ppl"] > 1


def test_killed_worker_is_reported_and_run_is_resumable(wait_for, opened):
    w = opened
    w.strategies.model_choice["eval"].setCurrentIndex(0)

    def start_then_kill():
        w.strategies.run_buttons["eval"].click()
        # Kill as soon as the job has really started (its first stage event).
        w.client.stage.connect(lambda *_: w.client.kill(), type=pg_unique())

    outcome = wait_for(w.client.finished, start_then_kill)[0]
    assert outcome == "crashed"
    text = w.runs.message.text()
    assert "Worker crashed" in text and "resumed" in text
    assert w.runs.resume_button.isEnabled()
    assert w.client.run_dir.read_state()["state"] == "interrupted"
    # The window is usable: history shows the run as resumable, the plan still edits.
    w.refresh_history()
    record = next(r for r in w.history.records if r.name == w.client.run_dir.path.name)
    assert record.state == "interrupted"
    w.history.select_names([record.name])
    assert w.history.resume_button.isEnabled()
    w.set_uniform(2)
    assert "avg code bits 2.000" in w.budget.text()
    assert w.strategies.run_buttons["eval"].isEnabled()


def pg_unique():
    from PySide6.QtCore import Qt

    return Qt.ConnectionType.SingleShotConnection


def test_try_it_generates_from_dense_and_quantized(opened):
    w = opened
    assert w.checkpoints
    t = w.try_it
    t.prompt.setPlainText("The quick brown fox")
    t.tokens.setValue(8)
    start = time.monotonic()
    t.generate()
    deadline = start + 180
    streamed = []
    t.clients[0].event.connect(lambda e: streamed.append(e) if e.get("stage") == "generate" else None)
    while t.running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    dense, quantized = (o.toPlainText() for o in t.outputs)
    assert dense and quantized and "error" not in dense.lower() and "error" not in quantized.lower()
    assert t.go.isEnabled() and not t.stop.isEnabled()
    assert all("tokens/s" in r.text() for r in t.rates)
    # the text came in token by token, each event with the text so far
    texts = [e["text"] for e in streamed if e["type"] == "progress"]
    assert len(texts) >= 1 and texts[-1].strip() == dense.strip()


def test_try_it_stops_both_sides(opened):
    w = opened
    t = w.try_it
    t.prompt.setPlainText("The quick brown fox")
    t.tokens.setValue(200)
    t.generate()
    assert t.stop.isEnabled() and not t.go.isEnabled()
    t.cancel()
    deadline = time.monotonic() + 120
    while t.running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    assert not t.running and t.go.isEnabled()
    assert all(o.toPlainText() == "stopped" for o in t.outputs)
