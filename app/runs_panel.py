"""The current job: what runs, its stage, a progress bar with ETA, Cancel and Resume, and
the message a run ended with (an error with its hint, or a crashed worker)."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget

from .widgets import window_hint
from .worker_client import WorkerClient


def eta_text(eta_s) -> str:
    if eta_s is None:
        return ""
    eta_s = int(round(eta_s))
    return f"ETA {eta_s // 60}:{eta_s % 60:02d}" if eta_s >= 60 else f"ETA {eta_s} s"


LEVEL_COLOURS = {"error": "#a61b1b", "warn": "#8a5a00", "ok": "#1f6f2f"}


class EtaSmoother:
    """The shown ETA: counts down between updates and moves only part of the way to each
    new estimate, so one slow step (a Hessian capture, a long layer) does not make it jump
    from 4:34 to 19:44. A new stage starts afresh."""

    WEIGHT = 0.25          # share of a new estimate taken at each update

    def __init__(self) -> None:
        self.stage, self.value, self.at = None, None, 0.0

    def update(self, stage: str, eta_s: float | None, now: float) -> float | None:
        if stage != self.stage or eta_s is None or self.value is None:
            self.stage, self.value, self.at = stage, eta_s, now
            return eta_s
        predicted = max(self.value - (now - self.at), 0.0)
        self.value, self.at = predicted + self.WEIGHT * (eta_s - predicted), now
        return self.value


class RunsPanel(QWidget):
    resumeRequested = Signal(object)      # RunDir

    def __init__(self, client: WorkerClient, parent=None) -> None:
        super().__init__(parent)
        self.client = client
        self.title = QLabel("No job running", objectName="runTitle", minimumWidth=150)
        self.stage_label = QLabel("", minimumWidth=150)   # fixed widths: a text change relayouts nothing
        self.bar = QProgressBar(minimum=0, maximum=1, value=0, textVisible=True, minimumWidth=260)
        self.eta = QLabel("", minimumWidth=90)
        self.cancel_button = QPushButton("Cancel", clicked=self.cancel, enabled=False)
        self.resume_button = QPushButton("Resume", clicked=self._resume, enabled=False)
        self.message = QLabel("", wordWrap=True, objectName="message")
        # Room for three lines always (a message and its hint, wrapped): a message appearing
        # must not move the page above, and the Run buttons on it, by resizing this panel.
        self.message.setFixedHeight(3 * self.message.fontMetrics().lineSpacing() + 6)
        self.message.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.log = QPlainTextEdit(readOnly=True, maximumBlockCount=500)
        self.log.setMaximumHeight(90)
        row = QHBoxLayout()
        for w, stretch in ((self.title, 0), (self.stage_label, 0), (self.bar, 1), (self.eta, 0),
                           (self.cancel_button, 0), (self.resume_button, 0)):
            row.addWidget(w, stretch)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        layout.addLayout(row)
        layout.addWidget(self.message)
        layout.addWidget(self.log)
        self.resumable = None
        self.outcome: str | None = None
        # Progress events are kept and shown at most every 100 ms (a progress bar repaints
        # synchronously on every setValue).
        self._pending_progress = None
        self._progress_timer = QTimer(self, singleShot=True, interval=100, timeout=self._show_progress)
        self.started_at = 0.0
        self.eta_smoother = EtaSmoother()
        self.level, self.warning = "info", ""
        client.stage.connect(self._on_stage)
        client.progress.connect(self._on_progress)
        client.error.connect(self._on_error)
        client.crashed.connect(self._on_crashed)
        client.warning.connect(self._on_warning)
        client.log.connect(self.append_log)
        client.finished.connect(self._on_finished)

    def job_started(self, kind: str, run_dir, resumed: bool = False, where: str = "") -> None:
        """`where`: e.g. "on the Ray cluster at http://head:8265" (empty: this machine)."""
        self.outcome, self.resumable = None, None
        self.started_at = time.monotonic()
        self.eta_smoother, self.warning = EtaSmoother(), ""
        self.title.setText(f"{'Resuming' if resumed else 'Running'} {kind}" + (" on Ray" if where else ""))
        self.title.setToolTip(where)
        self.stage_label.setText("submitting…" if where else "starting worker…")
        self._idle_bar("starting")
        self.eta.setText("")
        self.set_message("")
        self.append_log(f"{kind}: {run_dir.path}" + (f" ({where})" if where else ""))
        self.cancel_button.setText("Cancel")
        self.cancel_button.setEnabled(True)
        self.resume_button.setEnabled(False)

    def set_message(self, html: str, level: str = "info") -> None:
        """A line under the bar; the colour says error / warning / success (rich text, so no
        style-sheet re-polish on every message)."""
        self.level = level
        colour = LEVEL_COLOURS.get(level)
        self.message.setText(f"<span style='color:{colour}'>{html}</span>" if colour and html else html)
        self.message.setToolTip(html)          # the whole text, should it ever need more lines

    def append_log(self, text: str) -> None:
        self.log.appendPlainText(text)

    def cancel(self) -> None:
        """First press: ask the worker to stop at its next check. Second press: kill it."""
        if self.cancel_button.text() == "Kill now":
            self.append_log("killing the worker at the user's request")
            self.client.kill()
            return
        self.stage_label.setText("cancelling…")
        self.cancel_button.setText("Kill now")
        self.cancel_button.setToolTip("the worker stops at its next check; press again to kill it now "
                                      "(the run stays resumable)")
        self.client.cancel()

    def _resume(self) -> None:
        if self.resumable is not None:
            self.resumeRequested.emit(self.resumable)

    def _on_stage(self, stage: str, state: str) -> None:
        self._show_progress()
        self.stage_label.setText(f"{stage}" if state == "start" else f"{stage} done")
        if state == "start":
            self._idle_bar(stage)
            self.eta.setText("")

    def _idle_bar(self, text: str) -> None:
        """An empty bar with a word (a busy animation would repaint all the time)."""
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat(text)

    def _on_progress(self, stage: str, done: int, total: int, eta_s) -> None:
        self._pending_progress = (stage, done, total, eta_s)
        if not self._progress_timer.isActive():
            self._progress_timer.start()

    def _show_progress(self) -> None:
        if self._pending_progress is None:
            return
        (stage, done, total, eta_s), self._pending_progress = self._pending_progress, None
        self.stage_label.setText(stage)
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)
        self.bar.setFormat(f"{done} / {total}")
        self.eta.setText(eta_text(self.eta_smoother.update(stage, eta_s, time.monotonic())))

    def _on_error(self, kind: str, message: str, hint: str) -> None:
        level = "warn" if kind == "cancelled" else "error"
        hint = window_hint(hint)
        self.set_message(f"<b>{'Cancelled' if kind == 'cancelled' else 'Error'}:</b> {message}"
                         + (f"<br><i>{hint}</i>" if hint else ""), level)

    def _on_warning(self, event: dict) -> None:
        self.warning = event.get("message", "")
        self.set_message(f"<b>Warning:</b> {self.warning}", "warn")

    def _on_crashed(self, message: str) -> None:
        self.set_message("<b>Worker crashed.</b> " + message.replace("\n", "<br>"), "error")

    def _on_finished(self, outcome: str, code: int) -> None:
        self._progress_timer.stop()
        self._pending_progress = None
        self.outcome = outcome
        seconds = time.monotonic() - self.started_at
        self.title.setText({"done": "Finished", "failed": "Failed", "cancelled": "Cancelled",
                            "crashed": "Crashed"}.get(outcome, outcome))
        self.stage_label.setText(f"in {seconds:.1f} s")
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if outcome == "done" else 0)
        self.bar.setFormat("done" if outcome == "done" else outcome)
        self.eta.setText("")
        self.cancel_button.setText("Cancel")
        self.cancel_button.setEnabled(False)
        if outcome in ("cancelled", "crashed") and self.client.run_dir is not None:
            self.resumable = self.client.run_dir
            self.resume_button.setEnabled(True)
        elif outcome == "done" and not self.warning:
            self.set_message(f"Done: {self.client.run_dir.path.name}", "ok")
        elif outcome == "done":                  # keep the run's warning in view
            self.set_message(f"Done: {self.client.run_dir.path.name}. <b>Warning:</b> {self.warning}", "warn")
