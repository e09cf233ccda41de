"""The pre-flight estimate on the Run page, before Run is pressed: computed in a separate
process on the job the page would start, the same figures the command line prints for the
same job, re-estimated when the form changes (the running estimate replaced), and a clear
message when there is no estimate."""

from __future__ import annotations

import json
import subprocess

import pytest

from bitsmith.app.estimate_box import figures_html
from bitsmith.app.preflight import NoEstimate, Preflight, duration_text, parse_output, size_text
from bitsmith.core.client import module_command

ESTIMATE_MS = 120_000
QUANTIZE = {"method": "rtn", "calib": "builtin", "calib_windows": 4, "seqlen": 64}


def _cli_estimate(*args: str) -> tuple[int, dict]:
    out = subprocess.run(module_command("bitsmith.core.cli", *args, "--dry-run", "--json"),
                         capture_output=True, text=True, timeout=300)
    return out.returncode, json.loads(out.stdout)


def _show_page(w, kind: str, values: dict) -> None:
    """The Run tab on `kind`'s page, its form set to `values` (the box in view)."""
    form = w.strategies.forms[kind]
    for name, value in values.items():
        form.set_value(name, value)
    w.tabs.setCurrentIndex(1)
    w.strategies.setCurrentIndex(list(w.strategies.run_buttons).index(kind))


def _answer(w, wait_for):
    """Spin until the box shows a final answer; the figures it shows (None: a message)."""
    if w.estimate.busy:
        wait_for(w.estimate.updated, lambda: None, ESTIMATE_MS)
    return w.estimate.shown


@pytest.fixture
def run_page(opened):
    yield opened
    opened.tabs.setCurrentIndex(0)         # out of view: no estimates while other tests run jobs


def test_the_estimate_shows_before_run_with_the_cli_figures(run_page, wait_for, tiny_llama):
    w = run_page
    before = w.estimate.process.started
    _show_page(w, "quantize", QUANTIZE)
    shown = _answer(w, wait_for)
    assert shown is not None, w.estimate.text()
    assert w.estimate.process.started > before            # estimated here, not a stale answer
    assert not w.client.running                           # nothing was run for it
    code, cli = _cli_estimate("quantize", str(tiny_llama), "--method", "rtn", "--bits", "4", "--group-size", "64",
                              "--calib", "builtin", "--calib-windows", "4", "--seqlen", "64")
    assert code == 0 and cli["fits"] and shown.fits
    assert shown.workload == cli["workload"]               # the same job as the command line's
    assert (shown.disk, shown.peak_gpu) == (cli["disk"], cli["peak_gpu"]) and shown.disk > 0
    # RAM counts each process's own start (Python, torch imported): equal within a few MB
    assert abs(shown.peak_ram - cli["peak_ram"]) < 0.1 * cli["peak_ram"]
    # time comes from a probe timed in each process, on a shared machine
    assert shown.seconds and cli["seconds"] and 0.25 < shown.seconds / cli["seconds"] < 4
    text = w.estimate.text()
    for figure in (size_text(shown.peak_ram), size_text(shown.disk), duration_text(shown.seconds),
                   "fits this machine", "Before you run quantize"):
        assert figure in text, (figure, text)


def test_a_change_replaces_the_running_estimate(run_page, wait_for):
    w = run_page
    _show_page(w, "quantize", QUANTIZE)
    _answer(w, wait_for)
    before = w.estimate.process.started
    answers = []
    w.estimate.process.answered.connect(answers.append)
    form = w.strategies.forms["quantize"]
    for seqlen in (48, 40, 36):                            # typed in a burst: one estimate
        form.set_value("seqlen", seqlen)
    assert w.estimate._timer.isActive() and w.estimate.process.started == before
    while not w.estimate.process.running:
        wait_for(w.estimate._timer.timeout, lambda: None, 5_000)
    assert w.estimate.process.started == before + 1
    assert "estimating" in w.estimate.text()
    form.set_value("seqlen", 32)                           # changed again while it runs
    wait_for(w.estimate._timer.timeout, lambda: None, 5_000)
    assert w.estimate.process.started == before + 2
    shown = _answer(w, wait_for)
    w.estimate.process.answered.disconnect(answers.append)
    assert shown is not None and shown.workload["seqlen"] == 32
    assert len(answers) == 1                               # the replaced estimate's answer was dropped


def test_a_job_the_form_cannot_build_says_why(run_page, wait_for):
    w = run_page
    _show_page(w, "quantize", {**QUANTIZE, "threads": "two"})
    assert _answer(w, wait_for) is None
    assert "No estimate for this quantize" in w.estimate.text() and "threads" in w.estimate.text()
    w.strategies.forms["quantize"].set_value("threads", None)


def test_an_estimate_that_fails_says_why(run_page, wait_for, tmp_path):
    w = run_page
    missing = tmp_path / "missing.txt"
    _show_page(w, "eval", {"data": f"file:{missing}", "windows": None})   # all windows: the file is read
    w.strategies.model_choice["eval"].setCurrentIndex(0)                 # the open model
    assert _answer(w, wait_for) is None
    text = w.estimate.text()
    assert "No estimate for this eval" in text and "missing.txt" in text, text
    _show_page(w, "eval", {"data": "builtin-eval", "windows": 16})


def test_a_job_that_does_not_fit_says_what_would(tiny_llama):
    """The real command line's answer for a job refused under --max-memory, as the box words it."""
    code, doc = _cli_estimate("quantize", str(tiny_llama), "--max-memory", "0.01")
    assert code == 2 and not doc["fits"]
    answer = parse_output(json.dumps(doc), "", code)
    html = figures_html(answer, {"calib_windows", "batch_size"})
    assert "does not fit" in html and "fits this machine" not in html and "needs" in html
    fewer = Preflight(**{**answer.__dict__, "refusal": "needs 40.0 GB of RAM, 31.0 GB are available: "
                                                      "try --calib-windows 8 with --offload disk"})
    assert "on the command line" in figures_html(fewer, {"calib_windows"})      # --offload has no field
    only_form = Preflight(**{**answer.__dict__, "refusal": "needs 40.0 GB of RAM, 31.0 GB are available: "
                                                           "try --calib-windows 8"})
    assert "“calib windows” 8" in figures_html(only_form, {"calib_windows"})


def test_no_json_is_read_as_the_cli_error():
    assert parse_output("", "Traceback…\nerror: there is no estimate for tune jobs yet (hint)\n", 2) == \
        NoEstimate("there is no estimate for tune jobs yet (hint)", bad_input=True)
    failed = parse_output("", "Killed\n", 1)
    assert not failed.bad_input and "code 1" in failed.reason and "Killed" in failed.reason


def test_a_running_job_holds_the_estimate(run_page, wait_for):
    """While a job runs the figures stay, said to be from before it; its end estimates anew."""
    w = run_page
    _show_page(w, "quantize", QUANTIZE)
    assert _answer(w, wait_for) is not None
    w.estimate.hold(True)
    assert "as estimated before the running job" in w.estimate.text() and not w.estimate.busy
    w.strategies.forms["quantize"].set_value("seqlen", 80)          # no estimate while held
    assert not w.estimate.busy
    w.estimate.hold(False)
    assert w.estimate.busy and "as estimated before the running job" not in w.estimate.text()
    shown = _answer(w, wait_for)
    assert shown is not None and shown.workload["seqlen"] == 80 and "Before you run quantize" in w.estimate.text()
    w.strategies.forms["quantize"].set_value("seqlen", QUANTIZE["seqlen"])
