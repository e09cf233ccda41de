"""Open a model through a real inspect job; edit bits by cell, selection and rule; the
budget follows core/plan.py's arithmetic."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from bitsmith.app.layer_model import COL, KEEP_BITS
from bitsmith.core.plan import LayerPlan


# Tiny Llama: 2 blocks × (q 64×64, k 32×64, v 32×64, o 64×64, gate 128×64, up 128×64, down 64×128).
TINY_PARAMS_PER_BLOCK = 4096 + 2048 + 2048 + 4096 + 8192 + 8192 + 8192


def test_open_tiny_model_fills_table_and_summary(opened, tiny_llama):
    w = opened
    assert w.layers.rowCount() == 14
    assert {r.role for r in w.layers.rows} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                               "up_proj", "down_proj"}
    assert "LlamaForCausalLM" in w.summary.text()
    assert "14 linear layers in 2 blocks" in w.summary.text()
    assert w.picker.recent()[0] == str(tiny_llama)            # remembered in QSettings
    assert not any(r.kind == "inspect" for r in w.history.records)      # opening is no result


def _budget_numbers(w) -> tuple[float, float]:
    text = w.budget.text()
    avg = float(text.split("avg code bits ")[1].split()[0])
    eff = float(text.split("effective bits ")[1].split()[0])
    return avg, eff


def test_edit_by_cell_selection_and_rule_updates_budget(opened):
    w = opened
    params = 2 * TINY_PARAMS_PER_BLOCK
    # Start: uniform 4-bit, group 64 -> 4 code bits, + 32 bits per 64 weights = 4.5 effective.
    assert _budget_numbers(w) == pytest.approx((4.0, 4.5))

    # A cell: the first layer (q_proj of block 0, 4096 weights) to 8 bits via the proxy.
    index = w.proxy.index(0, COL["bits"])
    name = w.proxy.index(0, COL["name"]).data()
    assert w.proxy.setData(index, 8)
    row = w.layers.rows[w.layers.row_of(name)]
    assert row.bits == 8
    assert _budget_numbers(w)[0] == pytest.approx((4 * params + 4 * row.params) / params, abs=1e-3)

    # A selection: every down_proj (filter, select all, set 16 = keep).
    w.filter.setText("down_proj")
    assert w.proxy.rowCount() == 2
    w.table.selectAll()
    w.sel_bits.setCurrentIndex(w.sel_bits.findData(KEEP_BITS))
    w.set_selected_bits()
    w.filter.setText("")
    downs = [r for r in w.layers.rows if r.role == "down_proj"]
    assert all(r.bits == KEEP_BITS for r in downs)
    expected_code = sum((16 if r.role == "down_proj" else (8 if r.name == name else 4)) * r.params
                        for r in w.layers.rows)
    assert _budget_numbers(w)[0] == pytest.approx(expected_code / params, abs=1e-3)

    # A rule: k/v at 2 bits, everything else 3 bits, previewed then applied.
    w.rules.set_rules([(r"self_attn\.(k|v)_proj$", 2)])
    w.rules.default_bits.setCurrentIndex(w.rules.default_bits.findData(3))
    assert "4 × 2-bit" in w.rules.preview.text() and "10 × 3-bit" in w.rules.preview.text()
    w.rules.apply_button.click()
    bits = {r.role: r.bits for r in w.layers.rows}
    assert bits["k_proj"] == bits["v_proj"] == 2 and bits["down_proj"] == 3 and bits["q_proj"] == 3
    code = sum((2 if r.role in ("k_proj", "v_proj") else 3) * r.params for r in w.layers.rows)
    # Overhead straight from core/plan: 32 bits per group of 64.
    over = sum(LayerPlan(bits=3, group_size=64, d_out=r.d_out, d_in=r.d_in).storage_bits()[1] for r in w.layers.rows)
    assert _budget_numbers(w) == pytest.approx((code / params, (code + over) / params), abs=1e-3)
    # The heat map shows the same bits.
    w.heatmap.redraw()
    grid, roles, blocks = w.heatmap.matrix()
    assert grid.shape == (2, 7) and grid[0, roles.index("k_proj")] == 2 and grid[1, roles.index("up_proj")] == 3


def test_bad_rule_is_reported_in_preview_and_not_applied(opened):
    w = opened
    w.rules.set_rules([("no_such_layer", 2)])
    assert "matches no layer" in w.rules.preview.text()
    assert not w.rules.apply_button.isEnabled()


def test_uniform_preset_and_sorting(opened):
    w = opened
    w.set_uniform(2)
    assert {r.bits for r in w.layers.rows} == {2}
    assert _budget_numbers(w)[0] == pytest.approx(2.0)
    w.table.sortByColumn(COL["params"], Qt.SortOrder.DescendingOrder)
    first = w.proxy.index(0, COL["params"]).data()
    assert first == "8,192"


def test_bad_model_path_gives_message_and_window_stays_usable(run_to_end, opened, tiny_llama, tmp_path):
    w = opened
    outcome = run_to_end(w, lambda: w.open_model(str(tmp_path / "no-such-model")))
    assert outcome == "failed"
    text = w.runs.message.text()
    assert "Error" in text and "no-such-model" in text
    # The open model, its table and the controls are untouched and usable.
    assert w.model_source == str(tiny_llama) and w.layers.rowCount() == 14
    assert w.picker.open_button.isEnabled() and w.strategies.run_buttons["quantize"].isEnabled()
    w.set_uniform(3)
    assert _budget_numbers(w)[0] == pytest.approx(3.0)
