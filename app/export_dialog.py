"""Export a quantized run: choose the checkpoint and a format; before anything runs, the
dialog lists what the format cannot represent exactly (core.export.checks.export_warnings,
computed from the checkpoint's manifest alone). The export itself is an `export` job."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QPlainTextEdit,
                               QVBoxLayout)

MANIFEST = "bitsmith-quant.json"


class ExportDialog(QDialog):
    def __init__(self, window, checkpoints: list[tuple[str, str]]) -> None:
        super().__init__(window)
        from bitsmith.core.export.checks import FORMATS

        self.window_ = window
        self.setWindowTitle("Export a quantized model")
        self.source = QComboBox(minimumWidth=420)
        for label, path in checkpoints:
            self.source.addItem(label, path)
        self.format = QComboBox()
        self.format.addItems(list(FORMATS))
        self.lowbit = QComboBox()
        self.lowbit.addItem("lossless (2/3-bit stored exactly in Q4 blocks)", "lossless")
        self.lowbit.addItem("kquant (llama.cpp K-quants, approximate)", "kquant")
        self.checkpoint_format = QComboBox()
        self.checkpoint_format.addItems(["auto", "v2"])
        self.warnings = QPlainTextEdit(readOnly=True)
        form = QFormLayout()
        form.addRow("Checkpoint", self.source)
        form.addRow("Format", self.format)
        form.addRow("GGUF low-bit layers", self.lowbit)
        form.addRow("GPTQ checkpoint format", self.checkpoint_format)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.export_button = buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self._export)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Before it runs — what this format cannot represent exactly:"))
        layout.addWidget(self.warnings, 1)
        layout.addWidget(buttons)
        for combo in (self.source, self.format, self.lowbit):
            combo.currentIndexChanged.connect(self.update_warnings)
        self.update_warnings()
        self.resize(760, 460)

    def manifest(self) -> dict | None:
        path = self.source.currentData()
        if not path:
            return None
        try:
            return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def update_warnings(self, *_) -> None:
        from bitsmith.core.export.checks import export_warnings, layer_settings
        from bitsmith.core.export.readers import reader_verdicts, reader_warnings

        self.lowbit.setEnabled(self.format.currentText() == "gguf")
        self.checkpoint_format.setEnabled(self.format.currentText() == "gptq")
        manifest = self.manifest()
        if manifest is None:
            self.warnings.setPlainText("No quantized checkpoint chosen: quantize the model first.")
            self.export_button.setEnabled(False)
            return
        try:
            warnings = export_warnings(manifest, self.format.currentText(), self.lowbit.currentData())
            readers = reader_verdicts(self.format.currentText(), layer_settings(manifest))
            warnings = [w for w in warnings if w not in reader_warnings(readers)]   # listed below instead
        except (ValueError, KeyError, TypeError) as err:
            warnings, readers = [f"cannot check this checkpoint: {err}"], []
        text = "\n".join(f"• {w}" for w in warnings) or "Nothing: every layer is stored exactly in this format."
        if readers:          # per reader, what it does with this file (core.export.readers)
            text += "\n\nWho reads it:\n" + "\n".join(f"• {v.line(out='EXPORT', gguf_file='MODEL.gguf')}"
                                                         for v in readers)
        self.warnings.setPlainText(text)
        self.export_button.setEnabled(True)

    def job_fields(self) -> dict:
        return {"source": self.source.currentData(), "format": self.format.currentText(),
                "lowbit": self.lowbit.currentData(), "checkpoint_format": self.checkpoint_format.currentText()}

    def _export(self) -> None:
        if self.window_.start_job("export", self.job_fields()) is not None:
            self.accept()
