"""Walk the real window through issue 18's steps, as a new user would, with a screenshot of each.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -P packaging/window_walk.py \
        [--model default] [--out walk-out] [--only open,estimate,quantize,...]

Steps (each a real job through the worker, on the default model unless --model):
  open       open the model; the Plan tab                                   01-plan.png
  estimate   the Quantize page's pre-flight estimate, before Run: of its defaults (GPTQ, 32
             selfgen windows), then of the walk's settings        02-estimate-default-job, 02-estimate
  quantize   Run (--method, default RTN with --calib-windows of builtin text: output errors in
             minutes; GPTQ with the page's defaults takes most of an hour on two busy cores):
             live from the first second, cancelled part-way, resumed to the end with no layer
             lost                                              03-quantize-running, 04-cancelled, 05-quantized
  evaluate   perplexity of the checkpoint, then a 3-bit RTN run and its perplexity
  compare    History, and the two runs side by side with their perplexities   06-history, 07-compare
  spike      a spike-aware search landing its plan                          08-spike
  tune       a PV tuning run, cancelled after its first step                09-tune-cancelled
  export     the export dialog (size before writing), then the GGUF written 10-export-dialog, 11-exported

Prints one JSON line per step (outcome, seconds, what was checked, the screenshot) and a last
line with the window's state; exits 1 if a step failed or the window died. Runs go to a fresh
temporary folder. screenshots.py drives the window with the same `Driver`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

STEPS = ("open", "estimate", "quantize", "evaluate", "compare", "spike", "tune", "export")
WIKITEXT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--out", default="walk-out", help="folder for the screenshots")
    p.add_argument("--only", default=",".join(STEPS), help="comma-separated steps (open always runs)")
    p.add_argument("--method", default="rtn", choices=["gptq", "rtn"], help="the first quantize's method")
    p.add_argument("--calib-windows", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--timeout-min", type=float, default=20.0, help="limit for each job")
    return p.parse_args()


def refcounts() -> dict[str, int]:
    return {"True": sys.getrefcount(True), "False": sys.getrefcount(False), "None": sys.getrefcount(None)}


@dataclass
class Step:
    name: str
    outcome: str = "done"
    seconds: float = 0.0
    screenshots: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)


class Driver:
    """The window, and what a walk does with it: run a job to its end, wait for a condition
    while the event loop turns, save a screenshot."""

    def __init__(self, window, app, out: Path, timeout_ms: int) -> None:
        self.window, self.app, self.out, self.timeout_ms = window, app, out, timeout_ms
        out.mkdir(parents=True, exist_ok=True)

    def settle(self, ms: int = 400) -> None:
        end = time.monotonic() + ms / 1000
        while time.monotonic() < end:
            self.app.processEvents()
            time.sleep(0.02)

    def wait_until(self, done, timeout_ms: int | None = None) -> bool:
        end = time.monotonic() + (timeout_ms or self.timeout_ms) / 1000
        while not done() and time.monotonic() < end:
            self.settle(100)
        return bool(done())

    def run_job(self, start) -> str:
        """Start a job with `start()` and wait for the worker to finish; the outcome."""
        got: list[str] = []
        client = self.window.client
        record = lambda outcome, code: got.append(outcome)        # noqa: E731
        client.finished.connect(record)
        try:
            if start() is None and not client.running:
                return "not started: " + self.window.runs.message.text()
            self.wait_until(lambda: bool(got))
        finally:
            client.finished.disconnect(record)
        return got[0] if got else "timed out"

    def wait_estimate(self):
        """The Run page's estimate once it answers (None: it gave a message instead)."""
        box = self.window.estimate
        self.wait_until(lambda: not box.busy, 10 * 60_000)
        return box.shown

    def shot(self, name: str, widget=None) -> str:
        self.settle()
        path = self.out / f"{name}.png"
        (widget or self.window).grab().save(str(path))
        return str(path)

    def page(self, kind: str, values: dict | None = None) -> None:
        """The Run tab on `kind`'s page, its form set to `values`."""
        w = self.window
        for name, value in (values or {}).items():
            w.strategies.forms[kind].set_value(name, value)
        w.tabs.setCurrentIndex(1)
        w.strategies.setCurrentIndex(list(w.strategies.run_buttons).index(kind))

    def start(self, kind: str) -> object:
        """Press the page's Run button, as a user would."""
        self.page(kind)
        self.window.strategies.run_buttons[kind].click()
        return self.window.client.run_dir if self.window.client.running else None


# --- the steps ---------------------------------------------------------------------------------

