"""Events rendered for a person at a terminal: stage lines, a progress bar, errors."""

from __future__ import annotations

import sys
from typing import TextIO


class TerminalRenderer:
    """An event sink. On a TTY it redraws one progress line; elsewhere it prints stages only."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr   # looked up now: tests and callers may swap sys.stderr
        self.tty = self.stream.isatty()
        self.verbose = verbose
        self._bar_shown = False

    def _line(self, text: str) -> None:
        if self._bar_shown:
            self.stream.write("\r\033[K")
            self._bar_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _bar(self, event: dict) -> None:
        done, total = event["done"], max(event["total"], 1)
        width = 30
        filled = int(width * done / total)
        eta = f" eta {event['eta_s']:.0f}s" if event.get("eta_s") is not None else ""
        self.stream.write(f"\r\033[K{event['stage']:>10} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done}/{total}{eta}")
        self.stream.flush()
        self._bar_shown = True

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "progress" and self.tty:
            self._bar(event)
        elif kind == "stage" and event["state"] == "start":
            self._line(f"» {event['stage']}")
        elif kind == "error":
            hint = f" — {event['hint']}" if event.get("hint") else ""
            self._line(f"error: {event['message']}{hint}")
        elif kind == "log" or (kind == "metric" and event["split"] == "eval"):
            text = event.get("message") or f"{event['name']} = {event['value']:.4g} (step {event['step']})"
            self._line(f"  {text}")
        elif kind == "layer" and self.verbose:
            self._line(f"  {event['name']}: {event.get('bits')} bits, rel_error {event.get('rel_error', 0):.4g}")
