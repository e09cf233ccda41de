"""Try it: the same prompt continued by the dense model and by a quantized one, side by
side. Each side is an `eval` job with `prompt` set (one short window, so the cost is the
model load plus generation), run by its own worker."""

from __future__ import annotations

from PySide6.QtWidgets import (QComboBox, QGridLayout, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton,
                               QSpinBox, QVBoxLayout, QWidget)

from bitsmith.core.jobs import ModelSpec
from bitsmith.core.errors import BadInput

from .worker_client import WorkerClient, create_run

DEFAULT_PROMPT = "Explain in one sentence what quantizing a neural network means."


class TryIt(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.dense_source = "default"
        self.prompt = QPlainTextEdit(DEFAULT_PROMPT)
        self.prompt.setMaximumHeight(70)
        self.quantized = QComboBox(minimumWidth=360)
        self.tokens = QSpinBox(minimum=1, maximum=512, value=48)
        self.go = QPushButton("Generate", clicked=self.generate, objectName="primary")
        row = QHBoxLayout()
        row.addWidget(QLabel("Quantized model"))
        row.addWidget(self.quantized, 1)
        row.addWidget(QLabel("new tokens"))
        row.addWidget(self.tokens)
        row.addWidget(self.go)
        grid = QGridLayout()
        self.titles, self.outputs, self.clients = [], [], []
        for col, title in enumerate(("Dense", "Quantized")):
            label, out = QLabel(f"<b>{title}</b>"), QPlainTextEdit(readOnly=True)
            client = WorkerClient(self)
            client.result.connect(lambda report, o=out: self._show(o, report))
            client.error.connect(lambda kind, msg, hint, o=out: o.setPlainText(f"{kind}: {msg}\n{hint}"))
            client.crashed.connect(lambda msg, o=out: o.setPlainText(msg))
            client.finished.connect(self._update_button)
            client.stage.connect(lambda stage, state, o=out: o.setPlainText(f"{stage}…") if state == "start" else None)
            grid.addWidget(label, 0, col)
            grid.addWidget(out, 1, col)
            self.titles.append(label)
            self.outputs.append(out)
            self.clients.append(client)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt)
        layout.addLayout(row)
        layout.addLayout(grid, 1)

    def set_models(self, dense: str, quantized: list[tuple[str, str]]) -> None:
        """quantized: (label, checkpoint folder) of runs that wrote RUN/quantized."""
        self.dense_source = dense
        self.titles[0].setText(f"<b>Dense</b> — {dense}")
        current = self.quantized.currentData()
        self.quantized.clear()
        for label, path in quantized:
            self.quantized.addItem(label, path)
        if not quantized:
            self.quantized.addItem("no quantized run yet: quantize the model first", None)
        i = self.quantized.findData(current)
        self.quantized.setCurrentIndex(max(i, 0))

    def generate(self) -> None:
        prompt = self.prompt.toPlainText().strip()
        if not prompt:
            self.outputs[0].setPlainText("type a prompt first")
            return
        for client, out, source in zip(self.clients, self.outputs, (self.dense_source, self.quantized.currentData())):
            if source is None:
                out.setPlainText("no quantized checkpoint chosen")
                continue
            try:
                run = create_run("eval", model=ModelSpec(source), data="builtin-eval", seqlen=32, windows=1,
                                 prompt=prompt, max_new_tokens=self.tokens.value())
            except BadInput as err:
                out.setPlainText(f"{err.message}\n{err.hint}")
                continue
            out.setPlainText("starting…")
            client.start(run)
        self._update_button()

    def _show(self, out: QPlainTextEdit, report: dict) -> None:
        sample = report.get("sample", {})
        out.setPlainText(sample.get("text", "").strip() or "(the model generated no text)")

    def _update_button(self, *_) -> None:
        self.go.setEnabled(not any(c.running for c in self.clients))
