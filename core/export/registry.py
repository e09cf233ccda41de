"""The export formats, each registered by its own file in core/export/formats/ (as job kinds
register with `register_job`): its writer, its plan warnings, its reader verdicts, its model
card text and its size estimate. Validation, the CLI's choices, the job's `format` field and
the window's export dialog read this registry; nothing else lists the formats.

Adding a format is one new file, formats/NAME.py, that calls `register_format(ExportFormat(...))`.
Torch-free, as every file under formats/ must be: the window reads the registry to fill its
menus and warnings. A writer that needs torch imports it (or its own module) when called.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .readers import ReaderVerdict
from .settings import LayerSetting

Settings = dict[str, LayerSetting]


@dataclass(frozen=True)
class PlanCheck:
    """What the pure checks know besides the layers: the options, the architecture, act-order."""
    lowbit: str = "lossless"
    ct_layout: str = "sym"
    embed_bits: int = 8
    arch: str | None = None          # config.json's model_type, when known
    act_order: bool = False          # the plan asked for GPTQ act-order


@dataclass(frozen=True)
class LayerShape:
    """A quantized layer as the checkpoint's manifest describes it (for the size estimate)."""
    d_out: int
    d_in: int
    bits: int
    group_size: int
    sym: bool
    integer_zeros: bool              # assumed, unless the checkpoint was tuned


@dataclass(frozen=True)
class FormatOption:
    """An export option a format reads (a field of the export job, a key of its options)."""
    key: str                         # "lowbit": the job field, the options key, --lowbit
    choices: tuple                   # the values it takes (CLI choices, validation)
    default: Any
    unknown: str                     # the error for another value; {value} is filled in
    hint: str
    convert: Callable[[Any], Any] = lambda value: value   # applied before the choices check
    labels: Mapping[Any, str] = field(default_factory=dict)    # value -> what the window's menu says

    def check(self, options: dict) -> None:
        from ..errors import BadInput

        value = options.get(self.key, self.default)
        if self.convert(value) not in self.choices:
            raise BadInput(self.unknown.format(value=value), self.hint)


def _nothing(*_args: Any) -> list[str]:
    return []


def _fp16_bytes(name: str, shape: list[int], check: PlanCheck) -> float:
    n = 1
    for d in shape:
        n *= d
    return 2 * n


@dataclass(frozen=True)
class ExportFormat:
    name: str                        # --format NAME, the job's `format`, RUN_DIR/export/NAME
    rank: int                        # place in menus, choices and messages (lowest first)
    stores: str                      # what the format stores, in a paragraph (export dialog, estimate)
    card_notes: str                  # the model card's "## Format" section
    card_imports: str                # the imports the card's Python calls assume ("" for none)
    write: Callable[[Any, Path, dict], dict]   # (ExportSource, staged folder, options) -> format report
    readers: Callable[[Settings, dict], list[ReaderVerdict]]   # who reads the file (readers.py)
    plan_warnings: Callable[[Settings, PlanCheck], list[str]] = _nothing   # before any tensor is read
    data_warnings: Callable[[dict], list[str]] = _nothing      # from the writer's report
    card_lines: Callable[[dict], list[str]] = _nothing         # model card lines under the plan
    summary_lines: Callable[[dict], list[str]] = _nothing      # `bitsmith export` summary lines
    # size estimate: bytes of one quantized layer and the block type it names (or None);
    # None for a format that copies the checkpoint's own files
    layer_bytes: Callable[[LayerShape, PlanCheck], tuple[float, str | None]] | None = None
    dense_bytes: Callable[[str, list[int], PlanCheck], float] = _fp16_bytes   # any other tensor
    options: tuple[FormatOption, ...] = ()
    holds_checkpoint: bool = False   # stores fp8 layers and EoRA adapters as they are
    # `bitsmith verify`: reader call -> function(Inputs) -> torch model, for calls verify.py lacks
    runners: Mapping[str, Callable] = field(default_factory=dict)

    def reads(self, key: str) -> bool:
        """Whether the format reads export option `key` (the window enables its control)."""
        return any(o.key == key for o in self.options)


_FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Called once by each file in formats/ (a second, different format of the same name is a bug)."""
    known = _FORMATS.get(fmt.name)
    if known is not None and known is not fmt:
        raise ValueError(f"export format {fmt.name!r} is registered twice ({known.write.__module__} and "
                         f"{fmt.write.__module__})")
    _FORMATS[fmt.name] = fmt
    return fmt


def export_formats() -> dict[str, ExportFormat]:
    """Every registered format by name, in rank order; imports each module of formats/ once."""
    from . import formats

    for mod in pkgutil.iter_modules(formats.__path__):
        importlib.import_module(f"{formats.__name__}.{mod.name}")
    return dict(sorted(_FORMATS.items(), key=lambda item: (item[1].rank, item[0])))


def format_names() -> tuple[str, ...]:
    return tuple(export_formats())


def export_option(key: str) -> FormatOption:
    """The option `key` (e.g. "lowbit") of whichever format reads it."""
    for fmt in export_formats().values():
        for option in fmt.options:
            if option.key == key:
                return option
    raise KeyError(f"no export format reads the option {key!r}")


def check_options(options: dict) -> None:
    """Every format's options, whatever the format: a wrong value is an error either way."""
    for fmt in export_formats().values():
        for option in fmt.options:
            option.check(options)


def reader_verdicts(fmt: str, settings: Settings, options: dict | None = None) -> list[ReaderVerdict]:
    """Every reader we know of for `fmt`, and what it does with an export of these layers.
    options: the export's (`ct_layout`), plus `groups` [(bits, group size, sym, format)] once the
    file's config groups are known."""
    return export_formats()[fmt].readers(settings, dict(options or {}))
