"""Registries whose entries register themselves on import: one module each in a package
(job kinds in core/jobkinds/, quantizers in core/quant/methods/, export formats in
core/export/formats/), every module imported when the registry is first read."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Iterable


def import_all(package: ModuleType) -> None:
    """Import every module of `package` (once: Python caches them)."""
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{mod.name}")


def used_by(entries: Iterable) -> dict[str, tuple[str, ...]]:
    """{job field: the names of the entries that read it}, from each entry's `uses` (the
    fields only some quantizers or allocators read: the window greys them out for the rest)."""
    fields: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        for f in entry.uses:
            fields[f] = fields.get(f, ()) + (entry.name,)
    return fields


__all__ = ["import_all", "used_by"]
