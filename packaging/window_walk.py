"""Drive the real window through a full default quantize, and check it is alive afterwards.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -P packaging/window_walk.py \
        [--model default] [--out walk-out] [--method gptq]

Opens the window on the model (a real `inspect` job in the worker), presses the Quantize
page's Run button with the page's default settings, waits for the worker to finish, then
checks that the window still answers, saves a screenshot of it, and prints one JSON object:
the outcome, the seconds, how many layers reported an error, and how far the reference
counts of True/False/None moved (a binding that drops them aborts the process; see
tests/app/test_refcounts.py). Runs go to a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--out", default="walk-out", help="folder for the screenshot")
    p.add_argument("--method", default=None, help="override the page's quantizer (default: the page's own)")
    p.add_argument("--timeout-min", type=float, default=60.0)
    return p.parse_args()


def refcounts() -> dict[str, int]:
    return {"True": sys.getrefcount(True), "False": sys.getrefcount(False), "None": sys.getrefcount(None)}


def main() -> int:
    args = parse_args()
    os.environ["BITSMITH_RUNS"] = tempfile.mkdtemp(prefix="bitsmith-walk-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from PySide6.QtCore import QEventLoop, QSettings, QTimer

    from bitsmith.app.main import make_app
    from bitsmith.app.main_window import MainWindow

    app = make_app()
    settings = QSettings(str(Path(os.environ["BITSMITH_RUNS"]) / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1600, 1000)
    window.show()

    def run_to_end(start, timeout_ms: int) -> str:
        loop, got = QEventLoop(), []
        window.client.finished.connect(lambda outcome, code: (got.append(outcome), loop.quit()))
        QTimer.singleShot(timeout_ms, loop.quit)
        start()
        if not got:
            loop.exec()
        return got[0] if got else "timed out"

    opened = run_to_end(lambda: window.open_model(args.model), 10 * 60_000)
    if opened != "done":
        print(json.dumps({"step": "open", "outcome": opened, "message": window.runs.message.text()}))
        return 1
    form = window.strategies.forms["quantize"]
    if args.method:
        form.set_value("method", args.method)
    window.strategies.setCurrentIndex(list(window.strategies.forms).index("quantize"))
    layers_seen: list[str] = []
    window.client.layer.connect(lambda event: layers_seen.append(event.get("name", "")))
    before = refcounts()
    start = time.monotonic()
    outcome = run_to_end(window.strategies.run_buttons["quantize"].click, int(args.timeout_min * 60_000))
    seconds = time.monotonic() - start
    app.processEvents()
    alive = window.isVisible() and window.client is not None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "after-quantize.png"
    window.grab().save(str(shot))
    after = refcounts()
    print(json.dumps({"step": "quantize", "outcome": outcome, "seconds": round(seconds, 1),
                      "layers_reported": len(set(layers_seen)), "window_alive": alive,
                      "refcount_change": {k: after[k] - before[k] for k in after},
                      "pyside6": __import__("PySide6").__version__, "screenshot": str(shot),
                      "message": window.runs.message.text()}))
    window.close()
    return 0 if outcome == "done" and alive else 1


if __name__ == "__main__":
    sys.exit(main())
