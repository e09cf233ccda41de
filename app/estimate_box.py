"""What the job on the Run page will need — peak RAM, GPU memory, disk, time, and whether it
fits — shown before Run is pressed.

The box re-estimates when the form, the page, the model or the plan changes: after a pause
(typing a number fires a change per key), in a separate process (app/preflight.py), the one
still running replaced. It estimates only while it is in view, and never while a job runs
(the probe would slow the job, and the job would make the probe's timing wrong). Answers
are kept per job document, so going back to a page does not probe again.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QLabel

from bitsmith.core.errors import BadInput

from .paths import runs_root
from .preflight import NoEstimate, Preflight, PreflightProcess, duration_text, size_text
from .runs_panel import LEVEL_COLOURS
from .widgets import window_hint

DEBOUNCE_MS = 800
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")


def _hint(suggestion: str, fields: set[str]) -> str:
    """The engine's suggestion ("try --calib-windows 8") in the window's words where the page
    has that field; a setting only the command line has yet (--offload, --device) says so."""
    flags = {m.group(1) for m in _FLAG.finditer(suggestion)}
    if flags and all(f.replace("-", "_") in fields for f in flags):
        return window_hint(suggestion)
    return escape(suggestion) + " (on the command line: the window has no such setting yet)"


def figures_html(p: Preflight, fields: set[str] = frozenset()) -> str:
    """The estimate as one paragraph: each figure, then whether it fits (and what would)."""
    ram = f"peak RAM <b>{size_text(p.peak_ram)}</b>"
    if p.ram_available is not None:
        ram += f" of {size_text(p.ram_available)} available"
    if p.device == "cuda":
        gpu = f"GPU memory <b>{size_text(p.peak_gpu)}</b>" + (
            f" of {size_text(p.gpu_free)} free" if p.gpu_free is not None else "")
    else:
        gpu = "GPU memory <b>none</b> (computed on the CPU)"
    time = f"time <b>about {duration_text(p.seconds)}</b>" if p.seconds is not None else "time not probed"
    parts = " · ".join([ram, gpu, f"disk <b>{size_text(p.disk)}</b>", time])
    if p.fits:
        verdict = f"<span style='color:{LEVEL_COLOURS['ok']}'><b>fits this machine</b></span>"
    else:
        problem, _, suggestion = (p.refusal or "").partition(": try ")
        what = escape(problem) + (f" — {_hint('try ' + suggestion, fields)}" if suggestion else "")
        verdict = f"<span style='color:{LEVEL_COLOURS['error']}'><b>does not fit:</b> {what}</span>"
    return f"{parts} — {verdict}"


class EstimateBox(QLabel):
    """`job_doc(kind)` builds the job the page's Run button would start, raising ValueError or
    BadInput with the reason when it cannot; `watch(strategies)` follows the Run pages."""

    updated = Signal()              # the box shows a final answer (figures, or why there are none)

    def __init__(self, job_doc: Callable[[str], dict], parent=None) -> None:
        super().__init__(parent, objectName="estimate", wordWrap=True, textFormat=Qt.TextFormat.RichText)
        self._job_doc = job_doc
        self._strategies = None
        # Four lines always: a longer or shorter answer must not move the Run button above.
        self.setFixedHeight(4 * self.fontMetrics().lineSpacing() + 14)
        self.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.process = PreflightProcess(self)
        self.process.answered.connect(self._answered)
        self._timer = QTimer(self, singleShot=True, interval=DEBOUNCE_MS, timeout=self._start)
        self._answers: dict[str, Preflight | NoEstimate] = {}      # job document (JSON) -> answer
        self._key: str | None = None                       # the document being estimated
        self._kind = ""
        self._held = False
        self._stale = True
        self.shown: Preflight | None = None                # the figures in view, if any
        self._say("Open a model: what each job needs appears here before you run it.")

    def watch(self, strategies) -> None:
        """Follow the Run pages (app/strategies.py): their forms, model choices and the page in view."""
        self._strategies = strategies
        strategies.currentChanged.connect(self.request)
        for form in strategies.forms.values():
            form.changed.connect(self.request)
        for combo in strategies.model_choice.values():
            combo.currentIndexChanged.connect(self.request)

    def _current_kind(self) -> str:
        return list(self._strategies.run_buttons)[self._strategies.currentIndex()]

    def _fields(self, kind: str) -> set[str]:
        form = self._strategies.forms.get(kind)
        return set(form.widgets) if form is not None else set()

    # --- when to estimate -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """An estimate is running or about to start (a change waits out the pause)."""
        return self.process.running or self._timer.isActive()

    def request(self, *_) -> None:
        """Something the job depends on changed: estimate again after a pause."""
        self._stale = True
        if not self._held and self.isVisible():
            self._timer.start()

    def hold(self, held: bool) -> None:
        """A job runs (True) or ended (False). Its end may change the answers (a selfgen
        sample now cached, less free disk), so they are forgotten."""
        self._held = held
        if held:
            self._timer.stop()
            if self.process.running:
                self.process.stop()
                self._stale = True
                self._say("The estimate waits until the running job ends.")
            elif self.shown is not None:      # the figures stay, said to be from before the job
                self._show(self.shown)
        else:
            self._answers.clear()
            if self.shown is not None:
                self._show(self.shown)        # no longer "before the running job"; a fresh one follows
            elif self._stale:
                self._say("The job has ended: the estimate starts again in a moment.")
            self.request()

    def showEvent(self, event) -> None:    # noqa: N802 (Qt name)
        super().showEvent(event)
        if self._stale:
            self.request()

    # --- estimating -------------------------------------------------------------------------

    def _start(self) -> None:
        self._stale = False
        if self._strategies is None:
            return
        kind = self._current_kind()
        try:
            doc = self._job_doc(kind)
        except (ValueError, TypeError, BadInput) as err:
            self.process.stop()
            self._kind = kind
            self._show(NoEstimate(getattr(err, "message", str(err)), bad_input=True))
            return
        key = json.dumps(doc, sort_keys=True)
        self._key, self._kind = key, kind
        if key in self._answers:
            self.process.stop()
            self._show(self._answers[key])
            return
        self.shown = None
        self.process.start(doc, runs_root() / "estimate")     # where the run would go: its free disk
        self._say(f"<b>{kind.capitalize()}</b>: estimating peak RAM, GPU memory, disk and time… "
                  "(a probe of one block on this machine; Run does not wait for it)")

    def _answered(self, answer: Preflight | NoEstimate) -> None:
        if self._key is not None:
            self._answers[self._key] = answer
        self._show(answer)

    def _show(self, answer: Preflight | NoEstimate) -> None:
        self.shown = answer if isinstance(answer, Preflight) else None
        if isinstance(answer, Preflight):
            head = (f"<b>{answer.kind.capitalize()}, as estimated before the running job</b>: " if self._held
                    else f"<b>Before you run {answer.kind}</b>, the estimate: ")
            self._final(head + figures_html(answer, self._fields(self._kind)))
        elif answer.bad_input:
            self._final(f"<b>No estimate for this {self._kind}:</b> {escape(answer.reason)}", "warn")
        else:
            self._final(f"<b>The estimate for this {self._kind} failed:</b> {escape(answer.reason)}", "error")

    def _final(self, html: str, level: str = "info") -> None:
        colour = LEVEL_COLOURS.get(level)
        self._say(f"<span style='color:{colour}'>{html}</span>" if colour else html)
        self.updated.emit()

    def _say(self, html: str) -> None:
        self.setText(html)
        self.setToolTip(re.sub(r"<[^>]+>", "", html))
