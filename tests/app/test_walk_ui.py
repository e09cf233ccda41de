"""The window as a new user meets it, without jobs: the bits editor stays in its cell, the
heat map hatches what was never measured, budgets say what they count, rules say when one
shadows another, forms ignore a passing mouse wheel, plots handle one point and no data."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QComboBox

from bitsmith.app.history import HistoryPanel
from bitsmith.app.layer_model import BIT_CHOICES, COL, KEEP_BITS
from bitsmith.app.plots import LivePlots
from bitsmith.app.runs_panel import EtaSmoother
from bitsmith.app.widgets import window_hint
from bitsmith.core.rundir import RunDir


def test_bits_editor_opens_inside_its_cell(opened):
    w = opened
    w.tabs.setCurrentIndex(0)
    index = w.proxy.index(0, COL["bits"])
    name = w.proxy.index(0, COL["name"]).data()
    w.table.setCurrentIndex(index)
    w.table.edit(index)
    QApplication.processEvents()
    editors = [c for c in w.table.viewport().findChildren(QComboBox) if c.isVisible()]
    assert len(editors) == 1
    editor = editors[0]
    assert not editor.isWindow() and editor.window() is w          # not a top-level window
    assert w.table.visualRect(index).intersects(editor.geometry())  # drawn over the cell
    editor.setCurrentIndex(BIT_CHOICES.index(8))
    w.table.itemDelegate().commitData.emit(editor)
    w.table.itemDelegate().closeEditor.emit(editor)
    assert w.layers.rows[w.layers.row_of(name)].bits == 8


def test_heat_map_hatches_layers_never_measured(opened):
    w = opened
    w.layers.clear_results()
    measured = {r.name: 0.01 * (i + 1) for i, r in enumerate(w.layers.rows[:3])}
    for name, err in measured.items():
        w.layers.set_result(name, rel_error=err, bits=4)
    w.heatmap.what.setCurrentIndex(1)
    w.heatmap.redraw()
    grid, roles, blocks = w.heatmap.matrix()
    assert int(np.isfinite(grid).sum()) == 3 and int(np.isnan(grid).sum()) == 11
    w.heatmap.image.render()
    image = w.heatmap.image.qimage
    for b, block in enumerate(blocks):
        for r, role in enumerate(roles):
            alpha = image.pixelColor(r, b).alpha()
            assert alpha == (255 if np.isfinite(grid[b, r]) else 0)   # unmeasured: see-through
    assert w.heatmap.hatch.isVisible()                               # ... onto the grey hatch
    assert "hatched grey = not measured: 11 layers" in w.heatmap.caption.text()
    w.heatmap.what.setCurrentIndex(0)
    w.layers.clear_results()


def test_budget_and_summary_say_what_they_count(opened):
    w = opened
    assert w.budget.text().startswith("Layer table:") and "linear layers" in w.budget.text()
    summary = w.summary.text()
    assert "under the table's plan" in summary and "embeddings, head and norms at 16-bit" in summary


def test_shadowed_rule_gets_a_clear_message(opened):
    w = opened
    w.rules.set_rules([(r"mlp\.down_proj$", KEEP_BITS)])
    w.rules.add_rule(r"layers\.1\.mlp\.down_proj$", 3)
    text = w.rules.preview.text()
    assert "Rule 2" in text and "never applies" in text and "rule 1" in text and "matches no layer" not in text
    assert not w.rules.apply_button.isEnabled()
    w.rules.table.setCurrentCell(1, 0)
    w.rules._move(-1)                                      # Up: now it takes block 1 first
    assert "These rules would give" in w.rules.preview.text() and w.rules.apply_button.isEnabled()


def test_rule_preview_says_when_the_table_no_longer_follows_it(opened):
    w = opened
    w.rules.set_rules([(r"self_attn\.(k|v)_proj$", 2)])
    w.rules.default_bits.setCurrentIndex(w.rules.default_bits.findData(4))
    w.rules.apply_button.click()
    assert "follows these rules" in w.rules.table_note.text()
    w.set_uniform(3)                                        # a preset (or a run) changes the table
    note = w.rules.table_note.text()
    assert "differs from these rules in 14 layers" in note and "uniform 3-bit" in note
    w.rules.apply_button.click()
    assert "follows these rules" in w.rules.table_note.text()


def test_mouse_wheel_over_an_unfocused_form_field_changes_nothing(opened):
    form = opened.strategies.forms["tune"]
    tau = form.widgets["tau"]
    before = tau.value()
    tau.clearFocus()
    event = QWheelEvent(QPointF(5, 5), QPointF(tau.mapToGlobal(QPoint(5, 5))), QPoint(0, 0), QPoint(0, -120),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(tau, event)
    assert tau.value() == before and not event.isAccepted()    # left to the scroll area
    assert tau.focusPolicy() == Qt.FocusPolicy.StrongFocus


def test_gptq_only_fields_are_disabled_for_rtn(opened):
    form = opened.strategies.forms["quantize"]
    form.set_value("method", "rtn")
    assert not form.widgets["damp"].isEnabled() and not form.widgets["act_order"].isEnabled()
    assert "GPTQ only" in form.widgets["damp"].toolTip()
    assert form.widgets["calib"].isEnabled() and form.widgets["clip"].isEnabled()
    form.set_value("method", "gptq")
    assert form.widgets["damp"].isEnabled()
    tune = opened.strategies.forms["tune"]
    tune.set_value("method", "continuous")
    assert not tune.widgets["code_lr"].isEnabled() and not tune.widgets["rank"].isEnabled()
    tune.set_value("method", "pv")


def test_run_button_stays_put_when_a_message_appears(opened):
    w = opened
    w.tabs.setCurrentIndex(1)
    button = w.strategies.run_buttons["quantize"]
    w.strategies.setCurrentIndex(list(w.strategies.forms).index("quantize"))
    w.runs.set_message("")
    QApplication.processEvents()
    before = button.mapTo(w, QPoint(0, 0))
    for message in ("<b>Error:</b> one line", "<b>Error:</b> a message<br><i>and its hint</i>",
                    "<b>Error:</b> a message long enough to wrap " * 8 + "<br><i>and a hint</i>"):
        w.runs.set_message(message, "error")
        QApplication.processEvents()
        assert button.mapTo(w, QPoint(0, 0)) == before, message
    w.runs.set_message("")
    w.tabs.setCurrentIndex(0)


def test_table_shows_every_column_including_spike(opened):
    w = opened
    w.tabs.setCurrentIndex(0)
    size = w.size()
    w.resize(1280, 800)                                      # a laptop screen
    QApplication.processEvents()
    header = w.table.horizontalHeader()
    width = w.table.viewport().width()
    try:
        for col in range(w.layers.columnCount()):
            assert header.sectionViewportPosition(col) + header.sectionSize(col) <= width + 1, col
            assert header.sectionSize(col) >= header.sectionSizeHint(col) or col == COL["name"], col
    finally:
        w.resize(size)


def test_hints_speak_of_the_window_not_the_command_line():
    assert window_hint("resume it with `bitsmith run RUN_DIR --resume`") == "press Resume to go on from where it stopped"
    assert window_hint("choose --target-bits between 2 and 4") == "choose “target bits” between 2 and 4"


def test_single_point_plots_get_a_sensible_range(app):
    plots = LivePlots(live=False)
    plots.resize(800, 500)
    plots.feed({"type": "metric", "name": "loss", "split": "train", "step": 1, "value": 2.5})
    plots.redraw()
    (x0, x1), (y0, y1) = plots._metric_plots["loss"].viewRange()
    assert -1 <= x0 < 1 < x1 <= 3 and 2.0 <= y0 < 2.5 < y1 <= 3.0
    plots.set_pareto([{"bits": 4.25, "ppl": 20.18361967787298, "label": "q", "current": False}])
    (x0, x1), (y0, y1) = plots.pareto_plot.getPlotItem().viewRange()
    assert x1 - x0 >= 1 and 0.5 < y1 - y0 < 10
    plots.close()


def test_empty_plot_tabs_say_what_will_appear(app):
    plots = LivePlots(live=False)
    for key, stack in plots.stacks.items():
        assert stack.currentIndex() == 0 and stack.widget(0).text(), key
    plots.feed({"type": "layer", "name": "a", "bits": 4, "rel_error": 0.1})
    plots.redraw()
    assert plots.stacks["errors"].currentIndex() == 1 and plots.stacks["curves"].currentIndex() == 0
    plots.close()


def test_rtn_weight_errors_are_labelled_as_such(app):
    plots = LivePlots(live=False)
    plots.feed({"type": "layer", "name": "a", "bits": 4, "rel_error": 0.1, "error_kind": "weight"})
    plots.redraw()
    assert "weight error" in plots.error_plot.getPlotItem().titleLabel.text
    plots.clear_run()
    plots.feed({"type": "layer", "name": "a", "bits": 4, "rel_error": 0.1})
    plots.redraw()
    assert plots.error_plot.getPlotItem().titleLabel.text == "Relative output error per layer"
    plots.close()


def test_resumed_curves_replace_the_steps_they_repeat(app):
    plots = LivePlots(live=False)
    for step in range(1, 8):                      # the first attempt got to step 7 ...
        plots.feed({"type": "metric", "name": "loss", "split": "train", "step": step, "value": float(step)})
    for step in range(6, 9):                      # ... resumed from its checkpoint at step 5
        plots.feed({"type": "metric", "name": "loss", "split": "train", "step": step, "value": 10.0 * step})
    steps, values = plots.series[("loss", "train")]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8] and values[-3:] == [60.0, 70.0, 80.0]
    plots.close()


def test_eta_moves_smoothly():
    eta = EtaSmoother()
    assert eta.update("quantize", 274.0, now=0.0) == 274.0
    shown = eta.update("quantize", 1184.0, now=1.0)          # one slow step's estimate
    assert 273 < shown < 600
    assert eta.update("save", 5.0, now=2.0) == 5.0           # a new stage starts afresh


def test_history_counts_one_run_in_the_singular(app, tmp_path):
    RunDir.create(tmp_path / "r1", {"version": 1, "kind": "eval", "model": {"source": "default"}})
    panel = HistoryPanel(lambda: tmp_path)
    panel.refresh()
    assert panel.summary.text().startswith("1 run in ")
