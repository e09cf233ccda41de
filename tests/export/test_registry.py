"""The export-format registry (core/export/registry.py): every format is one file in
core/export/formats/, and validation, the CLI, the export job and the window's dialog read
the registry. The last test drops a new format file in and finds it everywhere."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bitsmith.core.client import python_command
from bitsmith.core.errors import BadInput
from bitsmith.core.export import export_checkpoint, export_warnings
from bitsmith.core.export.registry import ExportFormat, export_formats, format_names, register_format

# A complete format in one file, written as a file in core/export/formats/ would be (relative
# imports, torch-free): the JSON of every quantized layer's bits.
TOY_FORMAT = '''
"""toy: every quantized layer's bits, as one JSON object."""

import json
from pathlib import Path

from ..readers import LOADS, ReaderVerdict
from ..registry import ExportFormat, register_format


def write(source, folder: Path, options: dict) -> dict:
    bits = {name: qw.bits for name, qw in source.layers.items()}
    (folder / "bits.json").write_text(json.dumps(bits, sort_keys=True))
    return {"files": ["bits.json"], "listed": len(bits)}


def plan_warnings(settings, check):
    kept = [n for n, s in settings.items() if not s.quantized]
    return [f"toy leaves out {len(kept)} kept layers"] if kept else []


def readers(settings, options):
    return [ReaderVerdict("cat", LOADS, "cat {out}/bits.json", "it is text", "tests/export/test_registry.py")]


FORMAT = register_format(ExportFormat(
    name="toy", rank=99, write=write, readers=readers, plan_warnings=plan_warnings,
    layer_bytes=lambda layer, check: (8.0, None), dense_bytes=lambda name, shape, check: 0.0,
    card_lines=lambda report: [f"{report['listed']} layers listed."],
    summary_lines=lambda report: [f"toy listed {report['listed']} layers"],
    stores="every quantized layer's bits, as JSON", card_notes="One JSON object: layer -> bits.",
    card_imports=""))
'''

# Run in a fresh process: the format folder gains toy.py before anything reads the registry,
# as a file added to core/export/formats/ would be found.
USE_TOY = r'''
import json, os, sys
from pathlib import Path

formats_dir, checkpoint, work = sys.argv[1:4]
import bitsmith.core.export.formats as formats
formats.__path__.append(formats_dir)

from bitsmith.core.cli import main
from bitsmith.core.export import export_checkpoint, export_warnings
from bitsmith.core.export.estimate import estimate_export
from bitsmith.core.export.registry import format_names
from bitsmith.core.jobs import make_job

manifest = json.loads((Path(checkpoint) / "bitsmith-quant.json").read_text())
found = {"names": list(format_names()),
         "job": make_job("export", source=checkpoint, format="toy").spec.format,
         "warnings": export_warnings(manifest, "toy"),
         "estimate": estimate_export(checkpoint, "toy")["stores"]}
report = export_checkpoint(checkpoint, "toy", Path(work) / "api")
found["files"] = report["files"]
found["card"] = (Path(work) / "api" / "README.md").read_text()
sys.stdout.flush()
code = main(["export", checkpoint, "--format", "toy", "--out", str(Path(work) / "cli"), "--run", str(Path(work) / "run")])
found["cli"] = code

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication, QWidget
from bitsmith.app.export_dialog import ExportDialog

app = QApplication([])
window = QWidget()
window.settings = QSettings(str(Path(work) / "s.ini"), QSettings.Format.IniFormat)
dialog = ExportDialog(window, [("toy run", checkpoint)])
found["menu"] = [dialog.format.itemText(i) for i in range(dialog.format.count())]
dialog.format.setCurrentText("toy")
found["dialog"] = [dialog.stores.text(), dialog.warnings.toPlainText(), dialog.lowbit.isEnabled()]
print("FOUND " + json.dumps(found))
'''


def test_formats_in_rank_order():
    assert format_names() == ("gptq", "compressed-tensors", "gguf", "native")
    assert all(isinstance(f, ExportFormat) and f.name == name for name, f in export_formats().items())


def test_a_format_registers_once():
    gguf = export_formats()["gguf"]
    assert register_format(gguf) is gguf                    # importing a format file twice is harmless
    with pytest.raises(ValueError, match="registered twice"):
        register_format(ExportFormat(**{**vars(gguf), "stores": "another"}))


def test_unknown_formats_name_every_registered_one(mixed_checkpoint, tmp_path):
    with pytest.raises(BadInput, match="unknown export format 'zip'") as err:
        export_checkpoint(mixed_checkpoint, "zip", tmp_path / "out")
    assert err.value.hint == "use one of: " + ", ".join(format_names())
    with pytest.raises(ValueError, match="use one of gptq, compressed-tensors, gguf, native"):
        export_warnings({}, "zip")


def test_option_values_are_checked_by_the_format_that_reads_them(mixed_checkpoint, tmp_path):
    cases = {"lowbit": ("x", "unknown --lowbit mode 'x'"), "ct_layout": ("x", "unknown --ct-layout 'x'"),
             "embed_bits": (4, "--embed-bits 4 is not offered"),
             "checkpoint_format": ("v9", "unknown --checkpoint-format 'v9'")}
    for key, (value, message) in cases.items():
        with pytest.raises(BadInput, match=message):
            export_checkpoint(mixed_checkpoint, "native", tmp_path / key, {key: value})


def test_a_new_format_is_one_file(mixed_checkpoint, tmp_path):
    """toy.py alone: the registry lists it, the export job accepts it, the checks, estimate,
    writer, model card and CLI run it, and the window's export dialog offers it."""
    (tmp_path / "formats").mkdir()
    (tmp_path / "formats" / "toy.py").write_text(TOY_FORMAT)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(python_command("-c", USE_TOY, str(tmp_path / "formats"), str(mixed_checkpoint),
                                        str(tmp_path / "work")), capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.split("FOUND ", 1)[1])
    assert found["names"] == ["gptq", "compressed-tensors", "gguf", "native", "toy"]
    assert found["job"] == "toy" and found["cli"] == 0
    assert found["warnings"][-1] == "toy leaves out 2 kept layers"     # after the fp8 warning every format gets
    assert found["estimate"] == "every quantized layer's bits, as JSON"
    assert found["files"] == ["README.md", "bits.json", "bitsmith-export.json"]
    assert "One JSON object: layer -> bits." in found["card"] and "12 layers listed." in found["card"]
    assert "toy listed 12 layers" in out.stdout
    bits = json.loads((tmp_path / "work" / "cli" / "bits.json").read_text())
    assert bits["model.layers.0.self_attn.k_proj"] == 3
    assert found["menu"][-1] == "toy"
    stores, warnings, lowbit_enabled = found["dialog"]
    assert stores == "every quantized layer's bits, as JSON" and "toy leaves out 2 kept layers" in warnings
    assert "cat loads" in warnings and not lowbit_enabled


def test_the_registry_and_the_pure_checks_leave_torch_out():
    """What the window imports (the package, the checks, the estimate, every format file)."""
    script = ("import sys\n"
              "from bitsmith.core.export import export_warnings, format_names\n"
              "from bitsmith.core.export.estimate import estimate_export\n"
              "from bitsmith.core.export.registry import export_formats, reader_verdicts\n"
              "from bitsmith.core.jobs import job_kinds\n"
              "job_kinds(); export_formats()\n"
              "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run(python_command("-c", script), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
