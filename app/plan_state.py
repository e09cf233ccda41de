"""Each model's plan survives a restart: the layer table's bits and group sizes and the rule
editor's rules, kept in QSettings under a key derived from the model source."""

from __future__ import annotations

import hashlib
import json

from PySide6.QtCore import QSettings

GROUP = "plans"


def _key(source: str) -> str:
    # QSettings treats "/" in a key as a group separator; a model path is full of them
    return f"{GROUP}/{hashlib.sha1(source.encode()).hexdigest()[:16]}"


def save_plan(settings: QSettings, source: str, table: dict[str, tuple[int, int]], rules: dict) -> None:
    """table: {layer: (bits, group size)}; rules: the rule editor's state()."""
    doc = {"source": source, "table": {n: list(v) for n, v in table.items()}, "rules": rules}
    settings.setValue(_key(source), json.dumps(doc))


def load_plan(settings: QSettings, source: str, layer_names: list[str]) -> dict | None:
    """The saved plan of `source` if it was saved for these very layers, else None."""
    raw = settings.value(_key(source))
    try:
        doc = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("source") != source:
        return None
    table = doc.get("table") or {}
    if sorted(table) != sorted(layer_names):
        return None
    return {"table": {n: (int(b), int(g)) for n, (b, g) in table.items()}, "rules": doc.get("rules") or {}}
