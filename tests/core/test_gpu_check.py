"""The GPU check's plumbing (core/gpu_check.py): the step runner's bookkeeping, time limits
and dependencies, the parsers of its results, and the cheap part of the CPU rehearsal (the
environment probe and the benchmark's CPU mode) through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bitsmith.core.client import module_command
from bitsmith.core.gpu_check import (REHEARSAL, RESULT_FILE, STEPS, CheckSizes, GpuCheck, StepFailed, junit_counts,
                                     step_gptq, tune_throughput, verbose_counts)


def _sizes(budget_s: float = 60, limits: dict | None = None) -> CheckSizes:
    base = {name: (20.0, 0.0) for name in STEPS}
    return CheckSizes(**{**REHEARSAL.__dict__, "budget_s": budget_s, "limits": {**base, **(limits or {})}})


def _read(out) -> dict:
    return json.loads((out / RESULT_FILE).read_text())


def test_failures_timeouts_and_missing_inputs_do_not_stop_the_run(tmp_path):
    out, seen = tmp_path / "out", {}

    def env(check, step):
        step.results["answer"] = 42

    def tests(check, step):
        raise StepFailed("3 failed")

    def bench(check, step):  # a child that outlives its limit is killed with its process group
        check.call(step, [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"])

    def model(check, step):
        raise KeyError("a bug in the driver")

    def rtn(check, step):  # the file on disk already holds every finished step
        seen.update(_read(out)["steps"])

    def tune(check, step):
        step.results["ran"] = True

    functions = {"env": env, "tests": tests, "bench": bench, "model": model, "gptq": step_gptq, "rtn": rtn,
                 "tune": tune, "scale": tune}
    check = GpuCheck(_sizes(limits={"bench": (1.5, 0.0)}), out, tmp_path / "work", tmp_path, functions=functions)
    started = time.monotonic()
    doc = check.run()
    assert time.monotonic() - started < 20
    steps = doc["steps"]
    assert list(steps) == list(STEPS) and doc["complete"] and _read(out) == doc
    assert steps["env"]["status"] == "ok" and steps["env"]["results"] == {"answer": 42}
    assert steps["tests"]["status"] == "failed" and steps["tests"]["error"] == "3 failed"
    assert steps["bench"]["status"] == "timeout" and steps["bench"]["seconds"] < 15
    assert "started" in (out / steps["bench"]["log"]).read_text() and "started" in steps["bench"]["log_tail"]
    assert steps["model"]["status"] == "failed" and "KeyError" in steps["model"]["error"]
    assert steps["gptq"]["status"] == "skipped" and "model" in steps["gptq"]["error"]
    assert steps["rtn"]["status"] == "ok"
    assert seen["bench"]["status"] == "timeout" and seen["rtn"]["status"] == "running"
    assert steps["tune"]["results"] == {"ran": True} and steps["scale"]["results"] == {"ran": True}
    assert doc["summary"]["status"]["bench"] == "timeout"


def test_later_steps_keep_their_floors_and_unselected_steps_are_skipped(tmp_path):
    ran = {}

    def record(check, step):
        ran[step.name] = step.limit_s

    functions = {name: record for name in STEPS}
    only = ("env", "bench", "tune")
    # budget 10 s: env may take what bench's and tune's floors leave (10 - 3 - 5), bench 10 - 5
    limits = {"env": (100.0, 1.0), "tests": (100.0, 4.0), "bench": (100.0, 3.0), "tune": (100.0, 5.0)}
    doc = GpuCheck(_sizes(10, limits), tmp_path / "a", tmp_path / "w", tmp_path, only, functions=functions).run()
    assert doc["steps"]["tests"]["status"] == "skipped" and doc["steps"]["tests"]["error"] == "not selected (--only)"
    assert list(ran) == ["env", "bench", "tune"]
    assert 1.5 < ran["env"] <= 2 and 4.5 < ran["bench"] <= 5 and 9 < ran["tune"] <= 10
    # tune's floor of 8 s leaves env and bench too little: they are skipped, tune runs
    ran.clear()
    limits["tune"] = (100.0, 8.0)
    doc = GpuCheck(_sizes(10, limits), tmp_path / "b", tmp_path / "w", tmp_path, only, functions=functions).run()
    assert list(ran) == ["tune"]
    assert [doc["steps"][n]["status"] for n in only] == ["skipped", "skipped", "ok"]
    assert "out of time" in doc["steps"]["bench"]["error"]


def test_tune_throughput_uses_the_training_loop_stage():
    events = [{"type": "stage", "stage": "tune", "state": "start", "t": 0.0},     # the job's own stage
              {"type": "stage", "stage": "teacher", "state": "start", "t": 1.0},
              {"type": "stage", "stage": "tune", "state": "start", "t": 10.0},    # the loop's
              {"type": "metric", "name": "loss", "split": "train", "step": 1, "t": 14.0},
              {"type": "metric", "name": "kl", "split": "eval", "step": 1, "t": 14.5},
              {"type": "metric", "name": "loss", "split": "train", "step": 2, "t": 16.0},
              {"type": "metric", "name": "loss", "split": "train", "step": 3, "t": 18.0}]
    got = tune_throughput(events, tokens_per_step=1000)
    assert got == {"steps_timed": 3, "tokens_per_step": 1000, "first_step_s": 4.0, "tokens_per_s": 375.0,
                   "steady_step_s": 2.0, "steady_tokens_per_s": 500.0}
    assert tune_throughput(events[:3], 1000) == {"steps_timed": 0}


def test_pytest_results_from_junit_xml_or_from_a_cut_off_log(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4" time="1.5">'
                   '<testcase classname="tests.kernels.test_a" name="test_ok" time="0.1"/>'
                   '<testcase classname="tests.kernels.test_a" name="test_bad" time="0.1">'
                   '<failure message="assert 1 == 2">trace</failure></testcase>'
                   '<testcase classname="tests.kernels.test_a" name="test_gpu" time="0">'
                   '<skipped message="needs a CUDA GPU"/></testcase>'
                   '<testcase classname="tests.kernels.test_b" name="test_err" time="0">'
                   '<error message="fixture broke"/></testcase></testsuite></testsuites>')
    got = junit_counts(xml)
    assert {k: got[k] for k in ("tests", "passed", "failed", "errors", "skipped")} == {
        "tests": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert got["failures"][0] == {"test": "tests.kernels.test_a::test_bad", "kind": "failure",
                                  "message": "assert 1 == 2"}
    assert got["skips"] == [{"test": "tests.kernels.test_a::test_gpu", "reason": "needs a CUDA GPU"}]
    log = tmp_path / "tests.log"
    log.write_text("tests/kernels/test_a.py::test_ok PASSED [ 10%]\ntests/kernels/test_a.py::test_x[4] FAILED [ 20%]\n"
                   "tests/kernels/test_a.py::test_ok PASSED\nnoise\n")
    got = verbose_counts(log)
    assert (got["tests"], got["passed"], got["failed"]) == (2, 1, 1)


def test_cpu_rehearsal_env_and_bench_through_the_command_line(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(module_command("bitsmith.core.gpu_check", "--cpu-rehearsal", "--only", "env,bench",
                                         "--out", str(out), "--work", str(tmp_path / "work")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = _read(out)
    assert doc["mode"] == "cpu-rehearsal" and doc["complete"] and doc["sizes"]["tokens_per_step"] == 256
    assert [s["status"] for s in doc["steps"].values()] == ["ok", "skipped", "ok"] + ["skipped"] * 5
    env = doc["steps"]["env"]["results"]
    assert env["python"]["torch"] and env["python"]["cuda_available"] is False
    assert env["python"]["bitsmith"]["kernels"].endswith("kernels")
    bench = doc["steps"]["bench"]["results"]
    assert bench["complete"] and bench["device"] == "cpu" and {r["bits"] for r in bench["rows"]} == {2, 3, 4, 8}
    assert json.loads(proc.stdout) == doc["summary"]
    assert not (tmp_path / "work").exists()   # the work folder is removed


def test_unknown_steps_are_refused():
    proc = subprocess.run(module_command("bitsmith.core.gpu_check", "--only", "env,warp"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown step(s) warp" in proc.stderr and "Traceback" not in proc.stderr


def test_sized_synthetic_llama_saves_and_loads(tmp_path):
    from bitsmith.core.model import load_model
    from bitsmith.core.synthetic import save_synthetic_llama

    info = save_synthetic_llama(tmp_path / "m", "tiny", seed=1)
    loaded = load_model(str(tmp_path / "m"))
    assert info["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert info["dtype"] == "bfloat16" and 2 * info["parameters"] <= info["bytes"] < 2 * info["parameters"] + 65536


def test_the_1b_shape_has_about_a_billion_parameters():
    import torch
    from transformers import AutoModelForCausalLM

    from bitsmith.core.synthetic import synthetic_llama_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(synthetic_llama_config("1.1b"))
    assert sum(p.numel() for p in model.parameters()) == 1_100_048_384


def test_scale_rows_come_from_the_log_even_when_the_benchmark_was_stopped(tmp_path):
    """bench scale logs each row as a JSON line when it finishes: a run stopped at its limit
    keeps the sizes it measured, and the summary carries their figures."""
    from bitsmith.core.gpu_check import _json_lines, summarize

    log = tmp_path / "scale.log"
    rows = [{"size": "1b", "method": "rtn", "ok": True, "wall_s": 9.5, "peak_gpu_gb": 0.61, "est_peak_gpu_gb": 0.7},
            {"size": "1b", "method": "gptq", "ok": True, "wall_s": 40.0, "peak_gpu_gb": 1.2}]
    log.write_text("loading...\n" + "\n".join(json.dumps(r) for r in rows) + '\n{"size": "3b", "meth')
    assert _json_lines(log) == rows
    steps = {name: {"status": "skipped", "results": {}} for name in STEPS}
    steps["scale"] = {"status": "timeout", "results": {"rows": rows}}
    scale = summarize(steps)["scale"]
    assert [(r["size"], r["method"], r["peak_gpu_gb"]) for r in scale] == [("1b", "rtn", 0.61), ("1b", "gptq", 1.2)]
    assert scale[1]["est_peak_gpu_gb"] is None
