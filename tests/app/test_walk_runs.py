"""The new-user walk with real jobs in the worker on the tiny Llama: calibration progress
from the first second, runs that compare (perplexity attached, method, shared axes), cancel
that is prompt and keeps work, a resume that shows what came before, divergence in view,
export to a chosen folder, and a plan that survives a restart."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QSettings

from bitsmith.core.jobs import ModelSpec

QUICK_EVAL = {"data": "builtin-eval", "windows": 1, "seqlen": 32}


def _job(w, run_to_end, kind: str, **fields):
    runs = []
    outcome = run_to_end(w, lambda: runs.append(w.start_job(kind, fields)) or runs[-1])
    assert outcome == "done", w.runs.message.text()
    w.refresh_history()
    return next(r for r in w.history.records if r.name == runs[0].path.name)


def _rtn(w, run_to_end, bits: int):
    w.set_uniform(bits)
    return _job(w, run_to_end, "quantize", method="rtn", calib_windows=0)


def test_selfgen_calibration_shows_progress_with_an_eta(opened, wait_for, monkeypatch):
    w = opened
    monkeypatch.setenv("BITSMITH_CACHE", "")                  # sample afresh (the worker inherits it)
    seen = []
    w.client.progress.connect(lambda *args: seen.append(args))
    outcome = wait_for(w.client.finished, lambda: w.start_job("quantize", {
        "method": "gptq", "calib": "selfgen", "calib_windows": 2, "seqlen": 48}))[0]
    assert outcome == "done", w.runs.message.text()
    calibrate = [(done, total, eta) for stage, done, total, eta in seen if stage == "calibrate"]
    assert calibrate[0][0] == 1 and calibrate[-1][0] == calibrate[-1][1] == 48      # token positions
    assert all(eta is not None for _, _, eta in calibrate[:-1]) and calibrate[0][2] > 0
    assert [d for d, _, _ in calibrate] == sorted(d for d, _, _ in calibrate)


def test_runs_compare_with_perplexity_method_and_shared_axes(opened, run_to_end):
    w = opened
    rtn = _rtn(w, run_to_end, 4)
    w.plots.redraw()
    assert w.plots.error_kind == "weight" and "weight error" in w.plots.error_plot.getPlotItem().titleLabel.text
    w.set_uniform(3)
    gptq = _job(w, run_to_end, "quantize", method="gptq", calib="builtin", calib_windows=2, seqlen=32)
    assert len(w.plots.errors) == 14 and w.plots.error_kind == "output"
    evals = [_job(w, run_to_end, "eval", model=ModelSpec(str(r.run.quantized_dir)), **QUICK_EVAL) for r in (rtn, gptq)]
    assert len(w.plots.errors) == 14                            # an evaluation keeps the layer-error plot
    records = {r.name: r for r in w.history.records}
    for quantized, evaluation in zip((rtn, gptq), evals):
        record = records[quantized.name]
        assert record.ppl == pytest.approx(evaluation.own_ppl) and record.measured_by.name == evaluation.name
    item = next(w.history.tree.topLevelItem(i) for i in range(w.history.tree.topLevelItemCount())
                if w.history.tree.topLevelItem(i).text(0) == rtn.name)
    assert item.text(5).endswith("(eval)") and item.text(2) == "rtn"
    # The pickers tell the two checkpoints apart: method and perplexity in the label.
    labels = [label for label, path in w.checkpoints if path in (str(rtn.run.quantized_dir), str(gptq.run.quantized_dir))]
    assert len(set(labels)) == 2 and any("RTN" in l for l in labels) and any("GPTQ" in l for l in labels)
    assert all("ppl " in l for l in labels)

    w.history.select_names([rtn.name, gptq.name])
    w.history.compare_button.click()
    dialog = w.last_dialog
    rows = {dialog.compare_table.item(i, 0).text(): [dialog.compare_table.item(i, j).text() for j in (1, 2)]
            for i in range(dialog.compare_table.rowCount())}
    assert rows["method"] == ["RTN", "GPTQ"]
    assert all(cell.split()[0].replace(".", "").isdigit() for cell in rows["perplexity"])
    assert "weight space" in rows["mean rel. error"][0] and "output" in rows["mean rel. error"][1]
    assert len(dialog.diff) == 14                                # 4 against 3 bits everywhere
    ranges = [v.plots.error_plot.getPlotItem().viewRange()[1] for v in dialog.views]
    assert ranges[0] == pytest.approx(ranges[1])                 # one y axis for both
    dialog.close()


def test_cancel_of_a_tuning_run_is_prompt_and_not_a_crash(opened, run_to_end, wait_for):
    w = opened
    source = _rtn(w, run_to_end, 4)
    cancel_at = []

    def cancel_once(stage, done, total, eta):
        if stage == "tune" and not cancel_at:
            cancel_at.append(time.monotonic())
            w.runs.cancel_button.click()

    w.client.progress.connect(cancel_once)
    try:
        outcome = wait_for(w.client.finished, lambda: w.start_job("tune", {
            "model": ModelSpec(str(source.run.quantized_dir)), "method": "pv", "steps": 100000, "windows": 8,
            "seqlen": 32, "batch": 2, "micro_batch": 1, "eval_every": 0, "eval_windows": 1,
            "checkpoint_every": 0, "calib": "builtin"}))[0]
    finally:
        w.client.progress.disconnect(cancel_once)
    seconds = time.monotonic() - cancel_at[0]
    print(f"\ntune: finished {seconds:.2f} s after Cancel")
    assert outcome == "cancelled" and seconds < 10
    assert "Cancelled" in w.runs.message.text() and "crash" not in w.runs.message.text().lower()
    assert "bitsmith run" not in w.runs.message.text()           # the hint speaks of the window
    assert w.runs.resume_button.isEnabled()


def test_divergence_is_flagged_in_the_window(opened, run_to_end):
    w = opened
    source = _rtn(w, run_to_end, 3)
    run = _job(w, run_to_end, "tune", model=ModelSpec(str(source.run.quantized_dir)), method="continuous", lr=0.5,
               steps=2, windows=4, seqlen=32, batch=2, eval_every=1, eval_windows=1, checkpoint_every=0,
               calib="builtin")
    assert run.report["diverged_steps"]
    assert "Warning" in w.runs.message.text() and "diverging" in w.runs.message.text()
    w.plots.redraw()
    assert "diverging" in w.plots.curve_note.text() and "best state (step 0) is kept" in w.plots.curve_note.text()


def test_resume_after_cancel_shows_the_layers_done_before(opened, runs_root, wait_for, tiny_llama):
    """A quantize cancelled after 9 of 14 layers (in-process, deterministic): Resume in the
    window shows all 14 layer errors, 9 from the first attempt's events and 5 new ones."""
    from bitsmith.core.events import Emitter
    from bitsmith.core.jobs import CancelToken, make_job
    from bitsmith.core.rundir import RunDir
    from bitsmith.core.runner import execute

    job = make_job("quantize", model={"source": str(tiny_llama)}, calib="builtin", calib_windows=2, seqlen=32,
                   plan={"bits": 3, "group_size": 32})
    run = RunDir.create(runs_root / "20990101-000000-quantize-cut", job.to_dict())
    token, seen = CancelToken(), []

    def cancel_after_9(event):
        if event["type"] == "layer":
            seen.append(event["name"])
            if len(seen) == 9:
                token.cancel()

    assert execute(run, Emitter([cancel_after_9]), cancel=token) == 3
    w = opened
    w.refresh_history()
    w.history.select_names([run.path.name])
    assert w.history.resume_button.isEnabled()
    new_layers = []
    w.client.layer.connect(new_layers.append)
    outcome = wait_for(w.client.finished, w.history.resume_button.click)[0]
    w.client.layer.disconnect(new_layers.append)
    assert outcome == "done", w.runs.message.text()
    assert len(new_layers) == 5 and not {e["name"] for e in new_layers} & set(seen)
    assert len(w.plots.errors) == 14 and all(r.rel_error is not None for r in w.layers.rows)