def step_open(d: Driver, args) -> Step:
    outcome = d.run_job(lambda: d.window.open_model(args.model))
    d.window.tabs.setCurrentIndex(0)
    return Step("open", outcome, screenshots=[d.shot("01-plan")],
                checks={"layers": len(d.window.layers.rows), "summary": d.window.summary.text()[:160]})


def quantize_form(args) -> dict:
    return {"method": args.method, "calib": "builtin", "calib_windows": args.calib_windows, "seqlen": args.seqlen}


def estimate_checks(d: Driver) -> dict:
    shown = d.wait_estimate()
    if shown is None:
        return {"message": d.window.estimate.text()}
    workload = {k: shown.workload.get(k) for k in ("method", "calib_windows", "seqlen", "selfgen")}
    return {**{k: v for k, v in asdict(shown).items() if k != "workload"}, "workload": workload}


def step_estimate(d: Driver, args) -> Step:
    """The estimate of the page's own defaults (the default job), then of the walk's settings."""
    d.page("quantize")
    step = Step("estimate", checks={"default_job": estimate_checks(d)})
    step.screenshots.append(d.shot("02-estimate-default-job"))
    d.page("quantize", quantize_form(args))
    step.checks["walk_job"] = estimate_checks(d)
    step.screenshots.append(d.shot("02-estimate"))
    if not all("peak_ram" in c for c in step.checks.values()):
        step.outcome = "failed"
    return step


def step_quantize(d: Driver, args) -> Step:
    """Run, screenshot while it runs, cancel part-way, resume to the end."""
    w, step = d.window, Step("quantize")
    d.page("quantize", quantize_form(args))
    first: dict[str, float] = {}      # the first event, and the first progress event, after Run
    w.client.event.connect(lambda e: first.setdefault("event", time.monotonic()))
    w.client.progress.connect(lambda *a: first.setdefault("progress", time.monotonic()))
    pressed = time.monotonic()
    run = d.start("quantize")
    layers = lambda: sum(r.rel_error is not None for r in w.layers.rows)     # noqa: E731
    d.wait_until(lambda: layers() >= 60 or not w.client.running)
    step.screenshots.append(d.shot("03-quantize-running"))
    for what, at in first.items():
        step.checks[f"first_{what}_s"] = round(at - pressed, 1)
    if w.client.running:            # a run that ended before the screenshot has nothing to cancel
        step.checks["cancelled"] = d.run_job(lambda: w.runs.cancel() or True)
        step.checks["layers_at_cancel"] = layers()
        step.screenshots.append(d.shot("04-cancelled"))
        step.outcome = d.run_job(lambda: w.runs.resume_button.click() or True)
    else:
        step.outcome = w.runs.outcome or "unknown"
    step.checks["layers_after_resume"] = layers()
    step.checks["all_layers"] = len(w.layers.rows)
    step.checks["run"] = run.path.name if run else None
    w.plots.setCurrentIndex(0)
    step.screenshots.append(d.shot("05-quantized"))
    if step.checks["layers_after_resume"] != step.checks["all_layers"]:
        step.outcome = "layers lost"
    return step


def evaluate(d: Driver, args, checkpoint: str) -> str:
    choice = d.window.strategies.model_choice["eval"]
    choice.setCurrentIndex(max(choice.findData(checkpoint), 0))
    data = f"file:{WIKITEXT}" if WIKITEXT.is_file() else "builtin-eval"
    d.page("eval", {"data": data, "windows": args.eval_windows, "seqlen": 512})
    return d.run_job(lambda: d.start("eval"))


def step_evaluate(d: Driver, args) -> Step:
    """Perplexity of the quantized run, then a 3-bit RTN run (the second to compare) and its own."""
    w, step = d.window, Step("evaluate")
    runs = sorted(w.checkpoints, key=lambda c: c[1])
    step.checks["first"] = evaluate(d, args, runs[-1][1]) if runs else "no checkpoint"
    w.set_uniform(3)
    step.checks["rtn3"] = d.run_job(lambda: (d.page("quantize", {"method": "rtn", "calib_windows": 0}),
                                             d.start("quantize"))[1])
    step.checks["second"] = evaluate(d, args, str(w.client.run_dir.quantized_dir))
    w.set_uniform(4)
    step.outcome = "done" if {step.checks["first"], step.checks["rtn3"], step.checks["second"]} == {"done"} else "failed"
    return step


