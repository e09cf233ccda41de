"""Fixtures for the export tests: a tiny Llama quantized with a mixed plan, saved as a
native checkpoint the way a quantize run saves it (engine's save_quantized)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# q: 4-bit sym (Q4_0), k: 3-bit asym, gate/up: 2-bit asym, o: 8-bit sym (Q8_0),
# down: 4-bit asym g64 (two 32-blocks per group), block 1 v_proj kept 16-bit, block 1 up fp8.
MIXED_RULES = [
    dict(pattern=r"layers\.1\.self_attn\.v_proj$", keep="16"),
    dict(pattern=r"layers\.1\.mlp\.up_proj$", keep="fp8"),
    dict(pattern=r"q_proj$", bits=4, sym=True),
    dict(pattern=r"k_proj$", bits=3),
    dict(pattern=r"(gate|up)_proj$", bits=2),
    dict(pattern=r"o_proj$", bits=8, sym=True),
    dict(pattern=r"down_proj$", bits=4, group_size=64),
]


def quantize_with_plan(model, rules, default_bits=4, group_size=32):
    """(plan, {name: QuantizedWeight}) by RTN for every quantized layer of the plan."""
    from bitsmith.core.inventory import layer_inventory, linear_weight
    from bitsmith.core.plan import PlanSpec, Rule, resolve_plan
    from bitsmith.core.quant.grid import quantize_rtn

    spec = PlanSpec(rules=[Rule(**r) for r in rules], bits=default_bits, group_size=group_size)
    plan = resolve_plan(spec, layer_inventory(model))
    layers = {}
    for name, entry in plan.entries.items():
        if entry.quantized:
            w = linear_weight(model.get_submodule(name))
            layers[name] = quantize_rtn(w, entry.bits, entry.group_size, entry.sym)
    return plan, layers


def write_checkpoint(folder: Path, model_dir: Path, rules, report: dict | None = None) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bitsmith.core import atomic
    from bitsmith.core.quant.checkpoint import save_quantized
    from bitsmith.core.quant.modules import set_dequantized_weights

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    plan, layers = quantize_with_plan(model, rules)
    set_dequantized_weights(model, layers)
    save_quantized(folder, model, tokenizer, layers, plan)
    if report is not None:
        atomic.write_json(folder / "report.json", report)
    return folder


@pytest.fixture(scope="session")
def mixed_checkpoint(tiny_llama, tmp_path_factory) -> Path:
    """RUN_DIR/quantized of the tiny Llama with MIXED_RULES, and a report with a perplexity."""
    run = tmp_path_factory.mktemp("export-run")
    (run / "job.json").write_text('{"version": 1, "kind": "quantize"}\n')
    (run / "report.json").write_text('{"kind": "quantize", "ppl": 123.4, "data": "builtin-eval", "seqlen": 64}\n')
    return write_checkpoint(run / "quantized", tiny_llama, MIXED_RULES)


@pytest.fixture(scope="session")
def ours(mixed_checkpoint):
    """Our own quantized model, loaded from the native checkpoint (the reference)."""
    from bitsmith.core.model import load_model

    return load_model(str(mixed_checkpoint))


@pytest.fixture(scope="session")
def token_ids() -> torch.Tensor:
    return torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def save_checkpoint():
    """`write_checkpoint` for tests that save their own checkpoint (tests import no helpers)."""
    return write_checkpoint
