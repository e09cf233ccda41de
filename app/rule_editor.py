"""The rule editor: an ordered list of (regex -> bits) rules, first match wins, resolved by
core/plan.py and previewed (bits histogram, budget, first error) before it is applied."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from bitsmith.core.errors import BadInput

from .layer_model import BIT_CHOICES, KEEP_BITS
from .plan_bridge import budget_line, plan_differences, resolve_rules, shadowed_rules
from .widgets import ComboBox, SpinBox

EXAMPLE_RULES = [(r"layers\.(1|29)\.mlp\.down_proj$", KEEP_BITS), (r"self_attn\.(k|v)_proj$", 4)]


def bits_combo(value: int, parent=None) -> QComboBox:
    """The allowed bit-widths; `parent` matters for editors inside a view (without one the
    combo box opens as a top-level window)."""
    combo = ComboBox(parent)
    for b in BIT_CHOICES:
        combo.addItem("16 (keep)" if b == KEEP_BITS else f"{b} bits", b)
    combo.setCurrentIndex(BIT_CHOICES.index(value))
    return combo


class RuleEditor(QWidget):
    """Emits `applied(plan)` with a resolved core.plan.Plan when the user applies the rules."""

    applied = Signal(object)
    changed = Signal()            # rules, default bits or group size edited

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.layers: list[dict] = []
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["pattern (regex on the layer name)", "bits"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemChanged.connect(self._preview)
        self.table.setMinimumHeight(70)           # the preview under it must never be clipped
        self.default_bits = bits_combo(4)
        self.default_bits.currentIndexChanged.connect(self._preview)
        self.group_size = SpinBox(minimum=8, maximum=4096, value=64, singleStep=32)
        self.group_size.valueChanged.connect(self._preview)
        buttons = QHBoxLayout()
        for text, slot in (("Add rule", self.add_rule), ("Remove", self._remove), ("Up", lambda: self._move(-1)),
                           ("Down", lambda: self._move(1))):
            buttons.addWidget(QPushButton(text, clicked=slot))
        buttons.addStretch(1)
        self.apply_button = QPushButton("Apply to table", clicked=self._apply, objectName="primary")
        buttons.addWidget(self.apply_button)
        form = QFormLayout()
        form.addRow("Every other layer", self.default_bits)
        form.addRow("Group size", self.group_size)
        self.preview = QLabel(wordWrap=True, objectName="preview")
        self.table_note = QLabel(wordWrap=True)      # whether the layer table still follows these rules
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Rules, first match wins:"))
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addLayout(form)
        layout.addWidget(self.preview)
        layout.addWidget(self.table_note)
        self.plan = None
        self.table_plan: dict[str, tuple[int, int]] = {}
        self.table_source = "by hand"

    def set_layers(self, layers: list[dict]) -> None:
        self.layers = list(layers)
        if self.table.rowCount() == 0 and any("down_proj" in l["name"] for l in layers):
            blocks = sorted({l["block"] for l in layers})
            # The spike-carrying down_proj layers (ALGORITHMS.md): block 1 and the last block.
            pattern = rf"layers\.({blocks[min(1, len(blocks) - 1)]}|{blocks[-1]})\.mlp\.down_proj$"
            self.add_rule(pattern, KEEP_BITS)
        self._preview()

    def add_rule(self, pattern: str = "", bits: int = 4) -> None:
        self.table.blockSignals(True)
        row = self.table.rowCount()
        self.table.insertRow(row)
        self.table.setItem(row, 0, QTableWidgetItem(pattern or r"mlp\.down_proj$"))
        combo = bits_combo(bits, self.table)
        combo.currentIndexChanged.connect(self._preview)
        self.table.setCellWidget(row, 1, combo)
        self.table.blockSignals(False)
        self.table.setCurrentCell(row, 0)
        self._preview()

    def rules(self) -> list[tuple[str, int]]:
        return [(self.table.item(r, 0).text(), self.table.cellWidget(r, 1).currentData())
                for r in range(self.table.rowCount()) if self.table.item(r, 0)]

    def state(self) -> dict:
        """What a restart restores: the rules, the default bits and the group size."""
        return {"rules": [list(r) for r in self.rules()], "default_bits": self.default_bits.currentData(),
                "group_size": self.group_size.value()}

    def restore(self, state: dict) -> None:
        bits = state.get("default_bits")
        if bits in BIT_CHOICES:
            self.default_bits.setCurrentIndex(BIT_CHOICES.index(bits))
        if isinstance(state.get("group_size"), int):
            self.group_size.setValue(state["group_size"])
        rules = [(str(p), int(b)) for p, b in state.get("rules", []) if int(b) in BIT_CHOICES]
        self.set_rules(rules)

    def set_rules(self, rules: list[tuple[str, int]]) -> None:
        self.table.setRowCount(0)
        for pattern, bits in rules:
            self.add_rule(pattern, bits)

    def _remove(self) -> None:
        row = self.table.currentRow()
        if row >= 0:
            self.table.removeRow(row)
            self._preview()

    def _move(self, step: int) -> None:
        rules, row = self.rules(), self.table.currentRow()
        if not 0 <= row < len(rules) or not 0 <= row + step < len(rules):
            return
        rules[row], rules[row + step] = rules[row + step], rules[row]
        self.set_rules(rules)
        self.table.setCurrentCell(row + step, 0)

    def _preview(self, *_) -> None:
        """Resolve the rules now and say what they would do."""
        self.plan = None
        self.changed.emit()
        if not self.layers:
            self.preview.setText("Open a model to preview the rules.")
            self.apply_button.setEnabled(False)
            return
        rules = self.rules()
        shadowed = shadowed_rules(rules, self.layers)
        if shadowed:
            i, hits, earlier = shadowed[0]
            by = ", ".join(f"rule {j + 1} (<code>{rules[j][0]}</code>)" for j in earlier)
            self.preview.setText(f"<span style='color:#c0392b'>Rule {i + 1} (<code>{rules[i][0]}</code>) never "
                                 f"applies: every layer it matches ({hits}) is already taken by {by} above it "
                                 "(the first matching rule wins).</span><br>Select it and press Up, or narrow "
                                 "the earlier rule.")
            self.apply_button.setEnabled(False)
            self._compare_table()
            return
        try:
            plan = resolve_rules(rules, self.default_bits.currentData(), self.group_size.value(),
                                 False, self.layers)
        except BadInput as err:
            self.preview.setText(f"<span style='color:#c0392b'>{err.message}</span><br>{err.hint}")
            self.apply_button.setEnabled(False)
            self._compare_table()
            return
        self.plan = plan
        budget = plan.budget()
        hist = ", ".join(f"{n} × {'16-bit' if k == '16' else k + '-bit'}" for k, n in budget.bits_histogram.items())
        groups = sorted({e.group_size for e in plan.entries.values() if e.group_size})
        self.preview.setText(f"<b>These rules would give:</b> {hist}; group sizes used {groups}<br>"
                             f"{budget_line(budget)}")
        self.apply_button.setEnabled(True)
        self._compare_table()

    def set_table_plan(self, table: dict[str, tuple[int, int]], source: str | None = None) -> None:
        """The layer table's plan ({name: (bits, group)}) and what last set it, to say
        whether the table still follows these rules."""
        self.table_plan = dict(table)
        if source is not None:
            self.table_source = source
        self._compare_table()

    def _compare_table(self) -> None:
        if not self.table_plan or not self.layers:
            self.table_note.setText("")
            return
        if self.plan is None:
            self.table_note.setText("The layer table keeps its own plan (its budget is the line under it).")
            return
        differ = plan_differences(self.plan, self.table_plan)
        if differ == 0:
            self.table_note.setText("<span style='color:#1f6f2f'>The layer table follows these rules.</span>")
        else:
            self.table_note.setText(
                f"<span style='color:#8a5a00'>The layer table differs from these rules in {differ} "
                f"layer{'s' if differ != 1 else ''} (last set {self.table_source}); the line under the table "
                "is its budget. <b>Apply to table</b> replaces it with the rules' plan.</span>")

    def _apply(self) -> None:
        self._preview()
        if self.plan is not None:
            self.applied.emit(self.plan)