def step_compare(d: Driver, args) -> Step:
    w = d.window
    w.refresh_history()
    w.tabs.setCurrentIndex(2)
    step = Step("compare", screenshots=[d.shot("06-history")])
    quantized = [r for r in w.history.records if r.kind == "quantize" and r.has_quantized][:2]
    if len(quantized) < 2:
        return Step("compare", "needs two quantized runs", screenshots=step.screenshots)
    w._dialog(quantized)
    w.last_dialog.resize(1500, 900)
    table = w.last_dialog.compare_table
    row = next(i for i in range(table.rowCount()) if table.item(i, 0).text() == "perplexity")
    step.checks["perplexities"] = [table.item(row, j).text() for j in (1, 2)]
    step.screenshots.append(d.shot("07-compare", w.last_dialog))
    w.last_dialog.close()
    if not all(p[:1].isdigit() for p in step.checks["perplexities"]):
        step.outcome = "perplexity missing"
    return step


def step_spike(d: Driver, args) -> Step:
    w = d.window
    d.page("search", {"method": "spike", "target_bits": 3.5, "calib": "builtin", "windows": args.calib_windows,
                      "seqlen": args.seqlen, "final_eval": False})
    outcome = d.run_job(lambda: d.start("search"))
    plot_tab(w, "Spikes")
    bits = Counter(r.bits for r in w.layers.rows)
    return Step("spike", outcome, screenshots=[d.shot("08-spike")],
                checks={"spike_scores": len(w.plots.spikes), "table_bits": dict(sorted(bits.items()))})


def plot_tab(w, title: str) -> None:
    w.plots.setCurrentIndex([w.plots.tabText(i) for i in range(w.plots.count())].index(title))


def step_tune(d: Driver, args) -> Step:
    """A PV run cancelled at its first step's progress: it must end as cancelled, promptly."""
    w, cancelled_at = d.window, []

    def cancel_once(stage, done, total, eta) -> None:
        if stage == "tune" and not cancelled_at:
            cancelled_at.append(time.monotonic())
            w.runs.cancel_button.click()

    # a small batch: one PV step of the default model is minutes on two busy cores otherwise
    d.page("tune", {"method": "pv", "steps": 40, "windows": 2, "batch": 1, "seqlen": 64,
                    "calib": "builtin", "eval_every": 0, "eval_windows": 1})
    w.client.progress.connect(cancel_once)
    try:
        outcome = d.run_job(lambda: d.start("tune"))
    finally:
        w.client.progress.disconnect(cancel_once)
    seconds = time.monotonic() - cancelled_at[0] if cancelled_at else None
    plot_tab(w, "Loss / ppl / KL")
    return Step("tune", outcome if outcome == "cancelled" else f"not cancelled: {outcome}",
                screenshots=[d.shot("09-tune-cancelled")],
                checks={"cancel_to_end_s": round(seconds, 1) if seconds else None,
                        "message": w.runs.message.text()[:200]})


def step_export(d: Driver, args) -> Step:
    w = d.window
    w.open_export()
    dialog = w.last_dialog
    dialog.format.setCurrentText("gguf")
    d.settle(1000)
    step = Step("export", screenshots=[d.shot("10-export-dialog", dialog)],
                checks={"size_before": dialog.size.text()[:200]})
    step.outcome = d.run_job(lambda: (dialog.export_button.click(), w.client.running)[1] or None)
    w.tabs.setCurrentIndex(1)
    step.screenshots.append(d.shot("11-exported"))
    step.checks["message"] = w.runs.message.text()[:300]
    return step


def main() -> int:
    args = parse_args()
    os.environ["BITSMITH_RUNS"] = tempfile.mkdtemp(prefix="bitsmith-walk-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from PySide6.QtCore import QSettings

    from bitsmith.app.main import make_app
    from bitsmith.app.main_window import MainWindow

    app = make_app()
    settings = QSettings(str(Path(os.environ["BITSMITH_RUNS"]) / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1600, 1000)
    window.show()
    d = Driver(window, app, Path(args.out), int(args.timeout_min * 60_000))
    wanted = {"open", *args.only.split(",")}
    before, started, ok = refcounts(), time.monotonic(), True
    for name in STEPS:
        if name not in wanted:
            continue
        t = time.monotonic()
        step = globals()[f"step_{name}"](d, args)
        step.seconds = round(time.monotonic() - t, 1)
        print(json.dumps(asdict(step)), flush=True)
        ok = ok and step.outcome in ("done", "cancelled" if name == "tune" else "done")
        if name == "open" and step.outcome != "done":
            break
    after = refcounts()
    alive = window.isVisible()
    print(json.dumps({"walk": "done" if ok and alive else "failed", "seconds": round(time.monotonic() - started, 1),
                      "window_alive": alive, "refcount_change": {k: after[k] - before[k] for k in after},
                      "pyside6": __import__("PySide6").__version__}), flush=True)
    window.close()
    sys.stdout.flush()
    os._exit(0 if ok and alive else 1)       # PySide6 can crash tearing widgets down at exit; all is written


if __name__ == "__main__":
    main()
