"""Events: one JSON object per line, the only thing a worker writes on stdout.

Every event carries `v` (schema version), `t` (unix time) and `type`. Types and their
fields (DESIGN.md, "The worker and its events"):

    stage     stage, state ("start" | "end")
    progress  stage, done, total, eta_s
    layer     name, bits, rel_error, seconds (+ group_size, ...)
    metric    name, step, value, split
    plan      layers: {layer name: bits}
    error     kind ("bad_input" | "cancelled" | "failure"), message, hint
    result    report
    log       message (human-readable notes that the window may show); a warning adds
              level "warning" and a code ("diverged": tuning got much worse than its best)

An `Emitter` fans each event out to sinks (stdout, `events.jsonl`, a terminal renderer,
a list in tests). Sinks are plain callables taking the event dict.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

EVENT_VERSION = 1
EVENT_TYPES = ("stage", "progress", "layer", "metric", "plan", "error", "result", "log")

Sink = Callable[[dict], None]


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: send them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def encode(event: dict) -> str:
    return json.dumps(_json_safe(event), separators=(",", ":"), allow_nan=False)


def decode(line: str) -> dict | None:
    """Parse one event line; None for a line that is not a versioned event object."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("v") != EVENT_VERSION or obj.get("type") not in EVENT_TYPES:
        return None
    return obj


def stream_sink(stream: TextIO) -> Sink:
    lock = threading.Lock()

    def sink(event: dict) -> None:
        with lock:
            stream.write(encode(event) + "\n")
            stream.flush()

    return sink


def file_sink(path: Path) -> Sink:
    """Append to `events.jsonl`; each line is flushed so a killed run keeps every event."""
    handle = open(path, "a", encoding="utf-8", buffering=1)
    return stream_sink(handle)


def read_events(path: Path) -> list[dict]:
    """Every event of a run, skipping a half-written last line from a killed worker."""
    if not Path(path).exists():
        return []
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            event = decode(line)
            if event is not None:
                events.append(event)
    return events


class Emitter:
    """Builds events and hands them to every sink."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks: list[Sink] = list(sinks)

    def emit(self, type: str, **fields: Any) -> dict:
        assert type in EVENT_TYPES, type
        event = {"v": EVENT_VERSION, "t": round(time.time(), 3), "type": type, **fields}
        for sink in self.sinks:
            sink(event)
        return event

    # One helper per event type, so call sites read as what they report.
    def stage(self, stage: str, state: str) -> dict:
        return self.emit("stage", stage=stage, state=state)

    def progress(self, stage: str, done: int, total: int, eta_s: float | None = None) -> dict:
        return self.emit("progress", stage=stage, done=done, total=total,
                         eta_s=None if eta_s is None else round(eta_s, 1))

    def layer(self, name: str, **fields: Any) -> dict:
        return self.emit("layer", name=name, **fields)

    def metric(self, name: str, value: float, step: int = 0, split: str = "eval", **fields: Any) -> dict:
        return self.emit("metric", name=name, step=step, value=value, split=split, **fields)

    def plan(self, layers: dict, **fields: Any) -> dict:
        return self.emit("plan", layers=layers, **fields)

    def error(self, kind: str, message: str, hint: str = "") -> dict:
        return self.emit("error", kind=kind, message=message, hint=hint)

    def result(self, report: dict) -> dict:
        return self.emit("result", report=report)

    def log(self, message: str, **fields: Any) -> dict:
        """A note; `level="warning"` (with a `code`, e.g. "diverged") asks the window to show it."""
        return self.emit("log", message=message, **fields)


class Progress:
    """Counts steps of one stage and emits `progress` with an ETA from the mean step time."""

    def __init__(self, emitter: Emitter, stage: str, total: int, done: int = 0) -> None:
        self.emitter, self.stage, self.total = emitter, stage, total
        self.done = done
        self._start_done = done
        self._start = time.monotonic()

    def advance(self, steps: int = 1) -> dict:
        self.done += steps
        elapsed = time.monotonic() - self._start
        fresh = self.done - self._start_done
        eta = elapsed / fresh * (self.total - self.done) if fresh > 0 else None
        return self.emitter.progress(self.stage, self.done, self.total, eta)

