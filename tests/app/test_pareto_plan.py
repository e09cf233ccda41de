"""Clicking a Pareto point loads its plan into the table; a sweep's points arrive live."""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest

from bitsmith.core.plan import plan_from_bits, save_plan


def _click_point(w, x: float, y: float) -> None:
    """A real mouse click on the Pareto plot at data coordinates (x, y)."""
    plot = w.plots.pareto_plot
    w.tabs.setCurrentIndex(1)                                   # the Run page
    w.plots.setCurrentIndex(w.plots.indexOf(w.plots.stacks["pareto"].parentWidget()))
    QTest.qWait(100)
    scene_pos = plot.getPlotItem().vb.mapViewToScene(QPointF(x, y))
    view_pos = plot.mapFromScene(scene_pos)
    QTest.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, pos=view_pos)
    QTest.qWait(50)


def test_a_live_sweep_point_click_loads_its_plan(opened, tmp_path):
    w = opened
    names = [r.name for r in w.layers.rows]
    bits = {n: (2 if i % 2 else 3) for i, n in enumerate(names)}
    plan = plan_from_bits([_Layer(n, r.d_out, r.d_in) for n, r in zip(names, w.layers.rows)], bits, 64, False)
    plan_file = tmp_path / "plan-2.5.json"
    save_plan(plan_file, plan)
    w.set_uniform(4)
    w._on_sweep_point({"type": "metric", "name": "sweep_point", "value": 42.0, "target_bits": 2.5,
                       "avg_code_bits": 2.5, "plan_file": str(plan_file)})
    points = [spot.data() for spot in w.plots.pareto_points.points()]
    assert any(p.get("plan_file") == str(plan_file) for p in points), points
    _click_point(w, 2.5, 42.0)
    assert {r.name: r.bits for r in w.layers.rows} == bits
    assert "Took the plan of" in w.runs.message.text()


class _Layer:
    def __init__(self, name, d_out, d_in):
        self.name, self.d_out, self.d_in = name, d_out, d_in


def test_a_search_without_a_report_is_no_pareto_point(tmp_path):
    """A cancelled or running search of the open model has no report yet: History still draws."""
    from bitsmith.app.history import RunRecord, pareto_points
    from bitsmith.core.rundir import RunDir

    record = RunRecord(RunDir(tmp_path / "run"), {"kind": "search", "model": {"source": "m"}}, "cancelled", 0.0)
    assert pareto_points([record], "m") == []
