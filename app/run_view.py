"""One past run: its report, plan and plots, read from the run directory; and runs side by
side: a table of their figures (perplexity, KL, size, bits, method), a layer-by-layer plan
diff, their curves overlaid, and their own plots on shared axes."""

from __future__ import annotations

import json

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QTableWidget, QTableWidgetItem,
                               QTabWidget, QVBoxLayout, QWidget)

from bitsmith.core.events import read_events
from bitsmith.core.quant.registry import quantizers
from bitsmith.core.search.registry import allocators

from .history import RunRecord, _dig, started_text
from .plots import CURVE_COLOURS, SKIP_METRICS, LivePlots, cache_axes, fit_range


def plan_bits(record: RunRecord) -> dict[str, object]:
    """{layer: bits} from plan.json, or from the run's last `plan` event."""
    layers = (record.plan or {}).get("layers")
    if isinstance(layers, dict):
        return {n: (e.get("bits") if isinstance(e, dict) else e) for n, e in layers.items()}
    plans = [e for e in read_events(record.run.events_file) if e["type"] == "plan"]
    return dict(plans[-1].get("layers", {})) if plans else {}


def error_kind(events: list[dict]) -> str | None:
    """"output" (‖ΔW X‖²/‖W X‖², with calibration data) or "weight" (‖ΔW‖²/‖W‖², RTN without)."""
    kinds = {e.get("error_kind", "output") for e in events
             if e["type"] == "layer" and e.get("rel_error") is not None and not e.get("keep")}
    return None if not kinds else ("weight" if kinds == {"weight"} else "output")


