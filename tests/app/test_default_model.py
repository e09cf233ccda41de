"""The real default model (SmolLM2-135M, 30 blocks × 7 projections) opened in the window."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings



@pytest.mark.slow
def test_open_default_model(run_to_end, app, runs_root, tmp_path):
    from bitsmith.app.main_window import MainWindow

    w = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    w.show()
    try:
        assert run_to_end(w, lambda: w.open_model("default")) == "done", w.runs.message.text()
        assert w.layers.rowCount() == 210
        assert "210 linear layers in 30 blocks" in w.summary.text()
        # The starting rule keeps the spike-prone down_proj of blocks 1 and 29 (ALGORITHMS.md).
        assert "2 × 16-bit" in w.rules.preview.text() and "208 × 4-bit" in w.rules.preview.text()
        w.rules.apply_button.click()
        kept = [r.name for r in w.layers.rows if r.bits == 16]
        assert kept == ["model.layers.1.mlp.down_proj", "model.layers.29.mlp.down_proj"]
        # 576-wide inputs take group 64 (576 = 9·64); 1536-wide down_proj too: 4 + 32/64 = 4.5 bits.
        assert "effective bits" in w.budget.text()
    finally:
        w.close()
