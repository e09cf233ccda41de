"""The `tune` job on a tiny quantized Llama: events, output checkpoint, exact resume, EoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bitsmith.core.events import Emitter, read_events
from bitsmith.core.jobs import CancelToken, make_job
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute
from bitsmith.core.client import module_command

TEXT = Path(__file__).with_name("calib.txt")


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory) -> str:
    """A short calibration text (tokenizing the full builtin text costs seconds per run)."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n\n".join(topics[k] for k in sorted(topics)[:40]))
    return f"file:{path}"


def _job(quant: Path, calib: str, **over):
    fields = dict(model={"source": str(quant)}, method="pv", steps=4, windows=6, seqlen=32, batch=2,
                  eval_every=2, eval_data=calib, eval_windows=2, checkpoint_every=2, calib=calib,
                  code_lr=3e-3, tau=0.02, teacher_topk=16)
    fields.update(over)
    return make_job("tune", **fields)


def _run(path: Path, job, resume: bool = False, cancel: CancelToken | None = None, sinks=()) -> int:
    run = RunDir.create(path, job.to_dict(), exist_ok=resume)
    return execute(run, Emitter(list(sinks)), cancel=cancel, resume=resume)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "quantized" / "bitsmith-weights.safetensors"))


def test_pv_run_events_and_checkpoint(tiny_quant, calib_file, tmp_path):
    # the reference V step (no check): every step re-rounds some codes, within τ
    code = _run(tmp_path / "run", _job(tiny_quant, calib_file, check_codes=False, code_lr=3e-2))
    assert code == 0
    events = read_events(tmp_path / "run" / "events.jsonl")
    metrics = [e for e in events if e["type"] == "metric"]
    losses = [e for e in metrics if e["name"] == "loss" and e["split"] == "train"]
    changed = [e for e in metrics if e["name"] == "codes_changed"]
    assert [e["step"] for e in losses] == [1, 2, 3, 4] and len(changed) == 4
    assert all(0 < e["value"] <= 0.02 + 1e-3 for e in changed)          # τ bounds the changes
    assert {e["step"] for e in metrics if e["name"] == "ppl" and e["split"] == "eval"} == {0, 2, 4}
    layer_events = [e for e in events if e["type"] == "layer"]
    assert len(layer_events) == 3 * 14 and all(e["rel_error"] > 0 for e in layer_events)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["peak_memory_bytes"] > 0 and report["codes_changed_total"] > 0
    # the output is a native checkpoint the engine's loader opens, in the same format
    from bitsmith.core.model import load_model

    tuned = load_model(str(tmp_path / "run" / "quantized"))
    assert tuned.quantized["provenance"]["tuning"]["method"] == "pv"
    src, out = load_file(str(tiny_quant / "bitsmith-weights.safetensors")), _weights(tmp_path / "run")
    assert set(src) == set(out)
    best = report["best_step"]
    if best > 0:
        assert any(not torch.equal(src[k], out[k]) for k in src if k.endswith(".codes"))


def test_continuous_never_changes_codes(tiny_quant, calib_file, tmp_path):
    assert _run(tmp_path / "run", _job(tiny_quant, calib_file, method="continuous", steps=2,
                                       checkpoint_every=0, select_by="ppl", eval_every=1)) == 0
    src, out = load_file(str(tiny_quant / "bitsmith-weights.safetensors")), _weights(tmp_path / "run")
    for key in src:
        if key.endswith(".codes"):
            assert torch.equal(src[key], out[key])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["codes_changed_total"] == 0
    if report["best_step"] > 0:
        assert any(not torch.equal(src[k], out[k]) for k in src if k.endswith(".scales"))


def test_resume_equals_uninterrupted_run(tiny_quant, calib_file, tmp_path):
    job = _job(tiny_quant, calib_file, steps=5, checkpoint_every=2, eval_every=2)
    assert _run(tmp_path / "straight", job) == 0

    cancel = CancelToken()

    def stop_after_step_3(event: dict) -> None:
        if event["type"] == "metric" and event["name"] == "loss" and event["step"] == 3:
            cancel.cancel()

    assert _run(tmp_path / "broken", job, cancel=cancel, sinks=[stop_after_step_3]) == 3
    meta = json.loads((tmp_path / "broken" / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 2 and not (tmp_path / "broken" / "quantized").exists()
    # resume through the CLI, as a user would
    from bitsmith.core.cli import main

    args = ["tune", str(tiny_quant), "--method", "pv", "--steps", "5", "--windows", "6", "--seqlen", "32",
            "--batch", "2", "--eval-every", "2", "--eval-data", calib_file, "--eval-windows", "2",
            "--checkpoint-every", "2", "--calib", calib_file, "--code-lr", "3e-3", "--tau", "0.02",
            "--teacher-topk", "16", "--out", str(tmp_path / "broken"), "--resume", "--json"]
    assert main(args) == 0
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "broken")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra = json.loads((tmp_path / "straight" / "report.json").read_text())
    rb = json.loads((tmp_path / "broken" / "report.json").read_text())
    assert ra["history"] == rb["history"] and ra["best_step"] == rb["best_step"]


def test_eora_job_stores_adapters_that_evaluation_uses(tiny_quant, calib_file, tmp_path):
    job = _job(tiny_quant, calib_file, method="eora", rank=4, windows=4)
    assert _run(tmp_path / "run", job) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["mean_rel_error_after"] < report["mean_rel_error_before"]
    assert report["with"]["kl"] < report["without"]["kl"]
    weights = _weights(tmp_path / "run")
    adapters = [k for k in weights if k.endswith(".eora_A")]
    assert len(adapters) == 14 and weights[adapters[0]].shape[0] == 4
    # the engine's loader serves y = W_hat x + B (A x): perplexity differs from the plain checkpoint
    from bitsmith.core.evaluate import perplexity
    from bitsmith.core.model import load_model

    with_a = load_model(str(tmp_path / "run" / "quantized"))
    without = load_model(str(tiny_quant))
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    assert perplexity(with_a.model, ids) != perplexity(without.model, ids)


def test_bad_input_is_one_line(tiny_quant, tmp_path):
    from bitsmith.core.errors import BadInput

    with pytest.raises(BadInput):
        make_job("tune", model={"source": str(tiny_quant)}, tau=0.0)
    job = make_job("tune", model={"source": str(tmp_path)}, steps=1)
    assert _run(tmp_path / "run", job) == 2
    errors = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "error"]
    assert errors and "quantized checkpoint" in errors[0]["message"]


