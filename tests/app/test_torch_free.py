"""The window process never imports torch (or transformers): the worker does all heavy work.

A fresh `python -P` process, offscreen, opens the main window, opens a model through a real
worker, visits every tab and every job page, presses the model picker's file buttons, and
opens every dialog the window has — a run, two runs compared, and the export dialog with each
format, low-bit mode and folder choice — over a runs folder holding quantize, eval and export
runs. Every module of bitsmith.app is imported as well, and every QDialog subclass found in
them must be one this test opens: a new dialog fails here until it is added to OPENED."""

from __future__ import annotations

import json
import os
import subprocess

from bitsmith.core.client import python_command

OPENED = ["ExportDialog", "RunDialog"]      # the QDialog subclasses the script below opens

SCRIPT = r"""
import importlib, inspect, json, pkgutil, sys
from pathlib import Path

tiny, settings_file, export_parent = sys.argv[1:4]
from PySide6.QtCore import QEventLoop, QSettings, QTimer
from PySide6.QtWidgets import QDialog, QFileDialog
from bitsmith.app.main import make_app

app = make_app()
from bitsmith.app.main_window import MainWindow

# The picker's and the export dialog's file buttons: a native dialog would block, so answer it.
QFileDialog.getExistingDirectory = staticmethod(lambda *a, **k: export_parent)
QFileDialog.getOpenFileName = staticmethod(lambda *a, **k: ("", ""))

def wait(signal, start, ms=180_000):
    loop, got = QEventLoop(), []
    signal.connect(lambda *args: (got.append(args), loop.quit()))
    QTimer.singleShot(ms, loop.quit)
    start()
    if not got:
        loop.exec()
    return got[0] if got else None

w = MainWindow(QSettings(settings_file, QSettings.Format.IniFormat))
w.show()
opened = wait(w.client.finished, lambda: w.open_model(tiny))
assert opened and opened[0] == "done", (opened, w.runs.message.text())
w.set_uniform(3)
for tab in range(w.tabs.count()):
    w.tabs.setCurrentIndex(tab)
    app.processEvents()
for page in range(w.strategies.count()):
    w.strategies.setCurrentIndex(page)
    app.processEvents()
w.picker.combo.setEditText("")        # the folder button would open what it is given: open nothing
for button in w.picker.findChildren(type(w.picker.open_button)):
    if button.text() in ("Folder…", ".gguf…"):
        button.click()
w.refresh_history()
records = w.history.records
quantized = [r for r in records if r.has_quantized]
opened_dialogs = set()
for record in records:
    w._dialog([record])
    opened_dialogs.add(type(w.last_dialog).__name__)
    app.processEvents()
w._dialog(quantized[:2])
app.processEvents()
w.open_export()
dialog = w.last_dialog
opened_dialogs.add(type(dialog).__name__)
formats = [dialog.format.itemText(i) for i in range(dialog.format.count())]
for fmt in formats:
    dialog.format.setCurrentText(fmt)
    for mode in range(dialog.lowbit.count()):
        dialog.lowbit.setCurrentIndex(mode)
        app.processEvents()
dialog._choose_folder()
fields = dialog.job_fields()
app.processEvents()
# the Run page's pre-flight estimate (a dry-run process computes it), shown
w.tabs.setCurrentIndex(1)
w.strategies.setCurrentIndex(list(w.strategies.run_buttons).index("quantize"))
estimated = wait(w.estimate.updated, lambda: None) is not None and w.estimate.shown is not None

for mod in pkgutil.walk_packages(importlib.import_module("bitsmith.app").__path__, "bitsmith.app."):
    if mod.name != "bitsmith.app.__main__":
        importlib.import_module(mod.name)
dialogs = sorted({cls.__name__ for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("bitsmith.app")
                  for _, cls in inspect.getmembers(m, inspect.isclass)
                  if issubclass(cls, QDialog) and cls.__module__.startswith("bitsmith.app")})
print("RESULT " + json.dumps({"kinds": sorted({r.kind for r in records}), "formats": formats, "out": fields.get("out"),
                              "dialogs": dialogs, "opened": sorted(opened_dialogs), "estimated": estimated,
                              "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def _runs(root, tiny):
    """Quantize (3- and 4-bit), an evaluation of one checkpoint and an export of the other."""
    from bitsmith.core.events import Emitter
    from bitsmith.core.jobs import ModelSpec, make_job
    from bitsmith.core.rundir import RunDir
    from bitsmith.core.runner import execute

    def run(name, job):
        folder = RunDir.create(root / name, job.to_dict())
        assert execute(folder, Emitter()) == 0
        return folder

    checkpoints = [run(f"2099010{bits}-000000-quantize-tiny",
                       make_job("quantize", model={"source": str(tiny)}, method="rtn", calib_windows=0,
                                plan={"bits": bits, "group_size": 32})).quantized_dir for bits in (3, 4)]
    run("20990105-000000-eval-tiny", make_job("eval", model=ModelSpec(str(checkpoints[0])), seqlen=32, windows=2))
    run("20990106-000000-export-tiny", make_job("export", source=str(checkpoints[1]), format="gguf"))


def test_the_window_and_every_dialog_leave_torch_out(tiny_llama, tmp_path):
    runs_root = tmp_path / "runs"
    _runs(runs_root, tiny_llama)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "BITSMITH_RUNS": str(runs_root)}
    out = subprocess.run(python_command("-c", SCRIPT, str(tiny_llama), str(tmp_path / "s.ini"), str(tmp_path / "exports")),
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["kinds"] == ["eval", "export", "quantize"]
    assert result["formats"] == ["gptq", "compressed-tensors", "gguf", "native"]
    assert result["out"].startswith(str(tmp_path / "exports"))
    assert result["dialogs"] == OPENED, "a new dialog: open it in SCRIPT and add it to OPENED"
    assert result["opened"] == OPENED
    assert result["torch"] is False and result["transformers"] is False and result["estimated"] is True
