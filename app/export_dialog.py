"""Export a quantized run: choose the checkpoint, a format and where to write it. Before
anything runs, the dialog says what the format stores, how large the export will be
(core.export.estimate, from the checkpoint's manifest and header alone) and what the format
cannot represent exactly (core.export.checks). The formats, and which options each reads,
come from the export-format registry (core.export.registry). The export itself is an
`export` job; when it ends, the window says where the files went."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPlainTextEdit, QPushButton, QVBoxLayout, QWidget)

from bitsmith.core.files import QUANT_MANIFEST

from .widgets import ComboBox, window_hint


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def size_text(estimate: dict) -> str:
    """One paragraph: the total, and where the bytes go (why a GGUF outweighs the plan's bits)."""
    text = f"<b>About {_mib(estimate['bytes'])}</b>"
    if "linear_bytes" in estimate:
        params = estimate["linear_params"] + estimate["other_params"]
        text += (f" ({estimate['bits_per_weight']:.2f} bits per weight over all {params / 1e6:.1f}M weights): "
                 f"quantized linear layers {_mib(estimate['linear_bytes'])} "
                 f"({estimate['linear_bits_per_weight']:.2f} bits per weight"
                 + (", as " + ", ".join(f"{n} × {t}" for t, n in sorted(estimate["types"].items()))
                    if estimate["types"] else "")
                 + f"), embeddings, head, norms and kept layers {_mib(estimate['other_bytes'])} "
                 f"({estimate['other_params'] / 1e6:.1f}M weights at 16-bit)")
    return text + "."


class ExportDialog(QDialog):
    def __init__(self, window, checkpoints: list[tuple[str, str]]) -> None:
        super().__init__(window)
        from bitsmith.core.export.registry import export_formats, export_option

        self.window_ = window
        self.setWindowTitle("Export a quantized model")
        self.source = ComboBox(minimumWidth=520)
        for label, path in checkpoints:
            self.source.addItem(label, path)
        self.format = ComboBox()
        self.format.addItems(list(export_formats()))
        self.lowbit = ComboBox()
        lowbit = export_option("lowbit")
        for mode in lowbit.choices:
            self.lowbit.addItem(lowbit.labels.get(mode, mode), mode)
        self.checkpoint_format = ComboBox()
        self.checkpoint_format.addItems(list(export_option("checkpoint_format").choices))
        self.folder = QLineEdit(placeholderText="the export run's own folder (RUN/export/FORMAT)")
        self.folder.setText(str(window.settings.value("export_folder", "") or ""))
        browse = QPushButton("Choose…", clicked=self._choose_folder)
        folder_row = QWidget()
        row = QHBoxLayout(folder_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        self.target = QLabel(wordWrap=True)
        self.stores = QLabel(wordWrap=True)
        self.size = QLabel(wordWrap=True)
        self.warnings = QPlainTextEdit(readOnly=True)
        form = QFormLayout()
        form.addRow("Checkpoint", self.source)
        form.addRow("Format", self.format)
        form.addRow("GGUF low-bit layers", self.lowbit)
        form.addRow("GPTQ checkpoint format", self.checkpoint_format)
        form.addRow("Save into folder", folder_row)
        form.addRow("", self.target)
        form.addRow("Stores", self.stores)
        form.addRow("Size", self.size)
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
        self.folder.textChanged.connect(self._update_target)
        self.update_warnings()
        self.resize(820, 560)

    def manifest(self) -> dict | None:
        path = self.source.currentData()
        if not path:
            return None
        try:
            return json.loads((Path(path) / QUANT_MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def update_warnings(self, *_) -> None:
        from bitsmith.core.export.checks import export_warnings, layer_settings
        from bitsmith.core.export.estimate import estimate_export
        from bitsmith.core.export.readers import reader_warnings
        from bitsmith.core.export.registry import export_formats, reader_verdicts

        fmt = self.format.currentText()
        format_ = export_formats()[fmt]
        self.lowbit.setEnabled(format_.reads("lowbit"))
        self.checkpoint_format.setEnabled(format_.reads("checkpoint_format"))
        self.stores.setText(format_.stores)
        self._update_target()
        manifest = self.manifest()
        if manifest is None:
            self.warnings.setPlainText("No quantized checkpoint chosen: quantize the model first (Run → Quantize).")
            self.size.setText("")
            self.export_button.setEnabled(False)
            return
        try:
            warnings = export_warnings(manifest, fmt, self.lowbit.currentData())
            readers = reader_verdicts(fmt, layer_settings(manifest))
            warnings = [w for w in warnings if w not in reader_warnings(readers)]   # listed below instead
        except (ValueError, KeyError, TypeError) as err:
            warnings, readers = [f"cannot check this checkpoint: {err}"], []
        try:
            self.estimate = estimate_export(self.source.currentData(), fmt, self.lowbit.currentData())
            self.size.setText(size_text(self.estimate))
        except (OSError, ValueError, KeyError, TypeError) as err:
            self.estimate = None
            self.size.setText(f"cannot estimate the size: {err}")
        labels = {"lowbit": "GGUF low-bit layers", "out": "Save into folder"}
        text = "\n".join(f"• {window_hint(w, labels)}" for w in warnings) or \
            "Nothing: every layer is stored exactly in this format."
        if readers:          # per reader, what it does with this file (core.export.readers)
            text += "\n\nWho reads it:\n" + "\n".join(f"• {v.line(out='EXPORT', gguf_file='MODEL.gguf')}"
                                                         for v in readers)
        self.warnings.setPlainText(text)
        self.export_button.setEnabled(True)

    def out_path(self) -> Path | None:
        """Where the export goes: a new folder inside the chosen one (an export replaces its
        target folder whole, so it never writes into the chosen folder itself)."""
        parent = self.folder.text().strip()
        source = self.source.currentData()
        if not parent or not source:
            return None
        base = f"{Path(source).parent.name}-{self.format.currentText()}"
        path, n = Path(parent).expanduser() / base, 2
        while path.exists():
            path, n = Path(parent).expanduser() / f"{base}-{n}", n + 1
        return path

    def _update_target(self, *_) -> None:
        out = self.out_path()
        self.target.setText(f"writes <b>{out}</b>" if out else "writes into the export run's folder "
                            "(shown when it ends)")

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Save the export into", self.folder.text() or str(Path.home()))
        if path:
            self.folder.setText(path)

    def job_fields(self) -> dict:
        fields = {"source": self.source.currentData(), "format": self.format.currentText(),
                  "lowbit": self.lowbit.currentData(), "checkpoint_format": self.checkpoint_format.currentText()}
        out = self.out_path()
        if out is not None:
            fields["out"] = str(out)
        return fields

    def _export(self) -> None:
        if self.folder.text().strip():
            self.window_.settings.setValue("export_folder", self.folder.text().strip())
        if self.window_.start_job("export", self.job_fields()) is not None:
            self.accept()
