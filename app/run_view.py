"""One past run: its report, plan and plots, read from the run directory; and two runs
side by side."""

from __future__ import annotations

import json

from PySide6.QtWidgets import (QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QTableWidget, QTableWidgetItem,
                               QTabWidget, QVBoxLayout, QWidget)

from bitsmith.core.events import read_events

from .history import RunRecord, started_text
from .plots import LivePlots


def plan_bits(record: RunRecord) -> dict[str, object]:
    """{layer: bits} from plan.json, or from the run's last `plan` event."""
    layers = (record.plan or {}).get("layers")
    if isinstance(layers, dict):
        return {n: (e.get("bits") if isinstance(e, dict) else e) for n, e in layers.items()}
    plans = [e for e in read_events(record.run.events_file) if e["type"] == "plan"]
    return dict(plans[-1].get("layers", {})) if plans else {}


class RunView(QWidget):
    def __init__(self, record: RunRecord, parent=None) -> None:
        super().__init__(parent)
        self.record = record
        head = QLabel(f"<b>{record.name}</b> — {record.kind} of {record.source or '?'} — {record.state}, "
                      f"started {started_text(record)}", wordWrap=True)
        tabs = QTabWidget()
        self.plots = LivePlots(live=False)
        self.plots.load_events(read_events(record.run.events_file))
        tabs.addTab(self.plots, "Plots")
        bits = plan_bits(record)
        table = QTableWidget(len(bits), 2)
        table.setHorizontalHeaderLabels(["layer", "bits"])
        for i, (name, b) in enumerate(bits.items()):
            table.setItem(i, 0, QTableWidgetItem(name))
            table.setItem(i, 1, QTableWidgetItem(str(b)))
        table.resizeColumnsToContents()
        tabs.addTab(table, f"Plan ({len(bits)} layers)")
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
        if r.ppl is not None:
            parts.append(f"perplexity {r.ppl:.3f}")
        if r.avg_bits is not None:
            parts.append(f"avg code bits {r.avg_bits:.3f}")
        seconds = (r.report or {}).get("seconds")
        if seconds is not None:
            parts.append(f"{seconds:.1f} s")
        return QLabel(" · ".join(parts) or "no metrics")


class RunDialog(QDialog):
    def __init__(self, records: list[RunRecord], parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare runs" if len(records) > 1 else f"Run {records[0].name}")
        self.views = [RunView(r) for r in records]
        row = QHBoxLayout(self)
        for view in self.views:
            row.addWidget(view, 1)
        self.resize(700 * len(records), 700)
