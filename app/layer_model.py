"""The layer table: one row per linear layer, with its planned bits and its last results.

`LayerTableModel` holds the inventory from an `inspect` job (name, block, role, d_out,
d_in, params, bytes_16bit), the plan being edited (bits and group size per layer; 16 bits
means kept unquantized) and what runs reported (relative error, spike score). Bits and
group size are editable in place; `set_bits(rows, bits)` edits a selection. Every edit
emits `planChanged`, which the budget line and the heat map follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtGui import QColor
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QRegularExpression, QSortFilterProxyModel, Qt, Signal

BIT_CHOICES = (2, 3, 4, 5, 6, 8, 16)   # 16 = keep at 16-bit
KEEP_BITS = 16


@dataclass
class LayerRow:
    name: str
    block: int
    role: str
    d_out: int
    d_in: int
    bits: int = KEEP_BITS
    group_size: int = 64
    rel_error: float | None = None
    spike: float | None = None
    error_bits: int | None = None      # the bits the error was measured at

    @property
    def params(self) -> int:
        return self.d_out * self.d_in


COLUMNS = ("name", "block", "role", "shape", "params", "bits", "group", "size (KiB)", "rel. error", "spike")
COL = {name: i for i, name in enumerate(COLUMNS)}
EDITABLE = {COL["bits"], COL["group"]}


def _fmt_float(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


class LayerTableModel(QAbstractTableModel):
    planChanged = Signal()
    resultsChanged = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: list[LayerRow] = []
        self._index: dict[str, int] = {}
        self.layer_bytes: dict[str, float] = {}   # per-layer bytes under the plan (from core/plan)
        self.fused = False                         # edits take whole fused groups (vLLM, SGLang)
        self._group_rows: dict[int, list[int]] = {}   # row -> rows of its fused group

    # --- loading ---------------------------------------------------------------------------

    def set_layers(self, layers: list[dict], bits: int = KEEP_BITS, group_size: int = 64) -> None:
        """Rows from an inspect report's `layers` list."""
        self.beginResetModel()
        self.rows = [LayerRow(l["name"], int(l["block"]), l["role"], int(l["d_out"]), int(l["d_in"]),
                              bits, group_size) for l in layers]
        self._index = {r.name: i for i, r in enumerate(self.rows)}
        self.layer_bytes = {}
        self.set_fused(self.fused)
        self.endResetModel()
        self.planChanged.emit()

    def row_of(self, name: str) -> int | None:
        return self._index.get(name)

    def set_fused(self, fused: bool) -> None:
        """With a runtime that serves q/k/v and gate/up as one module (core/serve.py), an edit
        to one layer of such a group applies to the whole group."""
        from bitsmith.core.serve import fused_groups

        self.fused = fused
        self._group_rows = {}
        if fused:
            for group in fused_groups([r.name for r in self.rows]):
                rows = [self._index[n] for n in group]
                self._group_rows.update({i: rows for i in rows})

    def with_groups(self, rows: list[int]) -> list[int]:
        """`rows` and, when edits are fused, the other rows of their groups."""
        return sorted({j for i in rows for j in self._group_rows.get(i, [i])})

    def split_groups(self) -> list[tuple[str, ...]]:
        """Fused groups whose rows have different bits or group sizes."""
        seen, split = set(), []
        for rows in self._group_rows.values():
            key = tuple(rows)
            if key not in seen:
                seen.add(key)
                if len({(self.rows[i].bits, self.rows[i].group_size) for i in rows}) > 1:
                    split.append(tuple(self.rows[i].name for i in rows))
        return split

    # --- plan edits --------------------------------------------------------------------------

    def plan(self) -> dict[str, tuple[int, int]]:
        """{layer: (bits, group_size)} as edited."""
        return {r.name: (r.bits, r.group_size) for r in self.rows}

    def set_bits(self, rows: list[int], bits: int, group_size: int | None = None) -> None:
        rows = self.with_groups(rows)
        for i in rows:
            self.rows[i].bits = int(bits)
            if group_size is not None:
                self.rows[i].group_size = int(group_size)
        self._changed_rows(rows)

    def apply_plan(self, plan: dict[str, Any]) -> int:
        """Take bits (and group sizes) from a plan: {name: bits} or {name: {"bits":..,"group_size":..}}.
        Returns how many layers changed."""
        touched = []
        for name, entry in plan.items():
            i = self._index.get(name)
            if i is None:
                continue
            row = self.rows[i]
            if isinstance(entry, dict):
                bits = KEEP_BITS if entry.get("keep") else entry.get("bits", row.bits)
                row.group_size = int(entry.get("group_size") or row.group_size)
            else:
                bits = entry
            row.bits = int(bits)
            touched.append(i)
        self._changed_rows(touched)
        return len(touched)

    def _changed_rows(self, rows: list[int]) -> None:
        if rows:
            self.dataChanged.emit(self.index(min(rows), 0), self.index(max(rows), len(COLUMNS) - 1))
        self.planChanged.emit()

    def set_layer_bytes(self, layer_bytes: dict[str, float]) -> None:
        self.layer_bytes = dict(layer_bytes)
        if self.rows:
            col = COL["size (KiB)"]
            self.dataChanged.emit(self.index(0, col), self.index(len(self.rows) - 1, col))

    # --- results from runs -------------------------------------------------------------------

    def set_result(self, name: str, rel_error: float | None = None, spike: float | None = None,
                   bits: int | None = None) -> bool:
        i = self._index.get(name)
        if i is None:
            return False
        row = self.rows[i]
        if rel_error is not None:
            row.rel_error, row.error_bits = float(rel_error), bits
        if spike is not None:
            row.spike = float(spike)
        self.dataChanged.emit(self.index(i, COL["rel. error"]), self.index(i, COL["spike"]))
        self.resultsChanged.emit()
        return True

    def clear_results(self) -> None:
        for row in self.rows:
            row.rel_error = row.spike = row.error_bits = None
        if self.rows:
            self.dataChanged.emit(self.index(0, COL["rel. error"]), self.index(len(self.rows) - 1, COL["spike"]))
        self.resultsChanged.emit()

    # --- Qt model interface --------------------------------------------------------------------

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def flags(self, index):
        base = super().flags(index)
        return base | Qt.ItemFlag.ItemIsEditable if index.column() in EDITABLE else base

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row, col = self.rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col)
        if role == Qt.ItemDataRole.EditRole:
            return {COL["bits"]: row.bits, COL["group"]: row.group_size}.get(col)
        if role == Qt.ItemDataRole.UserRole:        # sort key
            return self._sort_key(row, col)
        if role == Qt.ItemDataRole.TextAlignmentRole and col not in (COL["name"], COL["role"]):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole and col == COL["rel. error"] and row.error_bits:
            return f"measured at {row.error_bits} bits"
        if role == Qt.ItemDataRole.ToolTipRole and col in (COL["bits"], COL["group"]) and row.bits == KEEP_BITS:
            return "kept unquantized at 16-bit"
        if role == Qt.ItemDataRole.ForegroundRole and col in (COL["bits"], COL["group"]) and row.bits == KEEP_BITS:
            return QColor("#8a5a00")
        return None

    def _display(self, row: LayerRow, col: int) -> str:
        if col == COL["name"]:
            return row.name
        if col == COL["block"]:
            return str(row.block)
        if col == COL["role"]:
            return row.role
        if col == COL["shape"]:
            return f"{row.d_out}×{row.d_in}"
        if col == COL["params"]:
            return f"{row.params:,}"
        if col == COL["bits"]:
            return str(row.bits)
        if col == COL["group"]:
            return "kept" if row.bits == KEEP_BITS else str(row.group_size)
        if col == COL["size (KiB)"]:
            size = self.layer_bytes.get(row.name)
            return "" if size is None else f"{size / 1024:,.1f}"
        if col == COL["rel. error"]:
            return _fmt_float(row.rel_error)
        if col == COL["spike"]:
            return _fmt_float(row.spike, 3)
        return ""

    def _sort_key(self, row: LayerRow, col: int):
        # Plain ints, floats and strings only: Qt compares these QVariants natively.
        keys = {COL["name"]: self._index[row.name], COL["block"]: row.block, COL["role"]: row.role,
                COL["shape"]: row.params, COL["params"]: row.params, COL["bits"]: row.bits,
                COL["group"]: row.group_size, COL["size (KiB)"]: self.layer_bytes.get(row.name, -1.0),
                COL["rel. error"]: -1.0 if row.rel_error is None else row.rel_error,
                COL["spike"]: -1.0 if row.spike is None else row.spike}
        return keys[col]

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.EditRole or index.column() not in EDITABLE:
            return False
        try:
            number = int(str(value).split()[0])
        except (ValueError, IndexError):
            return False
        if index.column() == COL["bits"] and number not in range(2, 9) and number != KEEP_BITS:
            return False
        if index.column() == COL["group"] and number < 1:   # core/plan falls back to the largest divisor of d_in
            return False
        rows = self.with_groups([index.row()])
        for i in rows:
            if index.column() == COL["bits"]:
                self.rows[i].bits = number
            else:
                self.rows[i].group_size = number
        self._changed_rows(rows)
        return True


class LayerFilterProxy(QSortFilterProxyModel):
    """Sorts numerically (via UserRole) and filters on the layer name with a regex."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setSortRole(Qt.ItemDataRole.UserRole)
        self.setFilterKeyColumn(COL["name"])
        self.pattern = ""

    def set_pattern(self, text: str) -> None:
        """Filter by a case-insensitive regex; an invalid one (half typed) filters nothing out."""
        regex = QRegularExpression(text, QRegularExpression.PatternOption.CaseInsensitiveOption)
        if hasattr(self, "beginFilterChange"):          # Qt 6.10+
            self.beginFilterChange()
            self.pattern = text if regex.isValid() else ""
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self.pattern = text if regex.isValid() else ""
            self.invalidateFilter()

    def filterAcceptsRow(self, source_row: int, source_parent) -> bool:
        if not self.pattern:
            return True
        import re

        name = self.sourceModel().rows[source_row].name
        return re.search(self.pattern, name, re.IGNORECASE) is not None