def test_export_to_a_chosen_folder_says_size_before_and_place_after(opened, run_to_end, tmp_path):
    w = opened
    source = _rtn(w, run_to_end, 4)
    w.open_export()
    dialog = w.last_dialog
    dialog.source.setCurrentIndex(dialog.source.findData(str(source.run.quantized_dir)))
    dialog.format.setCurrentText("gguf")
    dialog.folder.setText(str(tmp_path))
    assert "About" in dialog.size.text() and "MiB" in dialog.size.text() and "Q4_1" in dialog.size.text()
    assert "GGUF" in dialog.stores.text()
    target = dialog.out_path()
    assert target.parent == tmp_path and str(target) in dialog.target.text()
    outcome = run_to_end(w, lambda: (dialog.export_button.click(), w.client.running)[1] or None)
    assert outcome == "done", w.runs.message.text()
    written = list(target.glob("*.gguf"))
    assert len(written) == 1 and str(target) in w.runs.message.text() and "MiB" in w.runs.message.text()
    assert "export" in w.first_run.done and "quantize" in w.first_run.done


def test_plan_and_rules_survive_a_restart(opened, run_to_end, tiny_llama):
    from bitsmith.app.main_window import MainWindow

    w = opened
    w.set_uniform(3)
    w.layers.set_bits([0], 8)
    w.rules.set_rules([(r"self_attn\.q_proj$", 5)])
    w.save_plan_state()
    table = {r.name: (r.bits, r.group_size) for r in w.layers.rows}
    again = MainWindow(QSettings(w.settings.fileName(), QSettings.Format.IniFormat))
    try:
        assert run_to_end(again, lambda: again.open_model(str(tiny_llama))) == "done"
        assert {r.name: (r.bits, r.group_size) for r in again.layers.rows} == table
        assert again.rules.rules() == [(r"self_attn\.q_proj$", 5)]
    finally:
        again.close()
        again.deleteLater()


def test_failed_open_says_so_in_the_summary(opened, run_to_end, tmp_path):
    w = opened
    assert run_to_end(w, lambda: w.open_model(str(tmp_path / "missing"))) == "failed"
    text = w.summary.text()
    assert "Could not open" in text and "missing" in text and "Still open" in text and "Opening" not in text
