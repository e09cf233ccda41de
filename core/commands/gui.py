"""`bitsmith gui [--model SOURCE]`: open the workbench window (PySide6).

core never imports Qt at module import time: the window is imported only when this
subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gui", help="open the workbench window")
    parser.add_argument("--model", help="open this model at start (default | folder | .gguf | hub id)")
    parser.add_argument("--runs", help="folder that holds the runs (default: $BITSMITH_RUNS or the app-data folder)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    app_main = importlib.import_module("bitsmith.app.main")
    argv = (["--model", args.model] if args.model else []) + (["--runs", args.runs] if args.runs else [])
    return int(app_main.main(argv))
