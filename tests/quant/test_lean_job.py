"""The quantize job on a model kept home in bf16 (RAM or disk): the same checkpoint as the
fp32 copy run resident, and a killed run of it resumes to that checkpoint."""

import pytest
import torch

from bitsmith.core.events import Emitter, read_events
from bitsmith.core.jobs import CancelToken, make_job
from bitsmith.core.quant.checkpoint import read_quantized
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute


def _job(folder, offload="auto", **fields):
    """3-bit GPTQ with block 1's last MLP layer kept as fp8 (rounded from the home weight)."""
    base = dict(model={"source": str(folder), "device": "cpu", "offload": offload}, calib="builtin",
                calib_windows=4, seqlen=32,
                plan={"bits": 3, "group_size": 32, "rules": [{"pattern": r"\.1\.mlp\.(down_proj|c_proj)", "keep": "fp8"}]})
    return make_job("quantize", **{**base, **fields})


def _run(path, job, **kwargs) -> RunDir:
    run = RunDir.create(path, job.to_dict(), exist_ok=kwargs.get("resume", False))
    assert execute(run, Emitter(), **kwargs) == 0, [e for e in read_events(run.events_file) if e["type"] == "error"]
    return run


def _same(a, b) -> None:
    a, b = read_quantized(a.quantized_dir), read_quantized(b.quantized_dir)
    assert sorted(a.layers) == sorted(b.layers) and sorted(a.fp8) == sorted(b.fp8)
    for name, qw in a.layers.items():
        assert torch.equal(qw.codes, b.layers[name].codes), name
        assert torch.allclose(qw.scales, b.layers[name].scales, rtol=1e-6), name
    for name, (values, scale) in a.fp8.items():
        assert torch.equal(values.float(), b.fp8[name][0].float()) and torch.equal(scale, b.fp8[name][1]), name


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lean_quantize_equals_the_resident_fp32_run(tiny_bf16, tmp_path, family):
    bf16, fp32 = tiny_bf16[family]
    resident = _run(tmp_path / "fp32", _job(fp32))
    assert resident.read_report()["model"]["offload"] == "none"
    for offload in ("ram", "disk"):
        run = _run(tmp_path / offload, _job(bf16, offload))
        report = run.read_report()
        assert report["model"]["offload"] == offload and report["model"]["stored_dtype"] == "bfloat16"
        _same(resident, run)
        dense = read_quantized(run.quantized_dir).dense_state
        assert {t.dtype for t in dense.values() if t.is_floating_point()} == {torch.bfloat16}


def test_killed_disk_run_resumes_to_the_same_checkpoint(tiny_bf16, tmp_path):
    bf16, _ = tiny_bf16["llama"]
    job = _job(bf16, "disk", method="gptq")
    whole = _run(tmp_path / "whole", job)
    cut = RunDir.create(tmp_path / "cut", job.to_dict())
    token, seen = CancelToken(), []

    def cancel_in_block_1(event):
        if event["type"] == "layer":
            seen.append(event["name"])
            if len(seen) == 9:
                token.cancel()

    assert execute(cut, Emitter([cancel_in_block_1]), cancel=token) == 3
    _run(cut.path, job, resume=True)
    assert cut.read_report()["resumed_at_block"] == 1
    _same(whole, cut)
