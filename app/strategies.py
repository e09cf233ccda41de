"""Job launchers: one page per job kind the engine provides (evaluate, quantize, search
with its methods, tune), each with its parameters and a Run button."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QLabel, QPushButton, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .widgets import ComboBox

from bitsmith.core.jobs import ModelSpec, job_kinds
from bitsmith.core.quant.registry import used_by as quantizer_fields
from bitsmith.core.search.registry import used_by as allocator_fields

from .spec_form import SpecForm

# kind -> (tab title, what it does in the window)
ACTIONS = {
    "search": ("Strategy", "Find a bit plan: spike-aware, EvoPress or the sensitivity baseline. "
               "The resulting plan lands in the layer table for you to adjust."),
    "quantize": ("Quantize", "Quantize the model with the plan in the layer table (RTN or GPTQ). "
                 "Layer errors fill the table, heat map and plots as they arrive."),
    "tune": ("Tune", "Fine-tune a quantized run (PV-Tuning / STE) against the dense model; loss and "
             "perplexity/KL plot live."),
    "eval": ("Evaluate", "Perplexity of the open model (dense or a quantized checkpoint) on a text source."),
}


# Kinds whose model is chosen on the page: the open model, or a quantized run's checkpoint.
CHOOSE_MODEL = {"eval": True, "tune": False}     # kind -> whether the open (dense) model is a choice

# Fields only some methods use: disabled while another method is chosen (field -> methods).
USED_BY = {
    "quantize": quantizer_fields(),      # each method declares what it reads (core/quant/methods/)
    "search": allocator_fields(),        # each allocator too (core/search/allocators/)
    "tune": {"tau": ("pv",), "rank": ("eora",),
             **{f: ("pv", "ste") for f in ("code_lr", "code_beta1", "code_precondition", "code_lr_in_grid_steps",
                                           "check_codes", "check_z", "delta_decay")}},
}


class StrategiesPanel(QTabWidget):
    runRequested = Signal(str, dict)      # kind, spec fields from the form
    problem = Signal(str)                 # a form value that does not parse

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.forms: dict[str, SpecForm] = {}
        self.run_buttons: dict[str, QPushButton] = {}
        self.model_choice: dict[str, QComboBox] = {}
        kinds = job_kinds()
        for kind, (title, text) in ACTIONS.items():
            page = QWidget()
            layout = QVBoxLayout(page)
            layout.addWidget(QLabel(text, wordWrap=True))
            if kind in CHOOSE_MODEL:
                combo = ComboBox(minimumContentsLength=30)
                combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
                self.model_choice[kind] = combo
                row = QFormLayout()
                row.addRow("Model", combo)
                layout.addLayout(row)
            form = SpecForm(kinds[kind].spec_cls)
            if "method" in form.widgets and kind in USED_BY:
                form.set_used_by("method", {f: m for f, m in USED_BY[kind].items() if f in form.widgets})
            self.forms[kind] = form
            scroll = QScrollArea(widgetResizable=True)
            scroll.setWidget(form)
            layout.addWidget(scroll, 1)
            button = QPushButton(f"Run {kind}", objectName="primary")
            button.clicked.connect(lambda _=False, k=kind: self._run(k))
            self.run_buttons[kind] = button
            layout.addWidget(button)
            self.addTab(page, title)

    def set_checkpoints(self, dense: str | None, checkpoints: list[tuple[str, str]]) -> None:
        """Fill the model choices: the open model (where it makes sense) and quantized runs."""
        for kind, combo in self.model_choice.items():
            current = combo.currentData()
            combo.clear()
            if CHOOSE_MODEL[kind] and dense:
                combo.addItem(f"the open model: {dense}", None)
            for label, path in checkpoints:
                combo.addItem(f"quantized: {label}", path)
            if combo.count() == 0:
                combo.addItem("no quantized run of this model yet: quantize first", "")
            i = combo.findData(current)
            combo.setCurrentIndex(max(i, 0))

    def set_running(self, running: bool) -> None:
        for button in self.run_buttons.values():
            button.setEnabled(not running)

    def _run(self, kind: str) -> None:
        try:
            values = self.fields_for(kind)
        except ValueError as err:
            self.problem.emit(str(err))
            return
        self.runRequested.emit(kind, values)

    def fields_for(self, kind: str) -> dict:
        """The page's spec fields (its model choice included); ValueError says what is wrong."""
        values = self.forms[kind].values()
        if kind in self.model_choice:
            path = self.model_choice[kind].currentData()
            if path == "":
                raise ValueError(f"{kind} needs a quantized checkpoint: run quantize first")
            if path is not None:
                values["model"] = ModelSpec(path)
        return values
