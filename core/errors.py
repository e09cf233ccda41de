"""Errors that reach the user as one clear line: the problem, and the fix."""

from __future__ import annotations


class BitsmithError(Exception):
    """Base of the errors Bitsmith reports to the user without a traceback.

    `message` names the problem, `hint` says how to fix it. `kind` becomes the `kind`
    field of the worker's `error` event and selects the exit code.
    """

    kind = "failure"
    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class BadInput(BitsmithError):
    """The user asked for something that cannot work (path, model, data, job, plan)."""

    kind = "bad_input"
    exit_code = 2


class Cancelled(BitsmithError):
    """The run was cancelled between two steps; the run directory stays valid."""

    kind = "cancelled"
    exit_code = 3

    def __init__(self, message: str = "cancelled by request", hint: str = "") -> None:
        super().__init__(message, hint or "resume it with `bitsmith run RUN_DIR --resume`")
