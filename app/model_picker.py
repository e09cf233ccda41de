"""Choose a model: `default`, a folder, a `.gguf` file, a hub id, or a recent one."""

from __future__ import annotations

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

RECENT_KEY = "recent_models"
MAX_RECENT = 10


class ModelPicker(QWidget):
    openRequested = Signal(str)

    def __init__(self, settings: QSettings, parent=None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.combo = QComboBox(editable=True, minimumWidth=420)
        self.combo.setToolTip("default | a Hugging Face folder | a .gguf file | a hub id (org/name) | "
                              "a quantized checkpoint (RUN/quantized)")
        self.combo.lineEdit().setPlaceholderText("default, /path/to/model, file.gguf or org/name")
        self.combo.lineEdit().returnPressed.connect(self._open)
        folder = QPushButton("Folder…", clicked=self._pick_folder)
        gguf = QPushButton(".gguf…", clicked=self._pick_gguf)
        self.open_button = QPushButton("Open", clicked=self._open, objectName="primary")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Model"))
        row.addWidget(self.combo, 1)
        for w in (folder, gguf, self.open_button):
            row.addWidget(w)
        self._fill_recent()

    def recent(self) -> list[str]:
        value = self.settings.value(RECENT_KEY, [])
        items = [value] if isinstance(value, str) else list(value or [])
        return [i for i in items if i]

    def add_recent(self, source: str) -> None:
        items = [source] + [i for i in self.recent() if i != source]
        self.settings.setValue(RECENT_KEY, items[:MAX_RECENT])
        self._fill_recent(current=source)

    def _fill_recent(self, current: str | None = None) -> None:
        items = self.recent()
        if "default" not in items:
            items.append("default")
        text = current if current is not None else (items[0] if items else "default")
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(items)
        self.combo.setEditText(text)
        self.combo.blockSignals(False)

    def source(self) -> str:
        return self.combo.currentText().strip()

    def set_source(self, source: str) -> None:
        self.combo.setEditText(source)

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.combo.setEditText(path)
            self._open()

    def _pick_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "GGUF model file", "", "GGUF models (*.gguf)")
        if path:
            self.combo.setEditText(path)
            self._open()

    def _open(self) -> None:
        if self.source():
            self.openRequested.emit(self.source())
