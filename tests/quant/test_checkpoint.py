"""The native quantized checkpoint: save, read, load back bit for bit."""

import json

import pytest
import torch

from bitsmith.core.errors import BadInput
from bitsmith.core.inventory import layer_inventory, linear_weight
from bitsmith.core.jobs import ModelSpec
from bitsmith.core.model import load_model
from bitsmith.core.plan import PlanSpec, Rule, resolve_plan
from bitsmith.core.quant.checkpoint import MANIFEST, read_quantized, save_quantized
from bitsmith.core.quant.grid import quantize_rtn
from bitsmith.core.quant.modules import set_dequantized_weights
from bitsmith.core.pipeline import round_fp8_in_place
from bitsmith.core.synthetic import tiny_model, tiny_tokenizer


def _fake_quantized(family):
    """A tiny model whose layers hold their dequantized weights, and the codes."""
    model = tiny_model(family)
    layers = layer_inventory(model)
    keep16 = layers[-1].name.replace(".", r"\.") + "$"
    fp8 = layers[0].name.replace(".", r"\.") + "$"
    plan = resolve_plan(PlanSpec(rules=[Rule(keep16, keep="16"), Rule(fp8, keep="fp8"), Rule("1\\.", bits=2)],
                                 bits=3, group_size=32), layers)
    quantized = {n: quantize_rtn(linear_weight(model.get_submodule(n)), e.bits, e.group_size, e.sym)
                 for n, e in plan.entries.items() if e.keep is None}
    set_dequantized_weights(model, quantized)
    round_fp8_in_place(model.get_submodule(layers[0].name))
    return model, plan, quantized


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_round_trip_is_bit_exact(tmp_path, family):
    model, plan, quantized = _fake_quantized(family)
    path = tmp_path / "quantized"
    save_quantized(path, model, tiny_tokenizer(), quantized, plan, {"base_model": {"source": "tiny"}})
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "bitsmith-quant" and manifest["base_model"]["source"] == "tiny"
    assert manifest["budget"]["kept_layers"] == 2
    ckpt = read_quantized(path)
    for name, qw in quantized.items():
        assert torch.equal(ckpt.layers[name].codes, qw.codes) and torch.equal(ckpt.layers[name].scales, qw.scales)
    loaded = load_model(ModelSpec(str(path), device="cpu"))       # through core/model.py
    assert loaded.quantized is not None
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = loaded.model(input_ids=ids).logits
    assert torch.equal(expected, got)
    names = [l.name for l in layer_inventory(loaded.model)]
    assert names == [l.name for l in layer_inventory(model)]


def test_damaged_checkpoints_are_bad_input(tmp_path):
    model, plan, quantized = _fake_quantized("llama")
    path = tmp_path / "q"
    save_quantized(path, model, tiny_tokenizer(), quantized, plan)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        read_quantized(path)
    save_quantized(path, model, tiny_tokenizer(), quantized, plan)
    weights = path / "bitsmith-weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BadInput):
        load_model(ModelSpec(str(path), device="cpu"))
