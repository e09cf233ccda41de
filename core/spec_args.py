"""Command-line flags generated from a job spec dataclass, and the spec fields read back.

One flag per field, named after it (`code_lr` → `--code-lr`), with the field's default, its
type, and the help text in the field's metadata — the same metadata the window's forms read
(app/spec_form.py):

    code_lr: float = field(default=1e-2, metadata={"help": "Adam lr of the straight-through buffers"})

Metadata keys: `help` (a text, or a callable giving it: a registry's notes); `choices` (a callable giving the allowed names, e.g. a registry's);
`cli` (False: no flag; a string: the flag's name when it is not the field's); `group` (the
title of the help section the flag is listed under); `none_as`
(a flag value that stands for null: `--teacher-topk 0` is the full distribution).

Types: bool → --x / --no-x; int, float, str and their `| None`; Literal → choices;
list[int] / list[float] → a comma list ("2,3,4"). Nested specs (the model) are not flags.
No torch here: the CLI builds its parser before any job runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .config import field_default


def _base(tp: Any) -> Any:
    """`X | None` → X."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def comma_list(item: type):
    """argparse type of a comma list of `item`s: "2,3,4" → [2, 3, 4]."""

    def parse(text: str) -> list:
        try:
            return [item(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of {item.__name__} values") from None

    parse.__name__ = f"comma list of {item.__name__}"
    return parse


def spec_fields(spec_cls: type, skip: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields of `spec_cls` that are flags: not skipped, not nested specs, not `cli: False`."""
    hints = get_type_hints(spec_cls)
    return [f for f in dataclasses.fields(spec_cls)
            if f.init and f.name not in skip and f.metadata.get("cli", True) is not False
            and not dataclasses.is_dataclass(_base(hints[f.name]))]


def help_of(f: dataclasses.Field) -> str:
    """The field's help text ("" when it has none)."""
    text = f.metadata.get("help", "")
    return text() if callable(text) else text


def flag_of(f: dataclasses.Field) -> str:
    cli = f.metadata.get("cli")
    return "--" + (cli if isinstance(cli, str) else f.name.replace("_", "-"))


def add_spec_args(parser: argparse.ArgumentParser, spec_cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of `spec_cls` (see the module docstring), in field order."""
    hints = get_type_hints(spec_cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in spec_fields(spec_cls, skip):
        title = f.metadata.get("group")
        if title and title not in groups:
            groups[title] = parser.add_argument_group(title)
        where = groups[title] if title else parser
        tp, default = _base(hints[f.name]), field_default(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        if f.metadata.get("help"):
            kwargs["help"] = help_of(f)
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"]())
        elif get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kinds = {type(c) for c in kwargs["choices"]}
            if len(kinds) == 1 and kinds != {str}:
                kwargs["type"] = kinds.pop()
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(tp) is list:
            kwargs["type"] = comma_list(get_args(tp)[0])
            kwargs["metavar"] = "A,B,..."
        elif tp in (int, float):
            kwargs["type"] = tp
        where.add_argument(flag_of(f), **kwargs)


def spec_values(spec_cls: type, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """{field: value} from parsed flags (`none_as` values become null)."""
    out = {}
    for f in spec_fields(spec_cls, skip):
        value = getattr(args, f.name)
        if "none_as" in f.metadata and value == f.metadata["none_as"]:
            value = None
        out[f.name] = value
    return out


__all__ = ["add_spec_args", "spec_values", "spec_fields", "flag_of", "help_of", "comma_list"]
