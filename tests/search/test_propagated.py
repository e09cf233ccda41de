"""The propagated variant database: what `quantize` makes, at every level, and resumable."""

from __future__ import annotations

import pytest
import torch

from bitsmith.core.inventory import layer_inventory
from bitsmith.core.model import load_model
from bitsmith.core.pipeline import QuantizeOptions, quantize_model
from bitsmith.core.plan import plan_from_bits
from bitsmith.core.quant.grid import ClipConfig
from bitsmith.core.search.database import DatabaseSettings, build_database, open_database
from bitsmith.core.search.propagated import propagation_level

LEVELS = [2, 3, 4]


def _settings(propagate_bits: int | None) -> DatabaseSettings:
    return DatabaseSettings(model="tiny", calib="test", windows=4, seqlen=32, seed=0, group_size=32, sym=False,
                            propagate_bits=propagate_bits)


def _windows() -> torch.Tensor:
    return torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))


def _build(folder, model, propagate_bits=3, check=None):
    layers = layer_inventory(model)
    return build_database(folder, _settings(propagate_bits), LEVELS, model, layers, _windows, check=check), layers


def test_propagation_level_is_the_smallest_level_at_or_above_the_target():
    assert propagation_level([2, 3, 4, 5, 6], 3.0) == 3
    assert propagation_level([2, 3, 4, 5, 6], 2.5) == 3
    assert propagation_level([2, 3, 4, 5, 6], 6.0) == 6
    assert propagation_level([2, 4], 4.5) == 4


def test_propagated_variants_are_what_quantize_makes(tiny_llama, tmp_path):
    model = load_model(str(tiny_llama)).model
    dense = {n: p.detach().clone() for n, p in model.state_dict().items()}
    _, layers = _build(tmp_path / "db", model)
    # the search goes on with the dense model
    assert all(torch.equal(p, dense[n]) for n, p in model.state_dict().items())
    db = open_database(tmp_path / "db")

    # at the propagation level: the quantize job's uniform plan, layer for layer
    plan = plan_from_bits(layers, {l.name: 3 for l in layers}, 32)
    options = QuantizeOptions(method="gptq", damp=0.1, act_order=True, clip=ClipConfig(enabled=True))
    reference = quantize_model(load_model(str(tiny_llama)).model, plan, _windows(), options)
    for layer in layers:
        ours = db.quantized(layer.name, 3)
        assert torch.equal(ours.codes, reference[layer.name].codes), layer.name
        assert torch.equal(ours.scales, reference[layer.name].scales), layer.name

    # block 0's q/k/v see the dense inputs either way; later blocks see quantized ones
    _build(tmp_path / "dense", model, propagate_bits=None)
    plain = open_database(tmp_path / "dense")
    first = layers[0].name
    assert all(torch.equal(db.quantized(first, b).codes, plain.quantized(first, b).codes) for b in LEVELS)
    last = [l.name for l in layers if l.block == layers[-1].block]
    assert any(not torch.equal(db.quantized(n, 2).codes, plain.quantized(n, 2).codes) for n in last)
    assert db.meta["key"] != plain.meta["key"]


def test_killed_propagated_build_resumes_to_the_same_database(tiny_llama, tmp_path):
    folder = tmp_path / "killed"

    def kill_after_first_block():
        if (folder / "meta.json").is_file():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(folder, load_model(str(tiny_llama)).model, check=kill_after_first_block)
    assert (folder / "block-000.safetensors").is_file() and not (folder / "block-001.safetensors").is_file()
    _build(folder, load_model(str(tiny_llama)).model)          # a new process resumes
    _build(tmp_path / "whole", load_model(str(tiny_llama)).model)
    resumed, whole = open_database(folder), open_database(tmp_path / "whole")
    for name in whole.meta["layers"]:
        for bits in LEVELS:
            assert torch.equal(resumed.quantized(name, bits).codes, whole.quantized(name, bits).codes), (name, bits)
