"""The main window: model picker and summary, the plan (layer table, rules, heat map),
job launchers with live plots, history, Try it, and the current job's status strip.

Every action is a job run by the worker (worker_client.py); the window only edits the
plan, starts jobs and draws what their events say.
"""

from __future__ import annotations

from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtWidgets import (QHBoxLayout, QHeaderView, QLabel, QLineEdit, QMainWindow, QPushButton,
                               QSplitter, QStyledItemDelegate, QTableView, QTabWidget, QVBoxLayout, QWidget)

from bitsmith.core.errors import BadInput
from bitsmith.core.events import read_events
from bitsmith.core.jobs import ModelSpec, job_kinds, make_job
from bitsmith.core.rundir import RunDir

from . import paths
from .estimate_box import EstimateBox
from .first_run import FirstRunHint
from .heatmap import HeatMap
from .history import HistoryPanel, checkpoint_label, model_of, pareto_points, sweep_points
from .layer_model import BIT_CHOICES, COL, KEEP_BITS, LayerFilterProxy, LayerTableModel
from .plan_bridge import budget_line, layer_bytes, plan_from_table, plan_spec_from_table
from .plan_state import load_plan, save_plan
from .plots import LivePlots
from .rule_editor import RuleEditor, bits_combo
from .run_view import RunDialog, plan_bits
from .run_target import RunTarget
from .runs_panel import RunsPanel
from .strategies import StrategiesPanel
from .try_it import TryIt
from .widgets import SpinBox, window_hint
from .worker_client import WorkerClient, create_run

# No antialiasing: bars and images do not need it, and it doubles the cost of a repaint.
pg.setConfigOptions(antialias=False, background="w", foreground="#333333")
START_BITS, START_GROUP = 4, 64


class BitsDelegate(QStyledItemDelegate):
    """A combo box of the allowed bit-widths for the bits column."""

    def createEditor(self, parent, option, index):
        if index.column() == COL["bits"]:
            return bits_combo(START_BITS, parent)        # inside the cell, not a top-level window
        return super().createEditor(parent, option, index)

    def setEditorData(self, editor, index):
        if index.column() == COL["bits"]:
            editor.setCurrentIndex(BIT_CHOICES.index(index.data(Qt.ItemDataRole.EditRole)))
        else:
            super().setEditorData(editor, index)

    def setModelData(self, editor, model, index):
        if index.column() == COL["bits"]:
            model.setData(index, editor.currentData(), Qt.ItemDataRole.EditRole)
        else:
            super().setModelData(editor, model, index)


