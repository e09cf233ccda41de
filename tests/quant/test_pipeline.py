"""Block-by-block passes and the quantization pipeline on tiny models (in process)."""

import pytest
import torch

from bitsmith.core.capture import (BlockInputs, capture_block_inputs, iterate_blocks, record_inputs, run_block,
                                   sequential_groups)
from bitsmith.core.commands.bench import bench_targets
from bitsmith.core.inventory import find_blocks, layer_inventory
from bitsmith.core.pipeline import QuantizeOptions, draw_calibration, quantize_model
from bitsmith.core.plan import PlanSpec, Rule, resolve_plan
from bitsmith.core.synthetic import tiny_model, tiny_tokenizer


def _windows(n=4, length=24, seed=0):
    return torch.randint(0, 512, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_iterate_blocks_reproduces_the_model(family):
    model = tiny_model(family)
    windows = _windows()
    with torch.no_grad():
        expected = model(input_ids=windows, output_hidden_states=True).hidden_states
    seen = []
    out = iterate_blocks(model, windows, lambda i, block, inputs: seen.append(i), batch_size=3)
    assert seen == [0, 1]
    got = torch.cat(out.hidden)
    final_norm = model.transformer.ln_f if family == "gpt2" else model.model.norm
    assert torch.allclose(final_norm(got), expected[-1], atol=1e-5)


def test_each_block_gets_its_own_mask_and_rotary_table():
    """Gemma 3's sliding block and its global block are called with different arguments;
    giving block 1 block 0's (as a capture at block 0 alone would) changes its output."""
    model = tiny_model("gemma3")
    windows = _windows(2, 24)
    inputs = capture_block_inputs(model, windows, batch_size=2)
    mask0, mask1 = (inputs.calls[i][0][1]["attention_mask"] for i in (0, 1))
    assert mask0 is not None and (mask1 is None or not torch.equal(mask0, mask1))   # sliding vs causal
    out = iterate_blocks(model, windows, lambda i, b, x: None, batch_size=2)
    with torch.no_grad():
        wrong = run_block(model.model.layers[1], BlockInputs(
            run_block(model.model.layers[0], inputs), inputs.args, inputs.kwargs))
    assert not torch.allclose(wrong[0], out.hidden[0], atol=1e-4)


def test_sequential_groups_and_input_recording():
    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    inputs = capture_block_inputs(model, _windows(), batch_size=2)
    assert len(inputs) == 2 and inputs.tokens == 4 * 24
    assert sequential_groups(blocks[0], inputs) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    maxima = []
    with record_inputs(blocks[0], {"mlp.down_proj": lambda x: maxima.append(x.abs().amax(-1))}):
        run_block(blocks[0], inputs)
    assert [m.shape for m in maxima] == [(2, 24), (2, 24)]


def test_gptq_pipeline_beats_rtn_and_keeps_layers():
    windows = _windows(8, 32)
    errors = {}
    for method in ("rtn", "gptq"):
        model = tiny_model("llama")
        before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
        plan = resolve_plan(PlanSpec(rules=[Rule(r"layers\.1\.mlp\.down_proj", keep="16")], bits=3, group_size=32),
                            layer_inventory(model))
        results = []
        quantized = quantize_model(model, plan, windows, QuantizeOptions(method=method), on_layer=results.append)
        assert len(quantized) == 13 and "model.layers.1.mlp.down_proj" not in quantized
        assert torch.equal(model.model.layers[1].mlp.down_proj.weight, before)
        w = model.model.layers[0].self_attn.q_proj.weight
        assert torch.equal(w, quantized["model.layers.0.self_attn.q_proj"].dequantize())
        errors[method] = sum(r.rel_error for r in results if r.keep is None)
    assert errors["gptq"] < errors["rtn"]


def test_mixed_calibration_sources():
    tok = tiny_tokenizer()
    model = tiny_model("llama")
    mixed = draw_calibration("builtin+selfgen", tok, 3, 16, seed=1, model=model)
    assert mixed.shape == (3, 16)
    assert torch.equal(mixed[:2], draw_calibration("builtin", tok, 2, 16, seed=1))


def test_bench_targets_are_discovered_by_name():
    targets = bench_targets()
    assert targets["quantize"] == "bitsmith.core.quant.bench_quantize:main"
    assert targets["scale"] == "bitsmith.core.quant.bench_scale:main"
    assert targets.get("kernels") == "bitsmith.kernels.bench:main"
