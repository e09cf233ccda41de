"""The window's signal and paint paths keep Python's reference counts of True, False and None.

PySide6 6.12.0 on Python 3.11 drops one reference to `True` on every `Signal.emit()` and to
`None` while painting; after a long job the count reaches zero and the process aborts with
`Fatal Python error: none_dealloc`. Python 3.12+ makes these objects immortal (counts never
move), which hides the leak there; this test guards the versions we lock on 3.11.
"""

from __future__ import annotations

import json
import sys

import pytest

EMITS = 3000
REPAINTS = 300
# A binding that drops references loses one per emit or paint: thousands, and the process
# dies once a count reaches zero. Ordinary caching in Qt, pyqtgraph and numpy releases a few
# dozen at most. Counts that GROW are harmless for these singletons (6.11.3 adds about 12
# references to None per repaint that it never drops: no memory is held), so only a fall fails.
TOLERANCE = 100


def _counts() -> dict[str, int]:
    return {"True": sys.getrefcount(True), "False": sys.getrefcount(False), "None": sys.getrefcount(None)}


def _event_lines(layer_names: list[str]) -> list[bytes]:
    """A worker's stream for one block: stage, progress, layer, metric (the real wire format)."""
    lines = [{"v": 1, "t": 0.0, "type": "stage", "stage": "quantize", "state": "start"}]
    for i, name in enumerate(layer_names):
        lines.append({"v": 1, "t": 0.0, "type": "progress", "stage": "quantize", "done": i + 1,
                      "total": len(layer_names), "eta_s": None if i % 2 else 3.5})
        lines.append({"v": 1, "t": 0.0, "type": "layer", "name": name, "bits": 3,
                      "rel_error": 0.01 * (i + 1), "seconds": 0.1})
        lines.append({"v": 1, "t": 0.0, "type": "metric", "name": "loss", "step": i, "value": 1.0 / (i + 1),
                      "split": "train"})
    return [json.dumps(line).encode() for line in lines]


def _deltas(before: dict[str, int]) -> dict[str, int]:
    return {name: count - before[name] for name, count in _counts().items()}


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="True/False/None are immortal on Python 3.12+")
def test_signal_emits_keep_refcounts(opened):
    """Events through the worker client's real dispatch, into the table, plots and progress."""
    w = opened
    names = [w.layers.rows[i].name for i in range(min(14, len(w.layers.rows)))]
    lines = _event_lines(names)
    for line in lines:                           # warm caches before counting
        w.client._dispatch(line)
    before = _counts()
    for i in range(EMITS // len(lines) + 1):
        for line in lines:
            w.client._dispatch(line)
    deltas = _deltas(before)
    assert all(d > -TOLERANCE for d in deltas.values()), (
        f"reference counts fell by {deltas} over ~{EMITS} signal emits: this PySide6 leaks "
        "references (6.12.0 on Python 3.11 does); install the locked version")


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="True/False/None are immortal on Python 3.12+")
def test_repaints_keep_refcounts(opened):
    """The per-layer error bars and the table, redrawn and painted again and again."""
    w = opened
    names = [w.layers.rows[i].name for i in range(min(14, len(w.layers.rows)))]
    w.tabs.setCurrentIndex(0)
    for line in _event_lines(names):
        w.client._dispatch(line)

    def repaint(i: int) -> None:
        w.plots.feed({"type": "layer", "name": names[i % len(names)], "bits": 2 + i % 3,
                      "rel_error": 0.5 / (1 + i)})
        w.plots.redraw()
        w.plots.grab()
        w.table.viewport().grab()

    for i in range(20):
        repaint(i)
    before = _counts()
    for i in range(REPAINTS):
        repaint(i)
    deltas = _deltas(before)
    assert all(d > -TOLERANCE for d in deltas.values()), (
        f"reference counts fell by {deltas} over {REPAINTS} repaints: this PySide6 leaks "
        "references while painting (6.12.0 on Python 3.11 does); install the locked version")
