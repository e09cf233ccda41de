"""Fixtures for the tuning tests: a tiny Llama quantized with RTN into a native checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_quantized_checkpoint(model_dir: Path, out: Path, bits: int = 3, group_size: int = 32) -> Path:
    """RTN-quantize every linear layer of the model in `model_dir` and save it natively."""
    from bitsmith.core.inventory import layer_inventory, linear_weight
    from bitsmith.core.model import load_model
    from bitsmith.core.plan import resolve_plan, uniform_plan_spec
    from bitsmith.core.quant.checkpoint import save_quantized
    from bitsmith.core.quant.grid import quantize_rtn

    loaded = load_model(str(model_dir))
    layers = layer_inventory(loaded.model)
    plan = resolve_plan(uniform_plan_spec(bits, group_size), layers)
    quantized = {l.name: quantize_rtn(linear_weight(loaded.model.get_submodule(l.name)), bits,
                                      plan[l.name].group_size) for l in layers}
    return save_quantized(out, loaded.model, loaded.tokenizer, quantized, plan,
                          extra={"base_model": {"source": str(model_dir)}})


@pytest.fixture(scope="session")
def tiny_quant(tiny_llama, tmp_path_factory) -> Path:
    """A 3-bit RTN checkpoint (group 32) of the tiny Llama; its manifest names the dense model."""
    torch.manual_seed(0)
    return make_quantized_checkpoint(tiny_llama, tmp_path_factory.mktemp("tune") / "quantized")
