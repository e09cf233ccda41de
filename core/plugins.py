"""Registries whose entries register themselves on import: one module each in a package
(job kinds in core/jobkinds/, quantizers in core/quant/methods/, export formats in
core/export/formats/), every module imported when the registry is first read."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_all(package: ModuleType) -> None:
    """Import every module of `package` (once: Python caches them)."""
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{mod.name}")


__all__ = ["import_all"]