# how each method is named: the quantizers' and allocators' own labels (their registries), the tuners'
METHOD_NAMES = {**{q.name: q.label for q in quantizers().values()}, **{a.name: a.label for a in allocators().values()},
                "pv": "PV-Tuning", "ste": "STE", "continuous": "continuous", "eora": "EoRA"}


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def compare_rows(records: list[RunRecord], events: list[list[dict]]) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) for the comparison table."""
    def size(r: RunRecord):
        value = _dig(r.report, "total_bytes", "budget.total_bytes") or _dig(r.plan, "budget.total_bytes")
        return None if value is None else value / 2**20

    def ppl(r: RunRecord) -> str:
        if r.ppl is None:
            return "— (evaluate its checkpoint: Run → Evaluate)" if r.has_quantized else "—"
        where = f" on {r.ppl_data}" if r.ppl_data else ""
        return f"{r.ppl:.3f}{where}" + (f" (eval {r.measured_by.name})" if r.measured_by is not None else "")

    def err(r: RunRecord, ev: list[dict]) -> str:
        value = _dig(r.report, "mean_rel_error", "best.mean_rel_error")
        kind = error_kind(ev)
        label = {"weight": "weight space (RTN, no calibration)", "output": "output"}.get(kind or "", "")
        return "—" if value is None else f"{value:.4g} ({label})" if label else f"{value:.4g}"

    seconds = [(r.report or {}).get("seconds") for r in records]
    return [
        ("kind", [r.kind for r in records]),
        ("method", [METHOD_NAMES.get(r.method, r.method or "—") for r in records]),
        ("model", [r.source or "—" for r in records]),
        ("state", [r.state for r in records]),
        ("perplexity", [ppl(r) for r in records]),
        ("KL to dense", [_fmt(r.kl, 4) for r in records]),
        ("avg code bits", [_fmt(r.avg_bits) for r in records]),
        ("effective bits", [_fmt(_dig(r.report, "effective_bits", "budget.effective_bits")
                                 or _dig(r.plan, "budget.effective_bits")) for r in records]),
        ("linear layers (MiB)", [_fmt(size(r), 2) for r in records]),
        ("mean rel. error", [err(r, ev) for r, ev in zip(records, events)]),
        ("time (s)", [_fmt(s, 1) for s in seconds]),
        ("started", [started_text(r) for r in records]),
    ]


def plan_diff(records: list[RunRecord]) -> list[tuple[str, list[object]]]:
    """[(layer, [bits in each run])] for the layers whose bits differ between the runs."""
    plans = [plan_bits(r) for r in records]
    names = list(dict.fromkeys(n for p in plans for n in p))
    return [(n, [p.get(n, "—") for p in plans]) for n in names if len({str(p.get(n, "—")) for p in plans}) > 1]


def _table(headers: list[str], rows: list[list[str]]) -> QTableWidget:
    table = QTableWidget(len(rows), len(headers))
    table.setHorizontalHeaderLabels(headers)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            table.setItem(i, j, QTableWidgetItem(str(value)))
    table.resizeColumnsToContents()
    table.horizontalHeader().setStretchLastSection(True)
    table.verticalHeader().setVisible(False)
    return table


class RunView(QWidget):
    def __init__(self, record: RunRecord, events: list[dict] | None = None, parent=None) -> None:
        super().__init__(parent)
        self.record = record
        self.events = read_events(record.run.events_file) if events is None else events
        head = QLabel(f"<b>{record.name}</b> — {record.kind} of {record.source or '?'} — {record.state}, "
                      f"started {started_text(record)}", wordWrap=True)
        tabs = QTabWidget()
        self.plots = LivePlots(live=False)
        self.plots.load_events(self.events)
        tabs.addTab(self.plots, "Plots")
        bits = plan_bits(record)
        tabs.addTab(_table(["layer", "bits"], [[n, b] for n, b in bits.items()]), f"Plan ({len(bits)} layers)")
        report = QPlainTextEdit(readOnly=True)
        report.setPlainText(json.dumps(record.report, indent=2) if record.report else
                            f"no report.json yet (state: {record.state})")
        tabs.addTab(report, "Report")
        job = QPlainTextEdit(readOnly=True)
        job.setPlainText(json.dumps(record.job, indent=2))
        tabs.addTab(job, "Job")
        layout = QVBoxLayout(self)
        layout.addWidget(head)
        layout.addWidget(self.metrics_label(record))
        layout.addWidget(tabs, 1)

    @staticmethod
    def metrics_label(r: RunRecord) -> QLabel:
        parts = []
        if r.method:
            parts.append(METHOD_NAMES.get(r.method, r.method))
        if r.ppl is not None:
            parts.append(f"perplexity {r.ppl:.3f}" + (f" (measured by {r.measured_by.name})" if r.measured_by else ""))
        if r.avg_bits is not None:
            parts.append(f"avg code bits {r.avg_bits:.3f}")
        seconds = (r.report or {}).get("seconds")
        if seconds is not None:
            parts.append(f"{seconds:.1f} s")
        return QLabel(" · ".join(parts) or "no metrics")


def share_axes(views: list[RunView]) -> None:
    """The same y range for the same quantity in every view (link, then one union range)."""
    for attr, values in (("error_plot", lambda v: [e for e, _ in v.plots.errors.values()]),
                         ("spike_plot", lambda v: list(v.plots.spikes.values())),
                         ("fitness_plot", lambda v: list(v.plots.series.get(("fitness", "search"), ([], []))[1]))):
        plots = [getattr(v.plots, attr).getPlotItem() for v in views]
        data = [y for v in views for y in values(v) if np.isfinite(y)]
        for other in plots[1:]:
            other.setYLink(plots[0])
        if data:
            plots[0].setYRange(0 if min(data) >= 0 else min(data), max(data) * 1.05 or 1.0, padding=0)


class OverlayView(QWidget):
    """Every run on one set of axes: the per-layer errors, and each curve both runs share."""

    def __init__(self, views: list[RunView], parent=None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.error_plot = pg.PlotWidget(title="Per-layer error, runs overlaid")
        cache_axes(self.error_plot.getPlotItem())
        self.error_plot.setLabel("bottom", "layer (inventory order)")
        self.error_plot.setLabel("left", "rel. error (log10)")
        self.error_plot.setLogMode(y=True)
        self.error_plot.addLegend()
        for i, view in enumerate(views):
            plots = view.plots
            names = plots._sorted(plots.errors)
            x = [plots.order.get(n, 0) for n in names]
            y = [max(plots.errors[n][0], 1e-12) for n in names]
            colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
            kind = " (weight error)" if plots.error_kind == "weight" else ""
            self.error_plot.plot(x, y, pen=pg.mkPen(colour, width=1.5), symbol="o", symbolSize=4,
                                 symbolBrush=colour, symbolPen=None, name=view.record.name + kind)
        layout.addWidget(self.error_plot, 1)
        metrics = sorted({name for v in views for name, _ in v.plots.series if name not in SKIP_METRICS})
        self.curves = pg.GraphicsLayoutWidget()
        for row, metric in enumerate(metrics):
            plot = self.curves.addPlot(row=row, col=0)
            plot.setLabel("left", metric)
            plot.setLabel("bottom", "step")
            plot.addLegend()
            xs, ys = [], []
            for i, view in enumerate(views):
                for (name, split), (steps, values) in view.plots.series.items():
                    if name == metric:
                        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
                        plot.plot(steps, values, pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=5,
                                  symbolBrush=colour, symbolPen=None, name=f"{view.record.name} ({split})")
                        xs += steps
                        ys += values
            fit_range(plot, xs, ys)
        if metrics:
            layout.addWidget(self.curves, 1)


class RunDialog(QDialog):
    def __init__(self, records: list[RunRecord], parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare runs" if len(records) > 1 else f"Run {records[0].name}")
        events = [read_events(r.run.events_file) for r in records]
        self.views = [RunView(r, ev) for r, ev in zip(records, events)]
        layout = QVBoxLayout(self)
        if len(records) == 1:
            layout.addWidget(self.views[0])
            self.resize(760, 720)
            return
        rows = compare_rows(records, events)
        self.compare_table = _table(["", *[r.name for r in records]], [[label, *cells] for label, cells in rows])
        self.compare_table.resizeRowsToContents()
        self.compare_table.setFixedHeight(self.compare_table.horizontalHeader().sizeHint().height() + 4
                                          + sum(self.compare_table.rowHeight(i) for i in range(len(rows))))
        self.diff = plan_diff(records)
        tabs = QTabWidget()
        side = QWidget()
        row = QHBoxLayout(side)
        for view in self.views:
            row.addWidget(view, 1)
        share_axes(self.views)
        tabs.addTab(side, "Side by side (shared axes)")
        tabs.addTab(OverlayView(self.views), "Overlaid")
        diff_rows = [[n, *bits] for n, bits in self.diff]
        tabs.addTab(_table(["layer", *[r.name for r in records]], diff_rows),
                    f"Plan diff ({len(self.diff)} layers differ)")
        layout.addWidget(self.compare_table)
        layout.addWidget(tabs, 1)
        self.tabs = tabs
        self.resize(760 * len(records), 880)
