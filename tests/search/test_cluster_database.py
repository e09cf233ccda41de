"""The variant database built by (block, level) tasks on Ray (core/search/cluster_database.py):
the files of the local build, byte for byte; a cancelled build resumes to the same files.

On a local Ray instance (`ray_local`: 2 CPUs, no network), skipped when Ray is not installed.
`db_run` (conftest.py) is the local build with the same settings (1 torch thread, as each task)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bitsmith.core.events import Emitter
from bitsmith.core.jobs import CancelToken, ModelSpec
from bitsmith.core.search.block_variants import LayerGroup, quantize_groups
from bitsmith.core.search.cluster_database import database_differences
from bitsmith.core.search.database import DatabaseSettings


def _database(run: Path) -> Path:
    return next(run.glob("database-*"))


def assert_same_database(a: Path, b: Path) -> None:
    """The same block files byte for byte; the same meta.json but for the build times."""
    assert a.name == b.name and list(a.glob("block-*.safetensors"))
    assert database_differences(a, b) == []


def test_one_level_alone_is_that_level_of_the_sweep():
    """What each task computes (one level) equals the local build's all-levels sweep."""
    torch.manual_seed(0)
    X = torch.randn(400, 96) * torch.rand(96) * 3
    group = LayerGroup(["q", "k"], [torch.randn(48, 96), torch.randn(24, 96)], X.t() @ X / 400, 32)
    settings = DatabaseSettings(model="m", calib="c", windows=1, seqlen=8, seed=0, group_size=32, sym=False)
    variants, errors = quantize_groups([group], [2, 3, 4, 6], settings)
    for bits in (2, 3, 4, 6):
        alone, alone_errors = quantize_groups([group], [bits], settings)
        for name in ("q", "k"):
            a, b = variants[name][bits], alone[name][bits]
            assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales) and torch.equal(a.zeros, b.zeros)
            assert errors[name][bits] == alone_errors[name][bits]


def test_clustered_database_is_the_local_build_byte_for_byte(ray_local, run_search, db_run, tiny_llama, tmp_path):
    code, run, events = run_search(tmp_path / "cluster", model=ModelSpec(str(tiny_llama)), method="sensitivity",
                                   target_bits=3.0, cluster="local:2")
    assert code == 0, [e for e in events if e["type"] == "error"]
    assert any("one task per (block, level)" in e.get("message", "") for e in events if e["type"] == "log")
    assert_same_database(_database(run.path), _database(db_run))
    assert json.loads(run.plan_file.read_text())["layers"] == json.loads((db_run / "plan.json").read_text())["layers"]


def test_cancelled_cluster_build_resumes_to_the_same_files(ray_local, run_search, db_run, tiny_llama, tmp_path):
    cancel = CancelToken()

    def cancel_at_first_saved_block(event: dict) -> None:      # a block's layer events follow its save
        if event["type"] == "layer":
            cancel.cancel()

    common = dict(model=ModelSpec(str(tiny_llama)), method="sensitivity", target_bits=3.0, cluster="local:2")
    code, run, events = run_search(tmp_path / "run", Emitter([cancel_at_first_saved_block]), cancel=cancel, **common)
    assert code == 3, [e for e in events if e["type"] == "error"]
    meta = json.loads((_database(run.path) / "meta.json").read_text())
    assert len(meta["blocks_done"]) == 1 and meta["n_blocks"] == 2
    code, run, events = run_search(tmp_path / "run", resume=True, **common)
    assert code == 0, [e for e in events if e["type"] == "error"]
    assert_same_database(_database(run.path), _database(db_run))
