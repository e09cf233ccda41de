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

from bitsmith.core.files import QUANT_MANIFEST
from bitsmith.core.report import find_ppl
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
    evals: list["RunRecord"] = field(default_factory=list)    # finished evals of this run's checkpoint, newest first

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
    def method(self) -> str:
        """gptq | rtn (quantize), evopress | spike | sensitivity (search), pv | ste | ... (tune)."""
        return str(self.job.get("method") or "")

    @property
    def own_ppl(self) -> float | None:
        """The perplexity this run measured itself (an eval, a search's final eval, a tune)."""
        found = find_ppl(self.report)
        return found["ppl"] if found else None

    @property
    def measured_by(self) -> "RunRecord | None":
        """The newest finished evaluation of this run's checkpoint, if the run has none of its own."""
        return self.evals[0] if self.own_ppl is None and self.evals else None

    @property
    def ppl(self) -> float | None:
        """Its own perplexity, else that of the newest evaluation of its checkpoint."""
        if self.own_ppl is not None:
            return self.own_ppl
        return self.measured_by.own_ppl if self.measured_by is not None else None

    @property
    def kl(self) -> float | None:
        value = _dig(self.report, "kl", "best.kl", "last.kl")
        if value is None and self.measured_by is not None:
            value = _dig(self.measured_by.report, "kl")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def ppl_data(self) -> str:
        """The text the perplexity was measured on."""
        source = self.report if self.own_ppl is not None else (self.measured_by.report if self.measured_by else None)
        return str(_dig(source, "data") or _dig(self.job, "eval_data", "data") or "")

    @property
    def avg_bits(self) -> float | None:
        value = _dig(self.report, "budget.avg_code_bits", "plan.budget.avg_code_bits", "avg_code_bits")
        if value is None:
            value = _dig(self.plan, "budget.avg_code_bits")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def has_quantized(self) -> bool:
        return (self.run.quantized_dir / QUANT_MANIFEST).is_file()


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
    """Every run directory under root, newest first; each finished evaluation of a run's
    checkpoint (RUN/quantized) is attached to that run's `evals`."""
    if not root.is_dir():
        return []
    records = [r for p in root.iterdir() if p.is_dir() and (r := read_run(p)) is not None]
    records.sort(key=lambda r: r.started, reverse=True)
    by_path = {str(r.run.path): r for r in records}
    for r in records:
        source = Path(r.source.rstrip("/"))
        if r.kind == "eval" and r.state == "done" and source.name == "quantized" and r.own_ppl is not None:
            parent = by_path.get(str(source.parent))
            if parent is not None:
                parent.evals.append(r)
    return records


def checkpoint_label(record: RunRecord, bits: float | None = None) -> str:
    """Tells two checkpoints with the same bits apart: name, time, bits, method, perplexity."""
    parts = [started_text(record)]
    if record.method:
        parts.append(record.method.upper() if record.method in ("gptq", "rtn") else record.method)
    if bits:
        parts.append(f"{bits:.2f} bits")
    if record.ppl is not None:
        parts.append(f"ppl {record.ppl:.2f}")
    return f"{record.name} ({', '.join(parts)})"


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
        if r.state != "done" or r.own_ppl is None:        # an attached eval is a point of its own
            continue
        source, bits = model_of(r, by_path)
        if bits is None or source != model_source:
            continue
        plan = r.run.plan_file if r.run.plan_file.is_file() else None
        points.append({"bits": bits, "ppl": r.own_ppl, "label": f"{r.name} ({r.kind})", "current": r.name == current,
                       "plan_file": str(plan) if plan else None})
    for r in records:                                    # every target of a budget sweep is a point
        if r.kind == "search" and model_of(r, by_path)[0] == model_source:
            points.extend(sweep_points((r.report or {}).get("sweep") or [], r.name))
    return points


def sweep_points(rows: list[dict], run_name: str) -> list[dict]:
    """Pareto points of a budget sweep's rows (report["sweep"] or live `sweep_point` events)."""
    return [{"bits": row["avg_code_bits"] if "avg_code_bits" in row else row["target_bits"],
             "ppl": row["ppl"], "label": f"{run_name}: {row['target_bits']:g}-bit target",
             "current": False, "plan_file": row.get("plan_file")}
            for row in rows if row.get("ppl")]


COLUMNS = ("run", "kind", "method", "model", "state", "perplexity", "avg bits")


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
            ppl_text = "" if ppl is None else f"{ppl:.3f}" + (" (eval)" if r.measured_by is not None else "")
            item = QTreeWidgetItem([r.name, r.kind, r.method, r.source, r.state, ppl_text,
                                    "" if bits is None else f"{bits:.3f}"])
            item.setData(0, Qt.ItemDataRole.UserRole, i)
            item.setToolTip(0, str(r.run.path))
            if r.measured_by is not None:
                item.setToolTip(COLUMNS.index("perplexity"), f"measured by {r.measured_by.name} on {r.ppl_data}")
            self.tree.addTopLevelItem(item)
        self.tree.setSortingEnabled(True)
        self.tree.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        for c in range(len(COLUMNS)):
            self.tree.resizeColumnToContents(c)
        n = len(self.records)
        self.summary.setText(f"{n} run{'' if n == 1 else 's'} in {self.root_fn()}")
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
