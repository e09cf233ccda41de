"""Events: one JSON object per line, the only thing a worker writes on stdout.

Every event carries `v` (schema version), `t` (unix time) and `type`; `EVENTS` declares
each type's fields (DESIGN.md, "The worker and its events"), those every event of the type
carries and those some add. The window reads declared fields only. An event with a field
its type does not declare is a bug: with BITSMITH_STRICT_EVENTS=1 (the test suite) the
emitter raises, otherwise it warns once per field.

What every job's report (the `result` event, RUN_DIR/report.json) may say in the same
words — the model, the bit budget, a perplexity with the data it was measured on — is
declared in core/report.py (`ReportCore`).

An `Emitter` fans each event out to sinks (stdout, `events.jsonl`, a terminal renderer,
a list in tests). Sinks are plain callables taking the event dict.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

EVENT_VERSION = 1


@dataclass(frozen=True)
class EventType:
    """The fields of one event type: those every such event carries, and those some add."""

    fields: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def problems(self, event: dict) -> list[str]:
        """What about `event` this declaration does not allow (empty: nothing)."""
        missing = [f for f in self.fields if f not in event]
        extra = [f for f in event if f not in ("v", "t", "type") and f not in self.fields + self.optional]
        return [f"lacks {f!r}" for f in missing] + [f"has undeclared {f!r}" for f in extra]


EVENTS: dict[str, EventType] = {
    "stage": EventType(("stage", "state")),                         # state: "start" | "end"
    "progress": EventType(("stage", "done", "total", "eta_s"),
                          ("text", "tokens_per_s")),                # eval's generate stage: the text so far
    "layer": EventType(("name",), (
        "block", "bits", "group_size", "rel_error", "seconds", "keep", "error_kind",   # quantize, database
        "damp", "damp_retries", "dead_inputs", "act_order", "static_groups",          # GPTQ's own
        "step", "rel_error_before", "rank",                                           # tune (and EoRA)
        "spike_score", "kept")),                                                      # spike-aware search
    "metric": EventType(("name", "step", "value", "split"), (
        "adapters",                                                 # EoRA: with its adapters or without
        "candidate_tokens",                                         # EvoPress: tokens of the candidates
        "target_bits", "avg_code_bits", "effective_bits", "mb", "kl", "plan_file")),   # a sweep point
    "plan": EventType(("layers",), ("budget", "group_sizes", "generation", "avg_bits", "fitness", "final")),
    "error": EventType(("kind", "message", "hint")),                # kind: bad_input | cancelled | failure
    "result": EventType(("report",)),
    # a note the window may show; a warning adds level "warning" and a code ("diverged":
    # tuning got much worse than its best, with the step and the best step)
    # Ray (core/search/cluster.py, core/submit.py): `cluster` says what happened ("actor_lost":
    # with the actor, its candidates and the actors left; "submitted": with the job's submission id)
    "log": EventType(("message",), ("level", "code", "step", "best_step",
                                    "cluster", "actor", "candidates", "actors_left", "submission_id")),
}
EVENT_TYPES = tuple(EVENTS)

STRICT_ENV = "BITSMITH_STRICT_EVENTS"
_warned: set[str] = set()

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


def _check(event: dict) -> None:
    """Raise (strict) or warn once (otherwise) about an event its declaration does not allow."""
    problems = EVENTS[event["type"]].problems(event)
    if not problems:
        return
    message = f"{event['type']} event {', '.join(problems)} (core/events.py EVENTS)"
    if os.environ.get(STRICT_ENV) == "1":
        raise ValueError(message)
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("bitsmith.events").warning(message)


class Emitter:
    """Builds events and hands them to every sink."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks: list[Sink] = list(sinks)

    def emit(self, type: str, **fields: Any) -> dict:
        assert type in EVENT_TYPES, type
        event = {"v": EVENT_VERSION, "t": round(time.time(), 3), "type": type, **fields}
        _check(event)
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

