"""Allocation and tuning driven from the window through the real worker on the tiny Llama:
a spike-aware and an EvoPress search land their plans in the layer table and draw spike
scores and fitness; a tuning run draws its loss."""

from __future__ import annotations

import json

from bitsmith.core.jobs import ModelSpec
from bitsmith.core.rundir import RunDir


SMALL_CALIB = {"windows": 4, "seqlen": 64, "final_eval": False, "eval_every": 0, "eval_windows": 1}


def _table_bits(w) -> dict[str, int]:
    return {r.name: r.bits for r in w.layers.rows}


def _plan_bits(run: RunDir) -> dict[str, int]:
    plan = json.loads(run.plan_file.read_text())
    return {name: entry["bits"] for name, entry in plan["layers"].items()}


def test_spike_search_lands_its_plan_and_scores(run_to_end, opened):
    w = opened
    runs = []
    outcome = run_to_end(w, lambda: runs.append(w.start_job("search", {
        "method": "spike", "target_bits": 3.5, "levels": [2, 3, 4], "spike_top_k": 1, **SMALL_CALIB})) or runs[-1])
    assert outcome == "done", w.runs.message.text()
    assert len(w.plots.spikes) == 14 and all(score >= 1 for score in w.plots.spikes.values())
    plan = _plan_bits(runs[0])
    assert _table_bits(w) == plan and list(plan.values()).count(8) == 1      # the top layer, kept at 8 bits


def test_evopress_search_draws_fitness_and_lands_its_plan(run_to_end, opened):
    w = opened
    runs = []
    outcome = run_to_end(w, lambda: runs.append(w.start_job("search", {
        "method": "evopress", "target_bits": 3.0, "levels": [2, 3, 4], "generations": 2, "offspring": 4,
        "survivors": [2, 1], "tokens": [64, 128], "pool_windows": 4, "fitness_seqlen": 32,
        **SMALL_CALIB})) or runs[-1])
    assert outcome == "done", w.runs.message.text()
    steps, values = w.plots.series[("fitness", "search")]
    assert len(steps) >= 2 and all(v >= 0 for v in values)
    assert _table_bits(w) == _plan_bits(runs[0])


def test_tune_from_the_window_draws_its_loss(run_to_end, opened):
    w = opened
    quantized = []
    outcome = run_to_end(w, lambda: quantized.append(w.start_job("quantize", {
        "method": "rtn", "calib_windows": 0})) or quantized[-1])
    assert outcome == "done", w.runs.message.text()
    checkpoint = str(quantized[0].quantized_dir)
    outcome = run_to_end(w, lambda: w.start_job("tune", {
        "model": ModelSpec(checkpoint), "method": "continuous", "steps": 2, "windows": 4, "seqlen": 32,
        "batch": 2, "eval_every": 1, "eval_windows": 1, "checkpoint_every": 0}))
    assert outcome == "done", w.runs.message.text()
    steps, losses = w.plots.series[("loss", "train")]
    assert len(steps) == 2 and all(loss >= 0 for loss in losses)


def test_export_from_the_dialog_writes_the_format(run_to_end, opened):
    w = opened
    assert w.checkpoints, "needs a quantized checkpoint from an earlier test"
    w.open_export()
    dialog = w.last_dialog
    dialog.format.setCurrentText("gptq")
    assert dialog.export_button.isEnabled()
    outcome = run_to_end(w, lambda: (dialog.export_button.click(), w.client.running)[1] or None)
    assert outcome == "done", w.runs.message.text()
    run = next(r.run for r in w.history.records if r.kind == "export")
    out = run.export_dir / "gptq"
    assert json.loads((out / "quantize_config.json").read_text())["bits"] in (2, 3, 4, 8)
    assert any(out.glob("*.safetensors")) and (out / "README.md").is_file()
