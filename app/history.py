"""History: every run under the runs root, read from its run directory (job.json,
state.json, report.json, plan.json, events.jsonl). Nothing is cached: the folder is the
truth, so runs made by the CLI show up too."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QLabel, QPushButton, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from bitsmith.core.rundir import RunDir


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dig(doc: dict | None, *paths: str):
    """The first present value among dotted paths, e.g. "budget.avg_code_bits"."""
    for p in paths:
        node = doc
        for key in p.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


@dataclass
class RunRecord:
    run: RunDir
    job: dict
    state: str
    started: float
    report: dict | None = None
    plan: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.job.get("kind", "?"))

    @property
    def source(self) -> str:
        return str(_dig(self.job, "model.source") or "")

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def ppl(self) -> float | None:
        value = _dig(self.report, "ppl", "eval.ppl", "after.ppl", "quantized.ppl", "best.ppl")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def avg_bits(self) -> float | None:
        value = _dig(self.report, "budget.avg_code_bits", "plan.budget.avg_code_bits", "avg_code_bits")
        if value is None:
            value = _dig(self.plan, "budget.avg_code_bits")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def has_quantized(self) -> bool:
        return (self.run.quantized_dir / "bitsmith-quant.json").is_file()


def read_run(path: Path) -> RunRecord | None:
    run = RunDir(path)
    job = _read_json(run.job_file)
    if job is None:
        return None
    try:
        state = run.read_state().get("state", "?")
    except (OSError, ValueError):
        state = "unreadable"
    return RunRecord(run, job, state, run.job_file.stat().st_mtime, _read_json(run.report_file),
                     _read_json(run.plan_file))


def scan_runs(root: Path) -> list[RunRecord]:
    """Every run directory under root, newest first."""
    if not root.is_dir():
        return []
    records = [r for p in root.iterdir() if p.is_dir() and (r := read_run(p)) is not None]
    return sorted(records, key=lambda r: r.started, reverse=True)


def model_of(record: RunRecord, by_path: dict[str, RunRecord], depth: int = 0) -> tuple[str, float | None]:
    """(base model source, average bits) of what a run measured. A run on RUN/quantized
    belongs to RUN's base model at RUN's bits (followed through tune runs, which write a
    new RUN/quantized); a dense model counts as 16 bits."""
    source = record.source.rstrip("/")
    parent = by_path.get(str(Path(source).parent)) if Path(source).name == "quantized" else None
    if parent is not None and depth < 8:
        base, bits = model_of(parent, by_path, depth + 1)
        return base, record.avg_bits if record.avg_bits is not None and record.kind != "eval" else bits
    bits = record.avg_bits
    if bits is None and record.kind == "eval" and not _dig(record.report, "model.quantized"):
        bits = 16.0
    return source, bits


def pareto_points(records: list[RunRecord], model_source: str, current: str | None = None) -> list[dict]:
    by_path = {str(r.run.path): r for r in records}
    points = []
    for r in records:
        if r.state != "done" or r.ppl is None:
            continue
        source, bits = model_of(r, by_path)
        if bits is None or source != model_source:
            continue
        points.append({"bits": bits, "ppl": r.ppl, "label": f"{r.name} ({r.kind})", "current": r.name == current})
    return points


COLUMNS = ("run", "kind", "model", "state", "perplexity", "avg bits")


class HistoryPanel(QWidget):
    """The list of runs, with Open / Compare / Resume / Use plan actions."""

    openRequested = Signal(object)            # RunRecord
    compareRequested = Signal(object, object)
    resumeRequested = Signal(object)
    usePlanRequested = Signal(object)

    def __init__(self, root_fn, parent=None) -> None:
        super().__init__(parent)
        self.root_fn = root_fn
        self.records: list[RunRecord] = []
        self.tree = QTreeWidget(columnCount=len(COLUMNS), rootIsDecorated=False, sortingEnabled=True,
                                alternatingRowColors=True)
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.itemDoubleClicked.connect(lambda *_: self._open())
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.open_button = QPushButton("Open", clicked=self._open)
        self.compare_button = QPushButton("Compare two", clicked=self._compare)
        self.resume_button = QPushButton("Resume", clicked=self._resume)
        self.plan_button = QPushButton("Use its plan", clicked=self._use_plan)
        self.summary = QLabel()
        buttons = QHBoxLayout()
        buttons.addWidget(QPushButton("Refresh", clicked=self.refresh))
        for b in (self.open_button, self.compare_button, self.resume_button, self.plan_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.summary)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.tree, 1)
        self._update_buttons()

    def refresh(self) -> None:
        self.records = scan_runs(self.root_fn())
        self.tree.setSortingEnabled(False)
        self.tree.clear()
        for i, r in enumerate(self.records):
            ppl, bits = r.ppl, r.avg_bits
            item = QTreeWidgetItem([r.name, r.kind, r.source, r.state, "" if ppl is None else f"{ppl:.3f}",
                                    "" if bits is None else f"{bits:.3f}"])
            item.setData(0, Qt.ItemDataRole.UserRole, i)
            item.setToolTip(0, str(r.run.path))
            self.tree.addTopLevelItem(item)
        self.tree.setSortingEnabled(True)
        self.tree.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        for c in range(len(COLUMNS)):
            self.tree.resizeColumnToContents(c)
        self.summary.setText(f"{len(self.records)} runs in {self.root_fn()}")
        self._update_buttons()

    def selected(self) -> list[RunRecord]:
        return [self.records[item.data(0, Qt.ItemDataRole.UserRole)] for item in self.tree.selectedItems()]

    def select_names(self, names: list[str]) -> None:
        self.tree.clearSelection()
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.text(0) in names:
                item.setSelected(True)

    def _update_buttons(self) -> None:
        sel = self.selected()
        self.open_button.setEnabled(len(sel) == 1)
        self.compare_button.setEnabled(len(sel) == 2)
        self.resume_button.setEnabled(len(sel) == 1 and sel[0].state in ("interrupted", "cancelled", "failed"))
        self.plan_button.setEnabled(len(sel) == 1 and sel[0].plan is not None)

    def _open(self) -> None:
        if len(sel := self.selected()) == 1:
            self.openRequested.emit(sel[0])

    def _compare(self) -> None:
        if len(sel := self.selected()) == 2:
            self.compareRequested.emit(*sorted(sel, key=lambda r: r.started))

    def _resume(self) -> None:
        if len(sel := self.selected()) == 1:
            self.resumeRequested.emit(sel[0])

    def _use_plan(self) -> None:
        if len(sel := self.selected()) == 1:
            self.usePlanRequested.emit(sel[0])


def started_text(record: RunRecord) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(record.started))
