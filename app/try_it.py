"""Try it: the same prompt continued by the dense model and by a quantized one, side by
side. Each side is an `eval` job with `prompt` set (one short window, so the cost is the
model load plus generation), run by its own worker: the dense side first, then the
quantized one (two models loading at once on a small machine only slows both down). The
text streams in as it is generated, with its tokens per second; Stop cancels both."""

from __future__ import annotations

from PySide6.QtWidgets import (QGridLayout, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout,
                               QWidget)

from bitsmith.core.errors import BadInput
from bitsmith.core.jobs import ModelSpec

from .widgets import ComboBox, SpinBox
from .worker_client import WorkerClient, create_run

DEFAULT_PROMPT = "Explain in one sentence what quantizing a neural network means."
STAGE_WORDS = {"load": "loading the model…", "evaluate": "one evaluation window…", "generate": "generating…"}


class TryIt(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.dense_source = "default"
        self.prompt = QPlainTextEdit(DEFAULT_PROMPT)
        self.prompt.setMaximumHeight(70)
        self.quantized = ComboBox(minimumWidth=360)
        self.tokens = SpinBox(minimum=1, maximum=512, value=48)
        self.go = QPushButton("Generate", clicked=self.generate, objectName="primary")
        self.stop = QPushButton("Stop", clicked=self.cancel, enabled=False)
        row = QHBoxLayout()
        row.addWidget(QLabel("Quantized model"))
        row.addWidget(self.quantized, 1)
        row.addWidget(QLabel("new tokens"))
        row.addWidget(self.tokens)
        row.addWidget(self.go)
        row.addWidget(self.stop)
        grid = QGridLayout()
        self.titles, self.outputs, self.rates, self.clients = [], [], [], []
        self.pending: list[tuple[WorkerClient, object]] = []
        for col, title in enumerate(("Dense", "Quantized")):
            label, out, rate = QLabel(f"<b>{title}</b>"), QPlainTextEdit(readOnly=True), QLabel("")
            client = WorkerClient(self)
            client.result.connect(lambda report, o=out, r=rate: self._show(o, r, report))
            client.error.connect(lambda kind, msg, hint, o=out: o.setPlainText(
                "stopped" if kind == "cancelled" else f"{kind}: {msg}\n{hint}"))
            client.crashed.connect(lambda msg, o=out: o.setPlainText(msg))
            client.finished.connect(self._next)
            client.stage.connect(lambda stage, state, o=out: o.setPlainText(STAGE_WORDS.get(stage, f"{stage}…"))
                                 if state == "start" and stage in STAGE_WORDS else None)
            client.event.connect(lambda event, o=out, r=rate: self._stream(o, r, event))
            grid.addWidget(label, 0, col)
            grid.addWidget(out, 1, col)
            grid.addWidget(rate, 2, col)
            self.titles.append(label)
            self.outputs.append(out)
            self.rates.append(rate)
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

    @property
    def running(self) -> bool:
        return any(c.running for c in self.clients) or bool(self.pending)

    def generate(self) -> None:
        prompt = self.prompt.toPlainText().strip()
        if not prompt:
            self.outputs[0].setPlainText("type a prompt first")
            return
        self.pending = []
        for client, out, rate, source in zip(self.clients, self.outputs, self.rates,
                                             (self.dense_source, self.quantized.currentData())):
            rate.setText("")
            if source is None:
                out.setPlainText("no quantized checkpoint chosen")
                continue
            try:
                run = create_run("eval", model=ModelSpec(source), data="builtin-eval", seqlen=32, windows=1,
                                 prompt=prompt, max_new_tokens=self.tokens.value())
            except BadInput as err:
                out.setPlainText(f"{err.message}\n{err.hint}")
                continue
            out.setPlainText("waiting for the other side…" if self.pending else "starting…")
            self.pending.append((client, run))
        self._next()

    def _next(self, *_) -> None:
        """Start the next waiting side once nothing runs."""
        if self.pending and not any(c.running for c in self.clients):
            client, run = self.pending.pop(0)
            client.start(run)
        self._update_buttons()

    def cancel(self) -> None:
        for client, _ in self.pending:
            self.outputs[self.clients.index(client)].setPlainText("stopped")
        self.pending = []
        for client in self.clients:
            client.cancel()
        self._update_buttons()

    def _stream(self, out: QPlainTextEdit, rate: QLabel, event: dict) -> None:
        if event.get("type") == "progress" and event.get("stage") == "generate":
            out.setPlainText(event.get("text", ""))
            rate.setText(f"{event.get('done', 0)} / {event.get('total', 0)} tokens · "
                         f"{event.get('tokens_per_s', 0):.1f} tokens/s")

    def _show(self, out: QPlainTextEdit, rate: QLabel, report: dict) -> None:
        sample = report.get("sample", {})
        out.setPlainText(sample.get("text", "").strip() or "(the model generated no text)")
        if sample.get("tokens_per_s") is not None:
            rate.setText(f"{sample.get('new_tokens', 0)} tokens in {sample.get('seconds', 0):.1f} s · "
                         f"{sample['tokens_per_s']:.1f} tokens/s (after loading the model)")

    def _update_buttons(self, *_) -> None:
        busy = self.running
        self.go.setEnabled(not busy)
        self.stop.setEnabled(busy)
