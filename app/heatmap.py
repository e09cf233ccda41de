"""Blocks × roles heat map of the plan's bits, or of the last measured relative error.

A cell without a value (a layer not measured yet, or a role a block lacks) is left
transparent over a grey hatch: it must not look like the best colour."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer
from PySide6.QtGui import QBrush, QColor, QPen
from PySide6.QtWidgets import QComboBox, QGraphicsRectItem, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from .layer_model import KEEP_BITS, LayerTableModel


KEPT_LEVEL = 9      # kept layers drawn one step above 8 bits, so 2..8 keep distinct colours


class HeatMap(QWidget):
    """Follows a LayerTableModel; redraws at most every 100 ms."""

    def __init__(self, model: LayerTableModel, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.what = QComboBox()
        self.what.addItems(["bits", "rel. error (log10)"])
        self.what.currentIndexChanged.connect(self.schedule)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.invertY(True)
        # The hatch shows through NaN cells, which ImageItem draws fully transparent.
        self.hatch = QGraphicsRectItem(QRectF(0, 0, 1, 1))
        self.hatch.setBrush(QBrush(QColor("#9aa0a6"), Qt.BrushStyle.BDiagPattern))
        self.hatch.setPen(QPen(Qt.PenStyle.NoPen))
        self.hatch.setZValue(-10)
        self.hatch.setVisible(False)
        self.plot.addItem(self.hatch)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.bar = pg.ColorBarItem(values=(2, KEPT_LEVEL), colorMap=pg.colormap.get("viridis"), interactive=False, width=12)
        self.bar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        self.plot.setLabel("left", "block")
        self.caption = QLabel(wordWrap=True)
        top = QHBoxLayout()
        top.addWidget(QLabel("Heat map of"))
        top.addWidget(self.what)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.caption)
        self._timer = QTimer(self, singleShot=True, interval=100, timeout=self.redraw)
        model.planChanged.connect(self.schedule)
        model.resultsChanged.connect(self.schedule)
        model.modelReset.connect(self.schedule)

    def schedule(self, *_) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def matrix(self) -> tuple[np.ndarray, list[str], list[int]]:
        """[blocks, roles] of the chosen quantity; NaN where a block lacks a role or no value yet."""
        rows = self.model.rows
        roles = list(dict.fromkeys(r.role for r in rows))
        blocks = sorted({r.block for r in rows})
        grid = np.full((len(blocks), len(roles)), np.nan, dtype=np.float32)
        b_index = {b: i for i, b in enumerate(blocks)}
        r_index = {r: i for i, r in enumerate(roles)}
        errors = self.what.currentIndex() == 1
        for r in rows:
            if errors:
                value = math.log10(r.rel_error) if r.rel_error and r.rel_error > 0 else np.nan
            else:
                value = KEPT_LEVEL if r.bits == KEEP_BITS else r.bits
            grid[b_index[r.block], r_index[r.role]] = value
        return grid, roles, blocks

    def redraw(self) -> None:
        grid, roles, blocks = self.matrix()
        if grid.size == 0:
            self.image.clear()
            self.caption.setText("")
            return
        errors = self.what.currentIndex() == 1
        finite = grid[np.isfinite(grid)]
        if errors:
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (-4.0, 0.0)
            if high - low < 1e-6:
                low, high = low - 0.5, high + 0.5
        else:
            low, high = 2.0, float(KEPT_LEVEL)
        self.bar.setLevels((low, high))
        self.image.setImage(grid, levels=(low, high))          # NaN cells: transparent, over the hatch
        self.hatch.setRect(QRectF(0, 0, len(roles), len(blocks)))
        self.hatch.setVisible(bool(np.isnan(grid).any()))
        # short role names ("gate" for gate_proj): the long ones do not all fit under the cells
        self.plot.getAxis("bottom").setTicks([[(i + 0.5, r.removesuffix("_proj")) for i, r in enumerate(roles)]])
        step = max(1, len(blocks) // 15)
        self.plot.getAxis("left").setTicks([[(i + 0.5, str(b)) for i, b in enumerate(blocks) if i % step == 0]])
        self.plot.setXRange(0, len(roles), padding=0)
        self.plot.setYRange(0, len(blocks), padding=0)
        absent = grid.size - len(self.model.rows)                    # roles some blocks lack
        missing = sum(1 for r in self.model.rows if r.rel_error is None)
        exact = sum(1 for r in self.model.rows if r.rel_error == 0)    # kept at 16-bit: no error
        if errors:
            text = "log10 of relative output error (lower is better)"
            hatched = ([f"not measured: {missing} layer{'s' if missing != 1 else ''}"] if missing else []) + \
                      ([f"kept at 16-bit (no error): {exact}"] if exact else [])
            if hatched:
                text += "; hatched grey = " + ", ".join(hatched)
        else:
            text = f"bits per layer, 2–8; the top colour ({KEPT_LEVEL}) = kept at 16-bit"
        if absent > 0:
            text += f"; hatched grey: {absent} cells where the block has no such layer"
        self.caption.setText(text)
