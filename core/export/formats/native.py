"""native: a copy of the Bitsmith checkpoint with its plan, report and provenance (exact; what
Bitsmith's evaluate, tune and export read). The writer is ../native.py.

The smallest format file, and the shape of a new one: a writer, the readers' verdicts, the
card and dialog text; the rest (plan and data warnings, size estimate hooks, options) is
optional. Registering is all it takes: validation, `bitsmith export --format`, the export
job and the window's dialog list every registered format."""

from __future__ import annotations

from pathlib import Path

from ..readers import CALL_NATIVE, LOADS, ReaderVerdict
from ..registry import ExportFormat, Settings, register_format


def write(source, folder: Path, options: dict) -> dict:
    from ..native import export_native

    return export_native(source, folder, options)


def readers(settings: Settings, options: dict) -> list[ReaderVerdict]:
    return [ReaderVerdict("Bitsmith", LOADS, CALL_NATIVE, "", "tests/export/test_export.py")]


FORMAT = register_format(ExportFormat(
    name="native", rank=40, write=write, readers=readers, holds_checkpoint=True,
    stores="Bitsmith's own checkpoint, copied as is (codes, scales, zeros, plan, report): exact, and what "
           "Bitsmith's evaluate, tune and export read.",
    card_imports="",
    card_notes="A copy of the Bitsmith checkpoint with its plan, the run's report and provenance.json.",
))
