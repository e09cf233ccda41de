import json
import shutil

import pytest

from bitsmith.core.errors import BadInput
from bitsmith.core.inventory import inventory_summary, layer_inventory
from bitsmith.core.jobs import ModelSpec
from bitsmith.core.model import load_model

LLAMA_ROLES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("family, n_layers, first_roles", [
    ("llama", 14, LLAMA_ROLES),
    ("mistral", 14, LLAMA_ROLES),
    ("qwen2", 14, LLAMA_ROLES),
    ("phi3", 8, ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"]),
    ("gpt2", 8, ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]),
    ("gemma3", 14, LLAMA_ROLES),
])
def test_inventory_per_family(tiny_models, family, n_layers, first_roles):
    loaded = load_model(str(tiny_models[family]))
    layers = layer_inventory(loaded.model)
    assert len(layers) == n_layers
    assert [l.role for l in layers if l.block == 0] == first_roles
    assert {l.block for l in layers} == {0, 1}
    for layer in layers:
        module = loaded.model.get_submodule(layer.name)
        assert layer.params == module.weight.numel()
        assert layer.bytes_16bit == 2 * layer.params


def test_gpt2_conv1d_shapes_are_transposed(tiny_models):
    layers = {l.role: l for l in layer_inventory(load_model(str(tiny_models["gpt2"])).model)}
    assert layers["c_attn"].shape == (192, 64) and layers["c_attn"].transposed
    assert layers["mlp.c_proj"].shape == (64, 256)


def test_cpu_default_dtype_and_override(tiny_llama):
    import torch

    assert load_model(str(tiny_llama)).dtype == torch.float32
    half = load_model(ModelSpec(str(tiny_llama), dtype="bfloat16"))
    assert next(half.model.parameters()).dtype == torch.bfloat16


def test_cuda_refused_without_gpu(tiny_llama):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(BadInput, match="no CUDA GPU"):
        load_model(ModelSpec(str(tiny_llama), device="cuda"))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case, fragment", [
    ("missing", "does not exist"),
    ("empty_folder", "not a model folder"),
    ("text_file", "is a file but not a .gguf model"),
    ("fake_gguf", "is not a GGUF file"),
    ("truncated", "is truncated"),
    ("bad_header", "not a valid safetensors file"),
    ("remote_code", "--trust-remote-code"),
    ("hub_offline", "could not get"),
])
def test_bad_models_get_one_clear_message(tmp_path, tiny_llama, case, fragment, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = {"missing": str(tmp_path / "nope"), "hub_offline": "bitsmith-tests/no-such-model"}.get(case)
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        source = str(tmp_path / "empty")
    elif case == "text_file":
        source = str(tmp_path / "notes.txt")
        (tmp_path / "notes.txt").write_text("hello")
    elif case == "fake_gguf":
        source = str(tmp_path / "m.gguf")
        (tmp_path / "m.gguf").write_bytes(b"not a gguf at all")
    elif case in ("truncated", "bad_header"):
        folder = _copy(tiny_llama, tmp_path / "m")
        weights = folder / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2] if case == "truncated" else b"\xff" * 64)
        source = str(folder)
    elif case == "remote_code":
        folder = _copy(tiny_llama, tmp_path / "m")
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (folder / "config.json").write_text(json.dumps(config))
        source = str(folder)
    with pytest.raises(BadInput) as err:
        load_model(source)
    assert fragment in err.value.one_line()
    assert "\n" not in err.value.one_line() and err.value.hint


@pytest.mark.slow
def test_default_model_has_210_layers():
    loaded = load_model("default")
    summary = inventory_summary(layer_inventory(loaded.model))
    assert summary["layers"] == 210 and summary["blocks"] == 30
    assert loaded.architecture == "LlamaForCausalLM"
