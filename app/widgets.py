"""Small widget variants the window uses everywhere.

Spin boxes and combo boxes that ignore the mouse wheel until they have focus: scrolling a
form must scroll the form, not change τ from 0.01 to 0.0092 on the way past. An ignored
wheel event goes on to the parent (the scroll area), as Qt propagates unaccepted events.
"""

from __future__ import annotations

import re

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox


class _WheelOnlyWhenFocused:
    def _setup_focus(self) -> None:
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)      # a wheel over it does not focus it

    def wheelEvent(self, event) -> None:       # noqa: N802 (Qt name)
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            event.ignore()


class SpinBox(_WheelOnlyWhenFocused, QSpinBox):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_focus()


class DoubleSpinBox(_WheelOnlyWhenFocused, QDoubleSpinBox):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_focus()


class ComboBox(_WheelOnlyWhenFocused, QComboBox):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_focus()


# --- hints ---------------------------------------------------------------------------------

_RESUME = re.compile(r"`?bitsmith run RUN_DIR --resume`?")
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def window_hint(text: str, labels: dict[str, str] | None = None) -> str:
    """An engine hint in the window's words: the Resume button instead of the resume
    command, a form field's name ("calib windows") instead of its flag (--calib-windows);
    `labels` names a flag's control where it is not a form field of the same name."""
    labels = labels or {}
    text = _RESUME.sub("the Resume button", text or "")
    text = text.replace("resume it with the Resume button", "press Resume to go on from where it stopped")
    return _FLAG.sub(lambda m: "“" + labels.get(m.group(1), m.group(1).replace("-", " ")) + "”", text)
