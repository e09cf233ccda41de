"""Start the workbench: `bitsmith-gui [--model SOURCE] [--runs FOLDER]`, or `python -m bitsmith.app`."""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bitsmith-gui", description="The Bitsmith workbench window.")
    parser.add_argument("--model", help="open this model at start (default | folder | .gguf | hub id)")
    parser.add_argument("--runs", help="folder that holds the runs (default: $BITSMITH_RUNS or the app-data folder)")
    return parser.parse_args(argv)


def make_app(argv: list[str] | None = None):
    """The QApplication with Bitsmith's names, icon and style sheet (reused if one exists)."""
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from . import paths

    app = QApplication.instance() or QApplication(list(argv or sys.argv[:1]))
    app.setOrganizationName(paths.ORGANIZATION)
    app.setApplicationName(paths.APPLICATION)
    app.setApplicationDisplayName("Bitsmith")
    icon = paths.resource("icons", "bitsmith.svg")
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    style = paths.resource("style.qss")
    if style.is_file():
        app.setStyleSheet(style.read_text(encoding="utf-8"))
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.runs:
        os.environ["BITSMITH_RUNS"] = args.runs
    app = make_app()
    from .main_window import MainWindow

    window = MainWindow()
    window.show()
    if args.model:
        window.picker.set_source(args.model)
        window.open_model(args.model)
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
