"""Where the window keeps things: the runs root, the bundled resources, settings names."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

ORGANIZATION = "bitsmith"
APPLICATION = "bitsmith"

# resources/ sits beside app/ in a checkout (style sheet, icons, job presets).
RESOURCES = Path(__file__).resolve().parent.parent / "resources"


def runs_root() -> Path:
    """The folder that holds every run: $BITSMITH_RUNS, else the user's app-data folder."""
    env = os.environ.get("BITSMITH_RUNS")
    if env:
        root = Path(env)
    else:
        from PySide6.QtCore import QStandardPaths

        base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
        root = Path(base or Path.home() / ".local" / "share") / "bitsmith" / "runs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def slug(text: str, limit: int = 32) -> str:
    """A folder-safe short name for a model source: `/x/SmolLM2.gguf` -> `SmolLM2.gguf`."""
    name = Path(text.rstrip("/")).name or text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:limit].strip("-") or "model"


# Opening a model runs an `inspect` job; those runs are bookkeeping, not results: they live
# in a hidden folder (History lists only the runs root's own folders) and the newest few stay.
INSPECT_FOLDER = ".inspect"
KEEP_INSPECT_RUNS = 8


def _prune(folder: Path, keep: int) -> None:
    import shutil

    runs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in runs[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def new_run_path(kind: str, model_source: str) -> Path:
    """A fresh, unique run folder name: 20261122-101500-quantize-SmolLM2 (-2, -3 ...)."""
    root = runs_root()
    if kind == "inspect":
        root = root / INSPECT_FOLDER
        root.mkdir(exist_ok=True)
        _prune(root, KEEP_INSPECT_RUNS - 1)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{slug(model_source)}"
    path, n = root / base, 2
    while path.exists():
        path, n = root / f"{base}-{n}", n + 1
    return path


def resource(*parts: str) -> Path:
    return RESOURCES.joinpath(*parts)
