"""Shared fixtures: tiny model folders per family, a temporary run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# BITSMITH_TEST_DEVICE=cuda (packaging/gpu_check.sh on a GPU machine): the kernel tests run on
# CUDA tensors through Triton's compiler; by default on CPU tensors under its interpreter.
TEST_DEVICE = os.environ.get("BITSMITH_TEST_DEVICE", "cpu")
if TEST_DEVICE not in ("cpu", "cuda"):
    pytest.exit(f"BITSMITH_TEST_DEVICE must be cpu or cuda, not {TEST_DEVICE!r}", returncode=4)
if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.exit("BITSMITH_TEST_DEVICE=cuda, but torch sees no CUDA GPU", returncode=4)
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from bitsmith.core.synthetic import FAMILIES, save_tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{family: folder} for every tiny family (llama, mistral, qwen2, phi3, gpt2)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny_model(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    """Folder of a tiny random Llama (2 blocks, hidden 64, vocab 512)."""
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tmp_run(tmp_path) -> Path:
    """A path for a run directory that does not exist yet."""
    return tmp_path / "run"


@pytest.fixture(scope="session")
def tiny_bf16(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{family: (folder stored in bfloat16, folder holding the same values in float32)}: a
    lean model (weights kept bf16, blocks computed in fp32) must match the fp32 copy run whole."""
    from bitsmith.core.synthetic import tiny_model

    root = tmp_path_factory.mktemp("tiny-bf16")
    out = {}
    for family in FAMILIES:
        model = tiny_model(family).to(torch.bfloat16)
        bf16, fp32 = root / f"{family}-bf16", root / f"{family}-fp32"
        model.save_pretrained(bf16)
        model.float().save_pretrained(fp32)
        for folder in (bf16, fp32):
            tiny_tokenizer().save_pretrained(folder)
        out[family] = (bf16, fp32)
    return out


@pytest.fixture(scope="module")
def ray_jobs() -> str:
    """A local Ray instance (2 CPUs) with its dashboard, which serves the Jobs API: its URL.
    Skipped without Ray or without its Jobs API client (`ray[default]`, the cluster extra)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("aiohttp", reason="the Jobs API client needs ray[default] (the cluster extra)")
    from bitsmith.core.search.cluster import init_local_ray_jobs

    if ray.is_initialized():
        pytest.skip("another Ray instance is running in this process")
    url = init_local_ray_jobs(2)
    yield url
    ray.shutdown()
