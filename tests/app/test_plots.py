"""Plots stay cheap with thousands of points: events only append; one redraw per 100 ms."""

from __future__ import annotations

import time

from bitsmith.app.history import RunRecord, pareto_points
from bitsmith.app.plots import LivePlots, bits_colour
from bitsmith.core.rundir import RunDir


def test_thousands_of_events_cost_little_per_redraw(app):
    plots = LivePlots()
    plots.resize(1000, 600)
    plots.show()
    names = [f"model.layers.{b}.mlp.{r}" for b in range(30) for r in ("gate_proj", "up_proj", "down_proj")]
    plots.set_layers(names)
    events = [{"type": "metric", "name": "loss", "split": "train", "step": i, "value": 1 / (i + 1)} for i in range(5000)]
    events += [{"type": "metric", "name": "ppl", "split": "eval", "step": i, "value": 40 - i / 100} for i in range(0, 5000, 10)]
    events += [{"type": "layer", "name": n, "bits": 2 + i % 4, "rel_error": 0.01 * (i + 1)} for i, n in enumerate(names)]
    cpu = time.thread_time()
    for event in events:
        plots.feed(event)
    feed_ms = 1000 * (time.thread_time() - cpu)
    plots.setCurrentIndex(1)
    cpu = time.thread_time()
    plots.redraw()
    plots.repaint()
    redraw_ms = 1000 * (time.thread_time() - cpu)
    print(f"\n{len(events)} events: feed {feed_ms:.0f} ms CPU, one redraw + paint {redraw_ms:.0f} ms CPU")
    assert redraw_ms < 100
    assert feed_ms / len(events) < 0.1                     # appending only
    loss = plots._curves[("loss", "train")]
    assert len(loss.xData) == 5000
    assert len(plots.error_bars.opts["height"]) == 90
    assert plots.error_bars.opts["brushes"][0] == bits_colour(2)
    plots.close()


def test_pareto_front_over_history(tmp_path):
    def record(name, kind, source, ppl, bits=None, quantized=False):
        run = RunDir(tmp_path / name)
        report = {"ppl": ppl, "model": {"quantized": quantized}}
        if bits is not None:
            report["budget"] = {"avg_code_bits": bits}
        return RunRecord(run, {"kind": kind, "model": {"source": source}}, "done", 0.0, report)

    q4 = record("q4", "quantize", "default", None, bits=4.2)
    q3 = record("q3", "quantize", "default", None, bits=3.1)
    records = [record("dense", "eval", "default", 36.1),
               q4, q3,
               record("e4", "eval", str(q4.run.quantized_dir), 44.0, quantized=True),
               record("e3", "eval", str(q3.run.quantized_dir), 110.0, quantized=True),
               record("other", "eval", "someone/else", 12.0)]
    points = pareto_points(records, "default", current="e3")
    assert sorted((p["bits"], p["ppl"]) for p in points) == [(3.1, 110.0), (4.2, 44.0), (16.0, 36.1)]
    assert [p["current"] for p in points if p["bits"] == 3.1] == [True]


def test_a_new_run_clears_the_spike_note_with_the_bars(app):
    """The note under the spike bars names the highest layers of the run drawn, and goes
    with its bars when a new run starts (not "highest: …" under an empty page)."""
    plots = LivePlots(live=False)
    plots.set_layers(["a", "b"])
    for name, score in (("a", 2.0), ("b", 120.0)):
        plots.feed({"type": "layer", "name": name, "spike_score": score})
    plots.redraw()
    assert plots.spike_note.text() == "highest: b 120.0, a 2.0"
    plots.clear_run()
    plots.redraw()
    assert plots.spike_note.text() == "" and plots.stacks["spikes"].currentIndex() == 0


def test_linked_curves_show_every_step(app):
    """A tuning run cancelled after step 1: KL and perplexity measured at step 0, the loss at
    step 1. The plots are stacked one above another: each spans both steps, every point in view."""
    plots = LivePlots(live=False)
    plots.resize(800, 600)
    plots.setCurrentIndex(1)
    plots.show()
    for name, split, step, value in (("kl", "eval", 0, 0.28), ("ppl", "eval", 0, 29.8), ("loss", "train", 1, 0.43)):
        plots.feed({"type": "metric", "name": name, "split": split, "step": step, "value": value})
    plots.redraw()
    app.processEvents()
    for name, plot in plots._metric_plots.items():
        (x0, x1), (y0, y1) = plot.viewRange()
        assert x0 < 0 and x1 > 1, (name, x0, x1)
        value = {"kl": 0.28, "ppl": 29.8, "loss": 0.43}[name]
        assert y0 < value < y1, (name, y0, y1)
