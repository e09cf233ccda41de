"""Screenshots of the workbench's main views, for the README.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python packaging/screenshots.py \
        [--model default] [--out resources/screenshots] [--runs FOLDER] [--no-jobs]

Opens the window on the model (an `inspect` job), applies the rule editor's starting
rules, and — unless --no-jobs — runs real jobs through the worker so the views have
something to show: a dense evaluation, the pre-flight estimate of the quantization, a
quantization with those rules and one at uniform 3-bit (RTN by default: GPTQ on the default
model takes many minutes on a CPU), an evaluation of each checkpoint, Try it on the first.
Then it saves one PNG per view. Runs go to --runs (default: a fresh temporary folder, so your
own history is left alone). The window is driven by window_walk.py's `Driver`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))     # packaging/ (never the repository root)
from window_walk import Driver  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--out", default=str(REPO / "resources" / "screenshots"))
    p.add_argument("--runs", help="runs folder (default: a new temporary folder)")
    p.add_argument("--no-jobs", action="store_true", help="only open the model; no quantize/eval runs")
    p.add_argument("--method", default="rtn", choices=["rtn", "gptq"],
                   help="quantizer for the demo run (rtn: seconds; gptq: minutes on a CPU)")
    p.add_argument("--calib-windows", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=2)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    os.environ["BITSMITH_RUNS"] = args.runs or tempfile.mkdtemp(prefix="bitsmith-screenshots-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from PySide6.QtCore import QSettings

    from bitsmith.app.main import make_app
    from bitsmith.app.main_window import MainWindow
    from bitsmith.core.jobs import ModelSpec

    app = make_app()
    settings = QSettings(str(Path(os.environ["BITSMITH_RUNS"]) / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1600, 1000)
    window.show()
    d = Driver(window, app, Path(args.out), timeout_ms=60 * 60_000)
    saved: list[str] = []

    def run_job(start) -> str:
        outcome = d.run_job(start)
        print(f"  {window.current_kind}: {outcome} {window.runs.message.text()[:200]}", flush=True)
        return outcome

    def shot(name: str, widget=None) -> None:
        saved.append(d.shot(name, widget))
        print(f"saved {saved[-1]}", flush=True)

    def evaluate_checkpoint(run) -> None:
        choice = window.strategies.model_choice["eval"]
        choice.setCurrentIndex(max(choice.findData(str(run.quantized_dir)), 0))
        window.tabs.setCurrentIndex(1)
        window.strategies.setCurrentIndex(list(window.strategies.run_buttons).index("eval"))
        run_job(lambda: window.start_job("eval", {**window.strategies.forms["eval"].values(),
                                                  "model": ModelSpec(str(run.quantized_dir))}))

    def try_it(checkpoint: str) -> None:
        t = window.try_it
        t.quantized.setCurrentIndex(max(t.quantized.findData(checkpoint), 0))
        t.tokens.setValue(24)
        window.tabs.setCurrentIndex(window.tabs.indexOf(t))
        t.generate()
        deadline = time.monotonic() + 600
        while t.running and time.monotonic() < deadline:
            d.settle(200)
        shot("try-it")

    print(f"opening {args.model} …", flush=True)
    if run_job(lambda: window.open_model(args.model)) != "done":
        print("could not open the model: " + window.runs.message.text(), file=sys.stderr)
        return 1
    window.rules._apply()                     # the starting rules: spike-prone down_proj kept at 16-bit
    window.tabs.setCurrentIndex(0)
    shot("plan")

    if not args.no_jobs:
        forms = window.strategies.forms
        window.tabs.setCurrentIndex(1)
        forms["eval"].set_value("windows", args.eval_windows)
        forms["eval"].set_value("seqlen", args.seqlen)
        window.strategies.model_choice["eval"].setCurrentIndex(0)
        run_job(lambda: window.start_job("eval", forms["eval"].values()))
        for name, value in (("method", args.method), ("calib", "builtin"), ("calib_windows", args.calib_windows),
                            ("seqlen", args.seqlen), ("clip", args.method == "gptq"),
                            ("act_order", args.method == "gptq")):
            forms["quantize"].set_value(name, value)
        window.strategies.setCurrentIndex(list(window.strategies.run_buttons).index("quantize"))
        d.wait_estimate()
        shot("estimate")
        run_job(lambda: window.start_job("quantize", forms["quantize"].values()))
        window.plots.setCurrentIndex(0)
        shot("run-layer-errors")
        window.tabs.setCurrentIndex(0)
        window.heatmap.what.setCurrentIndex(1)
        shot("plan-error-heatmap")
        window.heatmap.what.setCurrentIndex(0)
        first = window.client.run_dir
        evaluate_checkpoint(first)
        window.set_uniform(3)                     # a second run to compare with
        run_job(lambda: window.start_job("quantize", forms["quantize"].values()))
        second = window.client.run_dir
        evaluate_checkpoint(second)
        window.tabs.setCurrentIndex(1)
        window.plots.setCurrentIndex(window.plots.count() - 1)
        shot("pareto")
        window.tabs.setCurrentIndex(2)
        window.refresh_history()
        shot("history")
        by_name = {r.name: r for r in window.history.records}
        if first.path.name in by_name and second.path.name in by_name:
            window._dialog([by_name[first.path.name], by_name[second.path.name]])
            window.last_dialog.resize(1500, 900)
            shot("compare", window.last_dialog)
            window.last_dialog.close()
        if window.checkpoints and window.export_button.isEnabled():
            window.open_export()
            window.last_dialog.format.setCurrentText("gguf")
            shot("export", window.last_dialog)
            window.last_dialog.close()
        try_it(str(first.quantized_dir))
    window.tabs.setCurrentIndex(1)
    window.strategies.setCurrentIndex(0)
    d.wait_estimate()
    shot("strategies")
    print("screenshots: " + ", ".join(saved))
    window.close()
    sys.stdout.flush()
    # Leave without Python's finalizer: PySide6 can crash tearing down widgets at exit,
    # after the work is done; the PNGs are already on disk.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
