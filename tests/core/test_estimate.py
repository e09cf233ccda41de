"""The pre-flight estimate (core/estimate.py): model facts from config and files, memory by
phase, the dry run, and a job refused before it starts with the setting that would fit."""

import json
import subprocess

import pytest
import torch

from bitsmith.core.client import module_command
from bitsmith.core.estimate import GB, Workload, codes_bytes, estimate, estimate_job
from bitsmith.core.events import Emitter, read_events
from bitsmith.core.facts import model_facts
from bitsmith.core.jobs import ModelSpec, make_job
from bitsmith.core.model import load_model
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute
from bitsmith.core.synthetic import synthetic_llama_config


def _quantize(folder, **fields):
    base = dict(model={"source": str(folder), "device": "cpu"}, calib="builtin", calib_windows=2, seqlen=32,
                plan={"bits": 4, "group_size": 32})
    return make_job("quantize", **{**base, **fields})


def test_facts_match_the_loaded_model(tiny_bf16):
    bf16, _ = tiny_bf16["llama"]
    facts = model_facts(ModelSpec(str(bf16)))
    model = load_model(str(bf16)).model
    assert facts.params == sum(p.numel() for p in model.parameters())
    assert facts.n_blocks == 2 and facts.stored_dtype == "bfloat16" and facts.groups_per_block == 4
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    assert facts.block_params == block and facts.outside_params == facts.params - 2 * block
    assert facts.bytes_on_disk == sum(f.stat().st_size for f in bf16.glob("*.safetensors"))
    assert facts.layer_shapes[:2] == [[64, 128], [128, 64]] and facts.hidden == 64 and facts.intermediate == 128


def test_memory_follows_where_the_weights_wait(tiny_bf16):
    bf16, fp32 = tiny_bf16["llama"]
    facts = model_facts(ModelSpec(str(bf16)))
    ests = {o: estimate_job(_quantize(bf16, model={"source": str(bf16), "device": "cpu", "offload": o}),
                            probe=False) for o in ("ram", "disk")}
    blocks = (facts.params - facts.outside_params) * 2
    assert ests["ram"].phases["load"]["ram"] - ests["disk"].phases["load"]["ram"] == pytest.approx(blocks, abs=2**20)
    resident = estimate_job(_quantize(fp32), probe=False)
    assert resident.workload["offload"] == "none"
    assert ests["ram"].disk == 2 * codes_bytes(facts.linear_params, 32) + facts.outside_params * 2 + 2 * 32 * 8
    assert all(e.fits and e.seconds is None for e in ests.values())


@pytest.fixture(scope="module")
def facts_3b(tmp_path_factory):
    """Facts of a 3B Llama from its config alone (no weights are made)."""
    folder = tmp_path_factory.mktemp("cfg3b")
    config = synthetic_llama_config("3b")
    config.dtype = torch.bfloat16
    config.save_pretrained(folder)
    return model_facts(ModelSpec(str(folder)))


def test_refusal_names_the_setting_that_fits(facts_3b):
    assert facts_3b.bytes_on_disk == facts_3b.params * 2 and 2.9e9 < facts_3b.params < 3.1e9
    w = Workload("quantize", calib_windows=32, seqlen=512, max_memory=6 * GB)
    est = estimate(facts_3b, w, base=300 * 2**20)
    assert not est.fits and "RAM" in est.problem and est.suggestion == "try --offload disk"
    # too many calibration tokens for even a disk-offloaded run: fewer windows, with --offload disk
    w = Workload("quantize", calib_windows=1024, seqlen=2048, max_memory=8 * GB)
    est = estimate(facts_3b, w, base=300 * 2**20)
    assert not est.fits and est.suggestion.startswith("try --calib-windows ") and est.suggestion.endswith(
        "with --offload disk")
    n = int(est.suggestion.split()[2])
    assert estimate(facts_3b, Workload("quantize", offload="disk", calib_windows=n, seqlen=2048,
                                       max_memory=8 * GB), base=300 * 2**20).fits
    tiny = estimate(facts_3b, Workload("quantize", max_memory=100 * 2**20), base=300 * 2**20)
    assert "no setting" in tiny.suggestion


def test_a_job_that_cannot_fit_is_refused_before_loading(tiny_bf16, tmp_path):
    bf16, _ = tiny_bf16["llama"]
    job = _quantize(bf16, model={"source": str(bf16), "device": "cpu", "max_memory_gb": 0.01})
    run = RunDir.create(tmp_path / "r", job.to_dict())
    assert execute(run, Emitter()) == 2
    events = read_events(run.events_file)
    error = [e for e in events if e["type"] == "error"][-1]
    assert "of RAM" in error["message"] and error["hint"]
    assert not any(e["type"] == "stage" and e["stage"] == "load" for e in events)


def test_dry_run_prints_the_estimate_and_runs_nothing(tiny_bf16, tmp_path):
    bf16, _ = tiny_bf16["llama"]
    out = tmp_path / "never"
    proc = subprocess.run(module_command("bitsmith.core.cli", "quantize", str(bf16), "--calib", "builtin",
                                         "--calib-windows", "2", "--seqlen", "32", "--group-size", "32",
                                         "--offload", "disk", "--dry-run", "--json", "--out", str(out)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    est = json.loads(proc.stdout)
    assert est["fits"] and est["workload"]["offload"] == "disk" and not out.exists()
    assert set(est["phases"]) >= {"load", "quantize", "save", "start"}
    assert est["seconds"] > 0 and est["probe"]["forward_s_per_token"] > 0
    assert est["probe"]["layer_s"]["64x128"] > 0 and est["peak_ram"] > est["model"]["bytes_on_disk"]


def test_a_job_file_dry_runs_as_the_window_asks(tiny_bf16, tmp_path):
    """`bitsmith run JOB.json --dry-run --json` (client.estimate_command, the window's path):
    the estimate of exactly that document, nothing run; exit 2 with the JSON when it cannot fit."""
    from bitsmith.core.client import estimate_command

    bf16, _ = tiny_bf16["llama"]
    job_file, out = tmp_path / "job.json", tmp_path / "never"
    for max_gb, code in ((None, 0), (0.01, 2)):
        job = _quantize(bf16, model={"source": str(bf16), "device": "cpu", "max_memory_gb": max_gb})
        job_file.write_text(json.dumps(job.to_dict()))
        proc = subprocess.run(estimate_command(job_file, out), capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stderr
        est = json.loads(proc.stdout)
        assert est["fits"] == (code == 0) and not out.exists()
        assert est["workload"]["calib_windows"] == 2 and est["workload"]["group_size"] == 32
        assert est["disk"] == estimate_job(job, probe=False).disk and est["seconds"] > 0
    assert "needs" in est["refusal"]


def test_synthetic_sizes_have_the_parameters_they_are_named_for(tmp_path):
    """The benchmark's models (config only here: an empty model, no weights)."""
    from bitsmith.core.facts import empty_model
    from bitsmith.core.synthetic import SIZES

    for name in [n for n in SIZES if n.endswith("b")]:        # "tiny" and "small" are for tests
        params = sum(p.numel() for p in empty_model(synthetic_llama_config(name)).parameters())
        nominal = float(name.removesuffix("b")) * 1e9
        assert abs(params / nominal - 1) < 0.13, (name, params)
