"""Per-layer settings of a plan, a manifest or an export source: what every pure check
reads (the warnings, the reader verdicts, the size estimate). Torch-free: the window passes
plans and manifests; an ExportSource exists only once source.py (torch) is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerSetting:
    bits: int               # 2..8, or 16 when kept
    group_size: int         # 0 when kept
    sym: bool
    keep: str | None        # None | "16" | "fp8"
    adapter: bool = False   # carries an EoRA low-rank adapter

    @property
    def quantized(self) -> bool:
        return self.keep is None

    def key(self) -> tuple:
        return (self.bits, self.group_size, self.sym, self.keep)


def layer_settings(obj: Any) -> dict[str, LayerSetting]:
    """Per-layer settings from a Plan, a plan.json / manifest dict, or an ExportSource."""
    import sys

    from ..plan import Plan

    # An ExportSource can only exist once source.py (which imports torch) is imported; the
    # window passes manifests and must not pull torch in.
    source = sys.modules.get(f"{__package__}.source")
    if source is not None and isinstance(obj, source.ExportSource):
        out = {n: LayerSetting(qw.bits, qw.group_size, bool(qw.sym), None, n in obj.adapters)
               for n, qw in obj.layers.items()}
        out.update({n: LayerSetting(16, 0, False, k, n in obj.adapters) for n, k in obj.kept.items()})
        return out
    if isinstance(obj, Plan):
        entries: Any = {n: vars(e) for n, e in obj.entries.items()}
    elif isinstance(obj, dict):
        entries = obj.get("layers") or (obj.get("plan") or {}).get("layers") or {}
    else:
        raise TypeError(f"export_warnings takes a plan, a manifest or an ExportSource, not {type(obj).__name__}")
    out = {}
    for name, e in entries.items():
        if isinstance(e, int):
            e = {"bits": e, "keep": "16" if e == 16 else None}
        keep = e.get("keep")
        bits = int(e.get("bits", 16))
        adapter = bool(e.get("adapter", False))
        if keep or bits >= 16:
            out[name] = LayerSetting(16, 0, False, str(keep or "16"), adapter)
        else:
            out[name] = LayerSetting(bits, int(e.get("group_size") or 0), bool(e.get("sym", False)), None, adapter)
    return out
