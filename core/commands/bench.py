"""`bitsmith bench TARGET [options]`: benchmarks that print JSON (or a table), not timed tests.

Targets are found, without importing them, by a naming rule, so other areas add theirs
without editing this file:

    bitsmith/kernels/bench.py          -> target "kernels"
    bitsmith/core/<area>/bench.py      -> target "<area>"      (e.g. core/search/bench.py: "search")
    bitsmith/core/<area>/bench_X.py    -> target "X"           (core/quant/bench_quantize.py: "quantize")

A target module defines `main(argv: list[str] | None) -> int` (its own argparse, `--json`).
Code can also add a target explicitly with `register_bench_target(name, "module:function")`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from ..errors import BadInput

_EXPLICIT: dict[str, str] = {}     # target -> "module:function"


def register_bench_target(name: str, entry: str) -> None:
    """Add a target by hand: `entry` is "package.module:function" taking argv."""
    _EXPLICIT[name] = entry


def _scan(package: str, folder: Path, found: dict[str, str]) -> None:
    for mod in pkgutil.iter_modules([str(folder)]):
        if mod.name == "bench":
            found.setdefault(folder.name, f"{package}.bench:main")
        elif mod.name.startswith("bench_"):
            found.setdefault(mod.name[len("bench_"):], f"{package}.{mod.name}:main")


def bench_targets() -> dict[str, str]:
    """{target: "module:function"} for every benchmark found."""
    found: dict[str, str] = dict(_EXPLICIT)
    core = Path(__file__).resolve().parent.parent
    for sub in sorted(p for p in core.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        if sub.name != "commands":
            _scan(f"bitsmith.core.{sub.name}", sub, found)
    spec = importlib.util.find_spec("bitsmith.kernels")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0])
        if (folder / "bench.py").is_file():
            found.setdefault("kernels", "bitsmith.kernels.bench:main")
    return dict(sorted(found.items()))


def register(subparsers: argparse._SubParsersAction) -> None:
    targets = bench_targets()
    parser = subparsers.add_parser("bench", help="run a benchmark (prints JSON with --json)",
                                   description="Benchmarks: " + ", ".join(targets) +
                                   ". Options after TARGET go to the target; try `bitsmith bench TARGET --help`.")
    parser.add_argument("target", help=" | ".join(targets) or "no targets found")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the target's own options (e.g. --json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    targets = bench_targets()
    entry = targets.get(args.target)
    if entry is None:
        raise BadInput(f"unknown benchmark {args.target!r}", f"use one of: {', '.join(targets)}")
    module, _, function = entry.partition(":")
    main = getattr(importlib.import_module(module), function or "main")
    sys.stdout.flush()
    return int(main(list(args.options)) or 0)