def serve_combo():
    """The serving targets of core/serve.py's registry, each with its note as a tooltip."""
    from PySide6.QtWidgets import QComboBox

    from bitsmith.core.serve import SERVE_TARGETS

    combo = QComboBox()
    for i, target in enumerate(SERVE_TARGETS.values()):
        combo.addItem(target.name, target.name)
        combo.setItemData(i, target.note, Qt.ItemDataRole.ToolTipRole)
    return combo


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Bitsmith")
        self.settings = settings or QSettings(paths.ORGANIZATION, paths.APPLICATION)
        self.client = WorkerClient(self)
        self.model_source: str | None = None
        self.pending_source: str | None = None
        self.checkpoints: list[tuple[str, str]] = []     # (label, RUN/quantized) of this model's runs
        self.model_summary: dict = {}
        self.inventory: dict = {}
        self.current_kind: str | None = None
        self.last_eval: dict | None = None
        self.last_error = ""                 # the current job's error message (a failed open)
        self.plan_source = "by hand"         # what last set the layer table, for the rule editor
        self._restoring = False

        from .model_picker import ModelPicker

        self.picker = ModelPicker(self.settings)
        self.picker.openRequested.connect(self.open_model)
        self.summary = QLabel("Open a model to begin.", objectName="summary", wordWrap=True)
        self.export_button = QPushButton("Export…", clicked=self.open_export)

        self.layers = LayerTableModel(self)
        self.layers.planChanged.connect(self.update_budget)
        self.layers.planChanged.connect(self._plan_changed)
        self.estimate = EstimateBox(self.job_doc)
        self.layers.planChanged.connect(self.estimate.request)
        self._save_timer = QTimer(self, singleShot=True, interval=400, timeout=self.save_plan_state)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._plan_page(), "Plan")
        self.tabs.addTab(self._run_page(), "Run")
        self.history = HistoryPanel(paths.runs_root)
        self.history.openRequested.connect(lambda r: self._dialog([r]))
        self.history.compareRequested.connect(lambda a, b: self._dialog([a, b]))
        self.history.resumeRequested.connect(lambda r: self.resume(r.run))
        self.history.usePlanRequested.connect(self.use_plan_of)
        self.tabs.addTab(self.history, "History")
        self.try_it = TryIt()
        self.tabs.addTab(self.try_it, "Try it")
        self.runs = RunsPanel(self.client)
        self.runs.resumeRequested.connect(self.resume)
        self.first_run = FirstRunHint(self.settings)

        top = QHBoxLayout()
        top.addWidget(self.picker, 1)
        top.addWidget(self.export_button)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.first_run)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.runs)
        self.setCentralWidget(central)
        self._connect_client()
        self.history.refresh()
        self.resize(1500, 950)

    # --- pages ---------------------------------------------------------------------------

    def _plan_page(self) -> QWidget:
        self.proxy = LayerFilterProxy(self)
        self.proxy.setSourceModel(self.layers)
        self.table = QTableView(sortingEnabled=True, alternatingRowColors=True)
        self.table.setModel(self.proxy)
        self.table.setItemDelegate(BitsDelegate(self.table))
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        # Column widths are fitted once per model (ResizeToContents would re-measure every
        # cell on each update, which costs tens of ms per layer event on a big model).
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        # The long name column takes what is left (names elide in the middle), so the result
        # columns at the right stay in view.
        self.table.horizontalHeader().setSectionResizeMode(COL["name"], QHeaderView.ResizeMode.Stretch)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.verticalHeader().setVisible(False)
        self.table.sortByColumn(COL["name"], Qt.SortOrder.AscendingOrder)
        self.filter = QLineEdit(placeholderText="filter layers by regex, e.g. down_proj or layers\\.1\\.")
        self.filter.textChanged.connect(self.proxy.set_pattern)
        self.sel_bits = bits_combo(START_BITS)
        self.sel_group = SpinBox(minimum=8, maximum=4096, value=START_GROUP, singleStep=32)
        set_sel = QPushButton("Set selected", clicked=self.set_selected_bits)
        self.serve = serve_combo()
        self.serve.setCurrentIndex(max(0, self.serve.findData(self.settings.value("plan/serve", "any"))))
        self.layers.set_fused(self._serve_fuses())
        self.serve.currentIndexChanged.connect(self._serve_changed)
        tools = QHBoxLayout()
        tools.addWidget(self.filter, 1)
        tools.addWidget(QLabel("bits"))
        tools.addWidget(self.sel_bits)
        tools.addWidget(QLabel("group"))
        tools.addWidget(self.sel_group)
        tools.addWidget(set_sel)
        tools.addWidget(QLabel("serve with"))
        tools.addWidget(self.serve)
        presets = QHBoxLayout()
        presets.addWidget(QLabel("Uniform:"))
        for bits in (8, 4, 3, 2, KEEP_BITS):
            presets.addWidget(QPushButton("16-bit" if bits == KEEP_BITS else f"{bits}-bit",
                                          clicked=lambda _=False, b=bits: self.set_uniform(b)))
        presets.addStretch(1)
        self.budget = QLabel("no model open", objectName="budget")
        left = QWidget()
        col = QVBoxLayout(left)
        col.setContentsMargins(0, 0, 0, 0)
        col.addLayout(tools)
        col.addLayout(presets)
        col.addWidget(self.table, 1)
        col.addWidget(self.budget)
        self.rules = RuleEditor()
        self.rules.applied.connect(self._apply_rules)
        self.rules.changed.connect(self._schedule_save)
        self.heatmap = HeatMap(self.layers)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.rules)
        side.addWidget(self.heatmap)
        side.setSizes([460, 340])
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(side)
        split.setSizes([1000, 460])
        return split

    def _run_page(self) -> QWidget:
        self.run_target = RunTarget(self.settings)
        self.strategies = StrategiesPanel()
        self.strategies.runRequested.connect(self.start_job)
        self.strategies.problem.connect(lambda text: self.runs.set_message(text, "error"))
        self.plots = LivePlots()
        self.plots.planRequested.connect(self.use_plan_file)
        self.live_sweep: list[dict] = []      # this run's sweep points, as their events arrive
        self.estimate.watch(self.strategies)
        left = QWidget()
        col = QVBoxLayout(left)
        col.setContentsMargins(0, 0, 0, 0)
        col.addWidget(self.run_target)
        col.addWidget(self.strategies, 1)
        col.addWidget(self.estimate)
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(self.plots)
        split.setSizes([460, 1000])
        return split

    # --- the worker ---------------------------------------------------------------------------

    def _connect_client(self) -> None:
        c = self.client
        c.layer.connect(self._on_layer)
        c.metric.connect(self.plots.feed)
        c.metric.connect(self._on_sweep_point)
        c.plan.connect(self._on_plan)
        c.result.connect(self._on_result)
        c.finished.connect(self._on_finished)
        c.warning.connect(self.plots.warn)
        c.error.connect(lambda kind, message, hint: setattr(self, "last_error", message))

    def _on_layer(self, event: dict) -> None:
        self.plots.feed(event)
        self.layers.set_result(event.get("name", ""), rel_error=event.get("rel_error"),
                               spike=event.get("spike_score"), bits=event.get("bits"))

    def _on_plan(self, layers: dict) -> None:
        self.plan_source = f"by the {self.current_kind} run {self.client.run_dir.path.name}"
        changed = self.layers.apply_plan(layers)
        self.runs.append_log(f"plan from {self.current_kind}: {changed} layers set in the table")

    def _on_result(self, report: dict) -> None:
        if self.current_kind == "inspect":
            self._load_inventory(report)
        elif self.current_kind == "eval" and "ppl" in report:
            self.last_eval = report
            self.update_budget()

    def _on_finished(self, outcome: str, code: int) -> None:
        self.strategies.set_running(False)
        self.estimate.hold(False)
        self.picker.open_button.setEnabled(True)
        if self.current_kind == "inspect" and outcome != "done":
            self._open_failed(outcome)
        if self.current_kind == "export" and outcome == "done":
            self._say_where_export_went()
        self.refresh_history()

    def _say_where_export_went(self) -> None:
        report = self.client.run_dir.read_report() or {}
        out = Path(report.get("out", self.client.run_dir.export_dir))
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else 0
        files = [f for f in report.get("files", []) if f != "README.md"]
        main = next((f for f in files if f.endswith(".gguf")), None) or (files[0] if files else "")
        self.runs.set_message(f"Exported {report.get('format', '')} to <a href='{out.as_uri()}'>{out}</a> "
                              f"({size / 2**20:.1f} MiB{', e.g. ' + main if main else ''})", "ok")
        self.runs.message.setOpenExternalLinks(True)
        self.runs.append_log(f"export written to {out}")

    def _open_failed(self, outcome: str) -> None:
        """The summary must not stay on "Opening …": say what failed, and what is still open."""
        why = self.last_error or {"cancelled": "cancelled", "crashed": "the worker stopped"}.get(outcome, outcome)
        text = f"<span style='color:#a61b1b'><b>Could not open {self.pending_source}:</b> {why}</span>"
        if self.model_source:
            self.update_budget()
            self.summary.setText(text + f"<br>Still open: {self.summary.text()}")
        else:
            self.summary.setText(text + "<br>Choose another model: <i>default</i>, a folder, a .gguf file or a hub id.")

    def start_job(self, kind: str, fields: dict) -> RunDir | None:
        """Freeze a job for the open model (and the table's plan) and start the worker."""
        if self.client.running:
            self.runs.set_message("A job is already running: wait for it or cancel it.", "warn")
            return None
        self.live_sweep = []
        if self.model_source is None and kind != "inspect":
            self.runs.set_message("Open a model first.", "warn")
            return None
        try:
            # opening a model (inspect) stays here: it is what the window itself shows
            submit_to = self.run_target.submit_address() if kind != "inspect" else None
            run = create_run(kind, **self.job_fields(kind, fields))
        except (BadInput, TypeError, ValueError) as err:
            message = getattr(err, "message", str(err))
            hint = window_hint(getattr(err, "hint", ""))
            self.runs.set_message(f"<b>Cannot start {kind}:</b> {message}" + (f"<br><i>{hint}</i>" if hint else ""),
                                  "error")
            return None
        self._start(run, kind, submit_to=submit_to)
        return run

    def _serve_fuses(self) -> bool:
        from bitsmith.core.serve import serve_target

        return serve_target(self.serve.currentData()).fused

    def _serve_changed(self) -> None:
        """Fused targets make the table edit whole q/k/v and gate/up groups."""
        self.layers.set_fused(self._serve_fuses())
        self.settings.setValue("plan/serve", self.serve.currentData())
        self.update_budget()

    def job_fields(self, kind: str, fields: dict) -> dict:
        """The page's fields, with the open model and the table's plan where the job takes them."""
        spec_fields = {f for f in job_kinds()[kind].spec_cls.__dataclass_fields__}
        fields = dict(fields)
        if "model" in spec_fields and "model" not in fields:
            fields["model"] = ModelSpec(self.model_source)
        if "plan" in spec_fields and "plan" not in fields:
            fields["plan"] = self.plan_for_job(job_kinds()[kind].spec_cls)
        if "serve" in spec_fields and fields.get("serve", "any") == "any":
            fields["serve"] = self.serve.currentData()     # the plan panel's target, unless the form names one
        return fields

    def job_doc(self, kind: str) -> dict:
        """The job the Run page's button would start now (what the pre-flight estimate takes)."""
        if self.model_source is None:
            raise ValueError("open a model first")
        return make_job(kind, **self.job_fields(kind, self.strategies.fields_for(kind))).to_dict()

    def plan_for_job(self, spec_cls):
        """The table's plan in the form the job's `plan` field takes (a PlanSpec of rules)."""
        from bitsmith.core.config import from_dict
        from bitsmith.core.plan import PlanSpec

        return from_dict(PlanSpec, plan_spec_from_table(self.layers.rows), where="plan")

    def _start(self, run: RunDir, kind: str, resume: bool = False, submit_to: str | None = None) -> None:
        self.current_kind, self.last_error = kind, ""
        self.runs.job_started(kind, run, resumed=resume, where=self.run_target.describe() if submit_to else "")
        self.strategies.set_running(True)
        self.estimate.hold(True)
        self.picker.open_button.setEnabled(False)
        if kind == "eval":
            self.plots.clear_curves()        # the layer errors of the run it measures stay
        elif kind in ("quantize", "search", "tune"):
            self.plots.clear_run()
            if kind in ("quantize", "search"):
                self.layers.clear_results()
            if resume:
                self._replay(run)
        self.client.start(run, resume=resume, submit_to=submit_to)

    def _replay(self, run: RunDir) -> None:
        """A resumed run shows what it did before the resume: its layers and curves, from
        events.jsonl (the new events then continue them; repeated steps replace old points)."""
        for event in read_events(run.events_file):
            if event["type"] == "layer":
                self._on_layer(event)
            elif event["type"] == "metric":
                self.plots.feed(event)

    def resume(self, run: RunDir) -> None:
        if self.client.running:
            self.runs.set_message("A job is already running: wait for it or cancel it.", "warn")
            return
        kind = run.read_job_doc().get("kind", "?")
        try:                    # the run directory is shared: it resumes wherever "Run on" says
            submit_to = self.run_target.submit_address() if kind != "inspect" else None
        except BadInput as err:
            self.runs.set_message(f"<b>Cannot resume {kind}:</b> {err.message}<br><i>{err.hint}</i>", "error")
            return
        self._start(run, kind, resume=True, submit_to=submit_to)

    # --- the model --------------------------------------------------------------------------

    def open_model(self, source: str) -> RunDir | None:
        """Inspect `source` in the worker; the table fills when its report arrives."""
        self.pending_source = source.strip()
        run = self.start_job("inspect", {"model": ModelSpec(self.pending_source)})
        if run is not None:
            self.summary.setText(f"Opening {self.pending_source}…")
        return run

    def _load_inventory(self, report: dict) -> None:
        self.model_source = self.pending_source
        self.model_summary, self.inventory, self.last_eval = report["model"], report["summary"], None
        self.picker.add_recent(self.model_source)
        self._restoring = True
        self.plan_source = f"when the model opened (uniform {START_BITS}-bit)"
        self.layers.set_layers(report["layers"], bits=START_BITS, group_size=START_GROUP)
        self.table.resizeColumnsToContents()
        self.rules.set_layers(report["layers"])
        self.plots.set_layers([l["name"] for l in report["layers"]])
        self.plots.clear_run()
        self.restore_plan_state()
        self._restoring = False
        self.setWindowTitle(f"Bitsmith — {self.model_source}")
        self.update_budget()
        self.refresh_history()
        self.estimate.request()

    # --- the plan survives a restart -------------------------------------------------------------

    def restore_plan_state(self) -> bool:
        saved = load_plan(self.settings, self.model_source, [r.name for r in self.layers.rows])
        if saved is None:
            return False
        self.rules.restore(saved["rules"])
        table = saved["table"]
        self.layers.apply_plan({n: {"bits": b, "group_size": g} for n, (b, g) in table.items()})
        self.plan_source = "in an earlier session"
        self.rules.set_table_plan(self.layers.plan(), self.plan_source)
        self.runs.append_log(f"restored the plan of {self.model_source} from the last session")
        return True

    def _plan_changed(self) -> None:
        self.rules.set_table_plan(self.layers.plan(), self.plan_source)
        self.plan_source = "by hand"          # until the next run or rule sets it
        self._schedule_save()

    def _schedule_save(self) -> None:
        if self.model_source and self.layers.rows and not self._restoring:
            self._save_timer.start()

    def save_plan_state(self) -> None:
        if self.model_source and self.layers.rows:
            save_plan(self.settings, self.model_source, self.layers.plan(), self.rules.state())

    def _apply_rules(self, plan) -> None:
        self.plan_source = "by Apply to table"
        self.layers.apply_plan(plan.to_dict())

    def update_budget(self) -> None:
        if not self.layers.rows:
            return
        plan = plan_from_table(self.layers.rows)
        budget = plan.budget()
        self.layers.set_layer_bytes(layer_bytes(plan))
        split = self.layers.split_groups()
        warning = (f" · <span style='color:#b3261e'>{len(split)} fused group(s) split, e.g. "
                   f"{split[0][0].rsplit('.', 1)[0]}: {self.serve.currentText()} loads one scheme per group</span>"
                   if split else "")
        self.budget.setText(f"Layer table: {budget_line(budget)}{warning}")
        m, inv = self.model_summary, self.inventory
        other = 2 * (m.get("parameters", 0) - inv.get("params", 0))   # embeddings, head, norms at 16-bit
        text = (f"<b>{m.get('architecture', '?')}</b> from {m.get('location', self.model_source)} · "
                f"{m.get('parameters', 0) / 1e6:.1f}M parameters · {inv.get('layers', 0)} linear layers in "
                f"{inv.get('blocks', 0)} blocks · whole model at 16-bit {(2 * m.get('parameters', 0)) / 2**20:.1f} MiB, "
                f"under the table's plan {(other + budget.total_bytes) / 2**20:.1f} MiB "
                f"<span style='color:#6b7580'>(linear layers as planned + {other / 2**20:.1f} MiB of embeddings, "
                "head and norms at 16-bit)</span>")
        if self.last_eval:
            which = "quantized" if self.last_eval.get("model", {}).get("quantized") else "dense"
            text += f" · last perplexity ({which}) {self.last_eval['ppl']:.3f} on {self.last_eval['data']}"
        self.summary.setText(text)

    # --- plan edits -----------------------------------------------------------------------------

    def selected_rows(self) -> list[int]:
        rows = {self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedIndexes()}
        return sorted(rows)

    def set_selected_bits(self) -> None:
        rows = self.selected_rows()
        if rows:
            self.layers.set_bits(rows, self.sel_bits.currentData(), self.sel_group.value())

    def set_uniform(self, bits: int) -> None:
        self.plan_source = f"by the uniform {bits}-bit button"
        self.layers.set_bits(list(range(len(self.layers.rows))), bits, self.sel_group.value())

    def _on_sweep_point(self, event: dict) -> None:
        """A budget sweep's target finished: its point joins the Pareto view at once."""
        if event.get("name") != "sweep_point":
            return
        self.live_sweep.append({"target_bits": event.get("target_bits"), "avg_code_bits": event.get("avg_code_bits"),
                                "ppl": event.get("value"), "plan_file": event.get("plan_file")})
        self.refresh_history()

    def use_plan_file(self, point: dict) -> None:
        """Load the plan of a clicked Pareto point into the table."""
        from bitsmith.core.errors import BadInput
        from bitsmith.core.plan import Plan, load_plan_file

        try:
            plan = load_plan_file(point["plan_file"])
        except (BadInput, OSError) as err:
            self.runs.set_message(f"Could not read the plan of {point['label']}: {err}", "error")
            return
        if not isinstance(plan, Plan):
            self.runs.set_message(f"{point['label']} has rules, not a resolved plan: open it from History", "error")
            return
        self.plan_source = f"from the Pareto point {point['label']}"
        changed = self.layers.apply_plan(plan.to_dict())
        self.runs.set_message(f"Took the plan of {point['label']} ({point['bits']:.3f} bits, perplexity "
                              f"{point['ppl']:.2f}): {changed} layers set.", "ok")
        self.tabs.setCurrentIndex(0)

    def use_plan_of(self, record) -> None:
        self.plan_source = f"from the plan of {record.name}"
        changed = self.layers.apply_plan(plan_bits(record))
        self.runs.set_message(f"Took the plan of {record.name}: {changed} layers set.", "ok")
        self.tabs.setCurrentIndex(0)

    # --- history, dialogs ------------------------------------------------------------------------

    def refresh_history(self) -> None:
        self.history.refresh()
        records = self.history.records
        if self.model_source:
            current = self.client.run_dir.path.name if self.client.run_dir else None
            points = pareto_points(records, self.model_source, current)
            known = {p["plan_file"] for p in points}     # a finished sweep's rows come from its report
            live = [p for p in sweep_points(self.live_sweep, "this run") if p["plan_file"] not in known]
            self.plots.set_pareto(points + live)
        by_path = {str(r.run.path): r for r in records}
        quantized = []
        for r in records:
            base, bits = model_of(r, by_path)
            if r.has_quantized and r.state == "done" and base == self.model_source:
                quantized.append((checkpoint_label(r, bits), str(r.run.quantized_dir)))
        self.checkpoints = quantized
        self.try_it.set_models(self.model_source or "default", quantized)
        self.strategies.set_checkpoints(self.model_source, quantized)
        mine = [r for r in records if r.state == "done" and model_of(r, by_path)[0] == self.model_source]
        done = {"plan"} if self.model_source else set()
        done |= {r.kind for r in mine if r.kind in ("quantize", "eval")}
        done |= {"quantize" for r in mine if r.kind == "search" and r.has_quantized}
        done |= {"export" for r in records if r.kind == "export" and r.state == "done"
                 and any(str(r.job.get("source", "")).startswith(str(q.run.path)) for q in mine)}
        self.first_run.set_done(done)

    def _dialog(self, records) -> None:
        dialog = RunDialog(records, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        self.last_dialog = dialog

    def open_export(self) -> None:
        from .export_dialog import ExportDialog

        dialog = ExportDialog(self, self.checkpoints)
        dialog.show()
        self.last_dialog = dialog

    def closeEvent(self, event) -> None:
        self.estimate.process.stop()
        for client in [self.client, *self.try_it.clients]:
            if client.running:
                client.cancel()
                if not client.wait_finished(3000):
                    client.kill()
                    client.wait_finished(2000)
        super().closeEvent(event)
