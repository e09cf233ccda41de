"""The native export: a copy of the Bitsmith checkpoint with its plan, report and provenance."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .source import ExportSource


def export_native(source: ExportSource, folder: Path, options: dict | None = None) -> dict:
    """Copy the checkpoint folder's files; add plan.json, report.json and provenance.json."""
    from ..errors import BadInput

    if source.path is None:
        raise BadInput("a native export copies a checkpoint folder, and this source has none",
                       "export a quantized checkpoint folder (RUN_DIR/quantized)")
    files = []
    for item in sorted(source.path.iterdir()):
        if item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, folder / item.name)
        else:
            shutil.copyfile(item, folder / item.name)
        files.append(item.name)
    for name, doc in (("plan.json", source.plan), ("report.json", source.report)):
        if doc is not None and not (folder / name).exists():
            (folder / name).write_text(json.dumps(doc, indent=2) + "\n")
            files.append(name)
    provenance = {"exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "source_checkpoint": str(source.path), "run_dir": str(source.path.parent)
                  if (source.path.parent / "job.json").is_file() else None,
                  "job": source.manifest.get("job"), "exporter": "bitsmith export --format native"}
    (folder / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    files.append("provenance.json")
    return {"files": files}
