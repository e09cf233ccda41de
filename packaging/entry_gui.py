"""Entry point of the frozen window program `bitsmith` (PyInstaller).

`bitsmith [--model SOURCE]` opens the workbench. `bitsmith --smoke-test MODEL` is the
bundle's self-check: it opens the window (offscreen is fine), starts the bundled worker
program on an `inspect` job for MODEL, checks the events that come back, prints a JSON
verdict and exits 0 when all is well.
"""

from __future__ import annotations

import json
import sys


def smoke_test(model: str, timeout_s: float = 600.0) -> int:
    from PySide6.QtCore import QTimer

    from bitsmith.app.main import make_app
    from bitsmith.app.main_window import MainWindow

    app = make_app()
    window = MainWindow()
    window.show()
    events: list[dict] = []
    verdict: dict = {}

    def finished(outcome: str, code: int) -> None:
        kinds = [e["type"] for e in events]
        report = next((e["report"] for e in events if e["type"] == "result"), {})
        verdict.update(outcome=outcome, exit_code=code, event_types=sorted(set(kinds)),
                       layers_in_report=len(report.get("layers", [])),
                       layers_in_table=window.layers.rowCount(),
                       worker_frozen=bool(getattr(sys, "frozen", False)))
        verdict["ok"] = (outcome == "done" and kinds[:1] == ["stage"] and kinds[-1:] == ["result"]
                         and verdict["layers_in_report"] > 0
                         and verdict["layers_in_table"] == verdict["layers_in_report"])
        app.quit()

    window.client.event.connect(events.append)
    window.client.finished.connect(finished)
    QTimer.singleShot(int(timeout_s * 1000), lambda: (verdict.update(ok=False, outcome="timeout"), app.quit()))
    window.open_model(model)
    app.exec()
    print(json.dumps(verdict))
    return 0 if verdict.get("ok") else 1


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--smoke-test"] and len(args) == 2:
        return smoke_test(args[1])
    from bitsmith.app.main import main as gui_main

    return gui_main(args)


if __name__ == "__main__":
    sys.exit(main())
