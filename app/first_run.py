"""A first-run hint: the four steps of the workbench, each ticked as the runs folder shows it
done, until the user dismisses it (remembered in QSettings)."""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton

DISMISSED_KEY = "first_run_hint_dismissed"
STEPS = (("plan", "<b>Plan</b>: bits per layer in the table (Uniform buttons, cells, or rules → Apply to table)"),
         ("quantize", "<b>Run → Quantize</b>: a quantized checkpoint"),
         ("eval", "<b>Run → Evaluate</b>: its perplexity (and the open model's, to compare)"),
         ("export", "<b>Export…</b>: GGUF, GPTQ or compressed-tensors"))


class FirstRunHint(QFrame):
    def __init__(self, settings: QSettings, parent=None) -> None:
        super().__init__(parent, objectName="firstRun")
        self.settings = settings
        self.setStyleSheet("QFrame#firstRun { background: #eef6ee; border: 1px solid #bfd9bf; border-radius: 4px; }")
        self.text = QLabel(wordWrap=True)
        self.dismiss = QPushButton("Got it", clicked=self._dismiss)
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 4, 8, 4)
        row.addWidget(self.text, 1)
        row.addWidget(self.dismiss)
        self.done: set[str] = set()
        self.set_done(set())
        self.setVisible(not self.dismissed)

    @property
    def dismissed(self) -> bool:
        return str(self.settings.value(DISMISSED_KEY, "false")).lower() == "true"

    def set_done(self, done: set[str]) -> None:
        """Steps done so far (plan, quantize, eval, export): ticked in the hint."""
        self.done = set(done)
        parts = [f"{'✔' if key in self.done else str(i + 1) + '.'} {text}" for i, (key, text) in enumerate(STEPS)]
        self.text.setText("Getting started: " + "  →  ".join(parts))

    def _dismiss(self) -> None:
        self.settings.setValue(DISMISSED_KEY, "true")
        self.hide()
