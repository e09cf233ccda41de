"""The `quantize` job: events, report, checkpoint, cancel and exact resume, the CLI."""

import json
import subprocess
import sys

import pytest
import torch

from bitsmith.core.cli import main as cli_main
from bitsmith.core.events import Emitter, read_events
from bitsmith.core.jobs import CancelToken, make_job
from bitsmith.core.model import load_model
from bitsmith.core.quant.checkpoint import read_quantized
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute
from bitsmith.core.client import module_command


def _job(model_dir, **fields):
    base = dict(model={"source": str(model_dir)}, calib="builtin", calib_windows=6, seqlen=32,
                plan={"bits": 3, "group_size": 32, "rules": [{"pattern": r"layers\.1\.mlp\.down_proj", "keep": "16"}]})
    return make_job("quantize", **{**base, **fields})


def test_quantize_job_events_report_and_checkpoint(tmp_run, tiny_llama):
    run = RunDir.create(tmp_run, _job(tiny_llama).to_dict())
    assert execute(run, Emitter()) == 0
    events = read_events(run.events_file)
    layers = [e for e in events if e["type"] == "layer"]
    assert len(layers) == 14
    assert all({"bits", "group_size", "rel_error", "seconds"} <= set(e) for e in layers)
    kept = [e for e in layers if e.get("keep")]
    assert [e["name"] for e in kept] == ["model.layers.1.mlp.down_proj"] and kept[0]["bits"] == 16
    assert all(0 < e["rel_error"] < 0.5 for e in layers if not e.get("keep"))
    plan_event = next(e for e in events if e["type"] == "plan")
    assert plan_event["layers"]["model.layers.1.mlp.down_proj"] == 16
    progress = [e for e in events if e["type"] == "progress" and e["stage"] == "quantize"]
    assert progress[-1]["done"] == progress[-1]["total"] == 14
    report = run.read_report()
    assert report["avg_code_bits"] > 3 and report["effective_bits"] > report["avg_code_bits"]
    # the model stays in CPU RAM while its blocks are quantized (tiny_llama is float32 on disk)
    assert report["weights_before_blocks"] == {"parameter_devices": ["cpu"], "parameter_dtypes": ["float32"]}
    assert json.loads(run.plan_file.read_text())["layers"]["model.layers.0.mlp.up_proj"]["bits"] == 3
    loaded = load_model(str(run.quantized_dir))
    assert loaded.quantized["layers"]["model.layers.1.mlp.down_proj"]["keep"] == "16"
    ids = torch.randint(0, 512, (1, 16))
    assert torch.isfinite(loaded.model(input_ids=ids).logits).all()


def test_cancel_then_resume_gives_the_same_checkpoint(tmp_path, tiny_llama):
    job = _job(tiny_llama, plan={"bits": 4, "group_size": 32})
    whole = RunDir.create(tmp_path / "whole", job.to_dict())
    assert execute(whole, Emitter()) == 0

    cut = RunDir.create(tmp_path / "cut", job.to_dict())
    token = CancelToken()
    seen = []

    def cancel_in_block_1(event):
        if event["type"] == "layer":
            seen.append(event["name"])
            if len(seen) == 9:
                token.cancel()

    assert execute(cut, Emitter([cancel_in_block_1]), cancel=token) == 3
    error = [e for e in read_events(cut.events_file) if e["type"] == "error"][-1]
    # block 0 whole, and the 2 layers block 1 finished before the check: nothing is thrown away
    assert "9 of 14 layers" in error["message"] and "2 layers of block 1" in error["message"]
    after = []
    assert execute(cut, Emitter([after.append]), resume=True) == 0
    redone = [e["name"] for e in after if e["type"] == "layer"]
    assert len(redone) == 5 and not set(redone) & set(seen)        # only the layers not done
    assert cut.read_report()["resumed_at_block"] == 1 and len(cut.read_report()["layers"]) == 14
    a, b = read_quantized(whole.quantized_dir), read_quantized(cut.quantized_dir)
    for name, qw in a.layers.items():
        assert torch.equal(qw.codes, b.layers[name].codes), name
        assert torch.equal(qw.scales, b.layers[name].scales), name


def test_cancel_mid_block_with_kept_layers_resumes_exactly(tmp_path, tiny_llama):
    """A cancel after an fp8-kept layer of the block: resume rounds it again, the rest match."""
    rules = [{"pattern": r"layers\.1\.self_attn\.q_proj", "keep": "fp8"},
             {"pattern": r"layers\.1\.self_attn\.k_proj", "keep": "16"}]
    job = _job(tiny_llama, plan={"bits": 3, "group_size": 32, "rules": rules})
    whole = RunDir.create(tmp_path / "whole", job.to_dict())
    assert execute(whole, Emitter()) == 0
    cut = RunDir.create(tmp_path / "cut", job.to_dict())
    token = CancelToken()
    seen = []

    def cancel_after_kept(event):
        if event["type"] == "layer":
            seen.append(event["name"])
            if event["name"].endswith("layers.1.self_attn.v_proj"):
                token.cancel()

    assert execute(cut, Emitter([cancel_after_kept]), cancel=token) == 3
    assert execute(cut, Emitter(), resume=True) == 0
    a, b = read_quantized(whole.quantized_dir), read_quantized(cut.quantized_dir)
    assert set(a.layers) == set(b.layers)
    for name, qw in a.layers.items():
        assert torch.equal(qw.codes, b.layers[name].codes), name
    ids = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        la = load_model(str(whole.quantized_dir)).model(input_ids=ids).logits
        lb = load_model(str(cut.quantized_dir)).model(input_ids=ids).logits
    assert torch.equal(la, lb)


def test_rtn_without_calibration_through_the_worker(tmp_run, tiny_llama):
    job = make_job("quantize", model={"source": str(tiny_llama)}, method="rtn", calib_windows=0,
                   plan={"bits": 4, "group_size": 64})
    RunDir.create(tmp_run, job.to_dict())
    proc = subprocess.run(module_command("bitsmith.core.worker", str(tmp_run)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sum(e["type"] == "layer" for e in events) == 14
    assert events[-1]["type"] == "result" and events[-1]["report"]["avg_code_bits"] == 4


def test_cli_keep_and_bad_plans(tmp_path, tiny_llama, capsys):
    common = [str(tiny_llama), "--calib", "builtin", "--calib-windows", "4", "--seqlen", "32"]
    out = tmp_path / "keep"
    code = cli_main(["quantize", *common, "--bits", "3", "--group-size", "32", "--keep", r"layers\.1\.mlp\.down_proj",
                     "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["budget"]["kept_layers"] == 1
    assert report["avg_code_bits"] > 3 and report["effective_bits"] > report["avg_code_bits"]

    cases = [({"rules": [{"pattern": "no_such_layer", "bits": 3}]}, "matches no layer"),
             ({"rules": [{"pattern": "q_proj", "bits": 1}]}, "outside 2–8"),
             ({"bits": 9}, "outside 2–8"),
             ('{"rules": [', "not valid JSON")]
    for i, (doc, words) in enumerate(cases):
        plan = tmp_path / f"plan{i}.json"
        plan.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        code = cli_main(["quantize", *common, "--plan", str(plan), "--out", str(tmp_path / f"bad{i}")])
        errors = [e for e in read_events(tmp_path / f"bad{i}" / "events.jsonl") if e["type"] == "error"]
        assert code == 2 and len(errors) == 1 and words in errors[0]["message"], errors
    assert cli_main(["quantize", *common, "--bits", "1", "--out", str(tmp_path / "bits1")]) == 2
    assert "outside 2–8" in capsys.readouterr().err
