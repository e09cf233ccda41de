"""A form for a job kind's spec dataclass, built from its fields and type hints, so each
job's parameters (with their defaults) appear in the window without a hand-made form that
would drift from the engine. A field's metadata gives its tooltip (`help`, the CLI's help
text too: core/spec_args.py) and its choices (`choices`, a registry's names). `model` and
`plan` are filled by the window, not the form."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from bitsmith.core.config import field_default
from bitsmith.core.files import WIKITEXT_TEST
from bitsmith.core.spec_args import help_of

from .widgets import ComboBox, DoubleSpinBox, SpinBox

FILLED_BY_WINDOW = ("model", "plan")
# Text-source fields get an editable list of the sources core/data.py understands.
SOURCE_FIELDS = ("data", "calib", "eval_data", "calib_data", "eval")
SOURCES = ["builtin", "builtin-eval", "selfgen", f"file:{WIKITEXT_TEST}", "hf:wikitext:wikitext-2-raw-v1:test"]


TRI_STATE = {"auto": None, "on": True, "off": False}    # an optional bool's choices


def _tri_state_label(value: bool | None) -> str:
    return next(label for label, v in TRI_STATE.items() if v is value)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), type(None) in get_args(tp)
    return tp, False


def _change_signals(widget: QWidget) -> list:
    """The signals that say a field's value changed (a typed text as well as a picked item)."""
    if isinstance(widget, QComboBox):
        return [widget.currentIndexChanged] + ([widget.editTextChanged] if widget.isEditable() else [])
    if isinstance(widget, QCheckBox):
        return [widget.toggled]
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        return [widget.valueChanged]
    return [widget.textChanged]


class SpecForm(QWidget):
    """Widgets for the simple fields of `spec_cls`; `values()` gives only changed-or-set fields."""

    changed = Signal()          # any field's value changed (the pre-flight estimate follows it)

    def __init__(self, spec_cls: type, skip: tuple[str, ...] = FILLED_BY_WINDOW, parent=None) -> None:
        super().__init__(parent)
        self.spec_cls = spec_cls
        self.getters: dict[str, typing.Callable[[], Any]] = {}
        self.widgets: dict[str, QWidget] = {}
        hints = get_type_hints(spec_cls)
        self.used_by: dict[str, tuple[str, ...]] = {}
        self._own_tips: dict[str, str] = {}
        layout = QFormLayout(self)
        self.form_layout = layout
        layout.setContentsMargins(0, 0, 0, 0)
        for f in dataclasses.fields(spec_cls):
            if f.name in skip or not f.init:
                continue
            choices = f.metadata.get("choices")      # a registry's names (e.g. the quantizers)
            default = field_default(f)
            made = self._choice(choices(), default) if choices else self._widget(hints[f.name], default, f.name)
            if made is None:
                continue
            widget, getter = made
            if help_of(f) and not widget.toolTip():     # the CLI's help text, from the same field
                widget.setToolTip(help_of(f))
            self.widgets[f.name], self.getters[f.name] = widget, getter
            for signal in _change_signals(widget):
                signal.connect(self.changed)
            layout.addRow(f.name.replace("_", " "), widget)

    @staticmethod
    def _choice(choices: list, default: Any):
        combo = ComboBox()
        for choice in choices:
            combo.addItem(str(choice), choice)
        if default in choices:
            combo.setCurrentIndex(list(choices).index(default))
        return combo, combo.currentData

    def _widget(self, tp: Any, default: Any, name: str = ""):
        base, optional = _unwrap_optional(tp)
        if base is str and name in SOURCE_FIELDS:
            combo = ComboBox(editable=True)
            combo.addItems([s for s in SOURCES if s != default])
            combo.setEditText("" if default is None else str(default))
            combo.setToolTip("builtin | builtin-eval | selfgen | file:PATH | hf:NAME[:CONFIG[:SPLIT]]"
                             " (never calibrate on WikiText-2 test)")
            return combo, lambda: (combo.currentText().strip() or None) if optional else combo.currentText().strip()
        if get_origin(base) is Literal:
            return self._choice(list(get_args(base)), default)
        if base is bool and optional:       # None: the engine decides (e.g. clip: on for GPTQ only)
            combo = ComboBox()
            combo.addItems(list(TRI_STATE))
            combo.setCurrentText(_tri_state_label(default))
            return combo, lambda: TRI_STATE[combo.currentText()]
        if base is bool:
            box = QCheckBox(checked=bool(default))
            return box, box.isChecked
        if base in (int, float, str):
            if not optional and base is int:
                spin = SpinBox(minimum=-1, maximum=10**9, value=int(default or 0))
                return spin, spin.value
            if not optional and base is float:
                spin = DoubleSpinBox(minimum=-1e9, maximum=1e9, decimals=6, value=float(default or 0.0))
                spin.setStepType(QDoubleSpinBox.StepType.AdaptiveDecimalStepType)
                return spin, spin.value
            edit = QLineEdit("" if default is None else str(default))
            if optional:
                edit.setPlaceholderText("none")

            def get(edit=edit, base=base, optional=optional):
                text = edit.text().strip()
                if not text and optional:
                    return None
                return base(text) if base is not str else text
            return edit, get
        if get_origin(base) is list and get_args(base) and get_args(base)[0] in (int, float):
            item = get_args(base)[0]
            edit = QLineEdit("" if default is None else ",".join(str(v) for v in default))
            edit.setPlaceholderText("none" if optional else "comma-separated")

            def get_list(edit=edit, item=item, optional=optional):
                text = edit.text().strip()
                if not text and optional:
                    return None
                return [item(v) for v in text.replace(" ", "").split(",") if v]
            return edit, get_list
        return None     # dicts, nested specs: defaults from the engine

    def set_used_by(self, switch: str, used_by: dict[str, tuple[str, ...]]) -> None:
        """Fields only some values of the `switch` field use (e.g. GPTQ's damp): disabled,
        with a tooltip saying which, while another value is chosen."""
        self.used_by = dict(used_by)
        combo = self.widgets[switch]
        combo.currentIndexChanged.connect(lambda *_: self._update_used(switch))
        self._update_used(switch)

    def _update_used(self, switch: str) -> None:
        current = str(self.getters[switch]())
        for name, methods in self.used_by.items():
            widget = self.widgets.get(name)
            if widget is None:
                continue
            used = current in methods
            label = self.form_layout.labelForField(widget)
            tip = "" if used else f"used by {' / '.join(m.upper() if len(m) <= 4 else m for m in methods)} only"
            own = self._own_tips.setdefault(name, widget.toolTip())
            widget.setEnabled(used)
            widget.setToolTip(own if used else tip)
            if label is not None:
                label.setEnabled(used)
                label.setToolTip(tip)

    def values(self) -> dict[str, Any]:
        """Field values; a text that does not parse raises ValueError naming the field."""
        out = {}
        for name, get in self.getters.items():
            try:
                out[name] = get()
            except ValueError:
                raise ValueError(f"{name.replace('_', ' ')}: not a valid value") from None
        return out

    def set_value(self, name: str, value: Any) -> None:
        w = self.widgets.get(name)
        if isinstance(w, QComboBox) and w.isEditable():
            w.setEditText("" if value is None else str(value))
        elif isinstance(w, QComboBox):
            i = w.findData(value)
            if i < 0 and (value is None or isinstance(value, bool)):
                i = w.findText(_tri_state_label(value))
            if i >= 0:
                w.setCurrentIndex(i)
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.setValue(value)
        elif isinstance(w, QLineEdit):
            w.setText("" if value is None else str(value))