def test_tuning_on_text_sampled_from_the_teacher(tiny_quant, calib_file, tmp_path, monkeypatch):
    """--calib selfgen: the windows are sampled from the dense teacher (and cached)."""
    monkeypatch.setenv("BITSMITH_CACHE", str(tmp_path / "cache"))
    job = _job(tiny_quant, "selfgen", eval_data=calib_file, steps=1, windows=2, eval_every=0)
    assert _run(tmp_path / "run", job) == 0
    assert len(list((tmp_path / "cache" / "selfgen").glob("*.safetensors"))) == 1
    # EoRA's covariance windows: the same sample, from the cache
    eora = _job(tiny_quant, "selfgen", eval_data=calib_file, method="eora", rank=2, windows=2)
    assert _run(tmp_path / "eora", eora) == 0
    assert len(list((tmp_path / "cache" / "selfgen").glob("*.safetensors"))) == 1


def test_sigkilled_worker_resumes_to_the_uninterrupted_result(tiny_quant, calib_file, tmp_path):
    """A worker killed with SIGKILL after its step-2 checkpoint: the run directory stays
    valid, and resuming it finishes with the weights of a run that was never killed."""
    import os
    import signal
    import subprocess
    import sys

    job = _job(tiny_quant, calib_file, steps=5, checkpoint_every=2, eval_every=2)
    assert _run(tmp_path / "straight", job) == 0
    killed = tmp_path / "killed"
    RunDir.create(killed, job.to_dict())
    proc = subprocess.Popen(module_command("bitsmith.core.worker", str(killed)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "metric" and event["name"] == "loss" and event["step"] == 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run = RunDir(killed)
    assert run.read_state()["state"] == "interrupted" and not run.quantized_dir.exists()
    assert json.loads((run.checkpoint_dir / "meta.json").read_text())["step"] == 2

    assert _run(killed, job, resume=True) == 0
    a, b = _weights(tmp_path / "straight"), _weights(killed)
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_divergence_is_flagged_and_the_best_state_is_saved(tiny_quant, calib_file, tmp_path):
    """A learning rate far too high: the held-out metrics blow up; each such evaluation gets
    a warning event, and the checkpoint written is the best state, which the report names."""
    from bitsmith.core.model import load_model

    job = _job(tiny_quant, calib_file, method="continuous", lr=0.5, steps=3, eval_every=1, checkpoint_every=0)
    assert _run(tmp_path / "run", job) == 0
    events = read_events(tmp_path / "run" / "events.jsonl")
    warnings = [e for e in events if e["type"] == "log" and e.get("code") == "diverged"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert warnings and report["diverged_steps"] == [w["step"] for w in warnings]
    assert all(w["level"] == "warning" and w["best_step"] == 0 and "best state" in w["message"] for w in warnings)
    assert report["best_step"] == 0 and report["best"]["kl"] < report["last"]["kl"] / 2
    # the saved model is the best state: it evaluates like step 0, not like the last step
    saved = load_model(str(tmp_path / "run" / "quantized"))
    before = load_model(str(tiny_quant))
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(saved.model(input_ids=ids).logits, before.model(input_ids=ids).logits)


def test_divergence_rule():
    from bitsmith.core.tune.run import divergence

    history = [{"ppl": 20.0, "kl": 0.4}, {"ppl": 19.0, "kl": 0.35}]
    assert divergence({"ppl": 21.0, "kl": 0.4}, history) is None            # noise
    assert "perplexity" in divergence({"ppl": 349.0, "kl": 0.5}, history)
    assert "KL" in divergence({"ppl": 19.5, "kl": 0.9}, history)
    assert "not finite" in divergence({"ppl": float("nan"), "kl": 0.3}, history)
    assert divergence({"ppl": 1e4, "kl": 5.0}, []) is None                 # nothing to compare with
