"""The plan panel's serving target: for vLLM/SGLang the table edits a fused group (q/k/v,
gate/up) together, the budget line names a split group, and jobs get the target."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt

from bitsmith.app.layer_model import COL


def _row(w, name_end: str, block: int = 0) -> int:
    return next(i for i, r in enumerate(w.layers.rows) if r.name.endswith(name_end) and r.block == block)


def _bits(w, *ends: str) -> list[int]:
    return [w.layers.rows[_row(w, e)].bits for e in ends]


def test_vllm_edits_whole_fused_groups_and_jobs_get_the_target(opened, monkeypatch):
    w = opened
    try:
        w.serve.setCurrentIndex(w.serve.findData("vllm"))
        assert w.layers.fused and w.settings.value("plan/serve") == "vllm"
        # a bits cell edited in the table: the group follows
        index = w.layers.index(_row(w, "self_attn.k_proj"), COL["bits"])
        assert w.layers.setData(index, 3, Qt.ItemDataRole.EditRole)
        assert _bits(w, "q_proj", "k_proj", "v_proj", "o_proj") == [3, 3, 3, 4]
        # "Set selected" on up_proj alone sets gate_proj too
        w.table.selectRow(w.proxy.mapFromSource(w.layers.index(_row(w, "mlp.up_proj"), 0)).row())
        w.sel_bits.setCurrentIndex(w.sel_bits.findData(2))
        w.set_selected_bits()
        assert _bits(w, "gate_proj", "up_proj", "down_proj") == [2, 2, 4]
        assert "split" not in w.budget.text()
        # a plan from elsewhere (rules, a file) that splits a group: the budget line says so
        w.layers.apply_plan({w.layers.rows[_row(w, "v_proj")].name: 5})
        assert "1 fused group(s) split" in w.budget.text() and "vllm loads one scheme per group" in w.budget.text()
        # a quantize started from the window carries the target, so the worker checks the plan
        started = []
        monkeypatch.setattr(w, "_start", lambda run, kind, **kw: started.append(run))
        run = w.start_job("quantize", {"method": "rtn", "calib_windows": 0})
        assert run is not None and json.loads(run.job_file.read_text())["serve"] == "vllm"
        # any: one layer at a time again
        w.serve.setCurrentIndex(w.serve.findData("any"))
        w.layers.setData(w.layers.index(_row(w, "self_attn.q_proj"), COL["bits"]), 8, Qt.ItemDataRole.EditRole)
        assert _bits(w, "q_proj", "k_proj", "v_proj") == [8, 3, 5] and "split" not in w.budget.text()
    finally:
        w.serve.setCurrentIndex(w.serve.findData("any"))
