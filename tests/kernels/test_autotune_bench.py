"""Kernel configs and their cache, the benchmark's CPU mode, and import lightness."""

from __future__ import annotations

import json
import os
import subprocess
import sys

if os.environ.get("BITSMITH_TEST_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # under the interpreter nothing is timed

import pytest
import torch

from bitsmith.kernels import autotune
from bitsmith.kernels.autotune import Config, candidate_configs, check_config, heuristic_config, kernel_supports
from bitsmith.core.client import python_command


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 3, 16, 17, 64, 256, 2048])
@pytest.mark.parametrize("n,k,group", [(4096, 4096, 128), (576, 576, 64), (1536, 576, 96), (14336, 4096, 128)])
def test_every_candidate_and_heuristic_is_valid(bits, m, n, k, group):
    cands = candidate_configs(m, n, k, bits, group)
    assert cands and len(cands) == len(set(cands)) <= 48
    for cfg in cands + [heuristic_config(m, n, k, bits, group), heuristic_config(m, n, k, bits, group, 132)]:
        check_config(cfg, m, n, k, bits, group)  # raises if invalid
    assert {c.kernel for c in cands} == ({"gemv", "dot"} if m <= 16 else {"dot"})


def test_kernel_supports():
    assert kernel_supports(4, 128, 4096) and kernel_supports(3, 32, 64) and kernel_supports(2, 16, 32)
    assert not kernel_supports(5, 128, 4096)  # the search's 5/6 bits run on the torch path
    assert not kernel_supports(3, 16, 64)  # 3-bit tiles need 32-code blocks
    assert not kernel_supports(4, 128, 192)  # group must divide K


def test_split_k_pays_only_when_programs_are_few():
    few = heuristic_config(1, 4096, 14336, 4, 128, sm_count=132)
    many = heuristic_config(2048, 14336, 4096, 4, 128, sm_count=132)
    assert few.kernel == "gemv" and few.split_k > 1
    assert many.kernel == "dot" and many.split_k == 1


def test_choice_is_untimed_under_the_interpreter():
    x = torch.randn(4, 256)

    def run(cfg):  # pragma: no cover - must not be called
        raise AssertionError("timed a config under the interpreter")

    assert autotune.choose_config(x, 64, 4, 128, run) == heuristic_config(4, 64, 256, 4, 128)


def test_choice_cache_persists_as_json(tmp_path, monkeypatch):
    path = tmp_path / "cache.json"
    monkeypatch.setenv("BITSMITH_KERNEL_CACHE", str(path))
    autotune.clear_cache()
    cfg = Config("dot", 16, 128, 64, 2, num_warps=4, num_stages=4)
    autotune._CACHE["some|key"] = cfg
    autotune._save_disk()
    assert json.loads(path.read_text())["some|key"]["split_k"] == 2
    autotune.clear_cache()
    autotune._load_disk()
    assert autotune._CACHE["some|key"] == cfg
    path.write_text("{not json")
    autotune.clear_cache()
    autotune._load_disk()  # a damaged cache is ignored
    assert autotune._CACHE == {}
    monkeypatch.setenv("BITSMITH_KERNEL_CACHE", "")
    assert autotune._cache_path() is None
    autotune.clear_cache()


def test_benchmark_on_cpu_reports_json(capsys, tmp_path, monkeypatch):
    from bitsmith.kernels import bench
    from bitsmith.kernels.bench import _table, run_kernel_benchmark

    if torch.cuda.is_available():
        pytest.skip("CPU mode only")
    written = []   # (complete, rows) of each write of --out: one per row, then the final one
    write = bench._write_json
    monkeypatch.setattr(bench, "_write_json", lambda path, doc: (written.append((doc["complete"], len(doc["rows"]))),
                                                                 write(path, doc)))
    result = run_kernel_benchmark(json_output=True, quick=True, out=tmp_path / "bench.json")
    printed = json.loads(capsys.readouterr().out)
    assert printed == result == json.loads((tmp_path / "bench.json").read_text())
    n = len(result["rows"])
    assert written == [(False, i) for i in range(1, n + 1)] + [(True, n)]
    assert result["device"] == "cpu" and "no CUDA GPU" in result["note"]
    assert {r["bits"] for r in result["rows"]} == {2, 3, 4, 8}
    assert all(r["time_us"] > 0 and r["dense_fp32_time_us"] > 0 for r in result["rows"])
    assert "bench kernels on cpu" in _table(result)


def test_package_import_is_light():
    code = ("import sys, bitsmith.kernels as k; assert 'triton' not in sys.modules and 'torch' not in sys.modules; "
            "k.QuantLinear; k.pack_qweight; assert 'triton' not in sys.modules, 'QuantLinear imported triton'; "
            "print(sorted(k.__all__))")
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    out = subprocess.run(python_command("-c", code), capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "QuantLinear" in out.stdout and "quant_matmul" in out.stdout
