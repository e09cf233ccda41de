"""The rule editor: an ordered list of (regex -> bits) rules, first match wins, resolved by
core/plan.py and previewed (bits histogram, budget, first error) before it is applied."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from bitsmith.core.errors import BadInput

from .layer_model import BIT_CHOICES, KEEP_BITS
from .plan_bridge import budget_line, resolve_rules

EXAMPLE_RULES = [(r"layers\.(1|29)\.mlp\.down_proj$", KEEP_BITS), (r"self_attn\.(k|v)_proj$", 4)]


def bits_combo(value: int) -> QComboBox:
    combo = QComboBox()
    for b in BIT_CHOICES:
        combo.addItem("16 (keep)" if b == KEEP_BITS else f"{b} bits", b)
    combo.setCurrentIndex(BIT_CHOICES.index(value))
    return combo


class RuleEditor(QWidget):
    """Emits `applied(plan)` with a resolved core.plan.Plan when the user applies the rules."""

    applied = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.layers: list[dict] = []
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["pattern (regex on the layer name)", "bits"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemChanged.connect(self._preview)
        self.default_bits = bits_combo(4)
        self.default_bits.currentIndexChanged.connect(self._preview)
        self.group_size = QSpinBox(minimum=8, maximum=4096, value=64, singleStep=32)
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
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Rules, first match wins:"))
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addLayout(form)
        layout.addWidget(self.preview)
        self.plan = None

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
        combo = bits_combo(bits)
        combo.currentIndexChanged.connect(self._preview)
        self.table.setCellWidget(row, 1, combo)
        self.table.blockSignals(False)
        self._preview()

    def rules(self) -> list[tuple[str, int]]:
        return [(self.table.item(r, 0).text(), self.table.cellWidget(r, 1).currentData())
                for r in range(self.table.rowCount()) if self.table.item(r, 0)]

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
        if not self.layers:
            self.preview.setText("Open a model to preview the rules.")
            self.apply_button.setEnabled(False)
            return
        try:
            plan = resolve_rules(self.rules(), self.default_bits.currentData(), self.group_size.value(),
                                 False, self.layers)
        except BadInput as err:
            self.preview.setText(f"<span style='color:#c0392b'>{err.message}</span><br>{err.hint}")
            self.apply_button.setEnabled(False)
            return
        self.plan = plan
        budget = plan.budget()
        hist = ", ".join(f"{n} × {'16-bit' if k == '16' else k + '-bit'}" for k, n in budget.bits_histogram.items())
        groups = sorted({e.group_size for e in plan.entries.values() if e.group_size})
        self.preview.setText(f"<b>Resolved:</b> {hist}; group sizes used {groups}<br>{budget_line(budget)}")
        self.apply_button.setEnabled(True)

    def _apply(self) -> None:
        self._preview()
        if self.plan is not None:
            self.applied.emit(self.plan)
