"""Lean loading (core/offload.py): weights stay home in their stored dtype — CPU RAM, or their
safetensors files — and blocks are onloaded one at a time. Every path must give the numbers
the whole fp32 model gives: bf16 -> fp32 is exact, so they agree to float rounding."""

import pytest
import torch

from bitsmith.core.capture import forward_with_input_hooks
from bitsmith.core.evaluate import generate_text, kl_divergence, window_nlls
from bitsmith.core.inventory import layer_inventory
from bitsmith.core.jobs import ModelSpec
from bitsmith.core.model import load_model
from bitsmith.core.offload import is_resident, onloaded, placement_of
from bitsmith.core.pipeline import QuantizeOptions, quantize_model
from bitsmith.core.plan import PlanSpec, resolve_plan
from bitsmith.core.search.database import collect_hessians
from bitsmith.core.search.spike import spike_scores
from bitsmith.core.synthetic import FAMILIES


def _windows(n=5, length=24, seed=0):
    return torch.randint(0, 512, (n, length), generator=torch.Generator().manual_seed(seed))


def _open(folder, offload=None):
    """The fp32 copy whole on the CPU (offload None), or the bf16 folder kept home."""
    if offload is None:
        return load_model(ModelSpec(str(folder), "cpu", "float32"))
    return load_model(ModelSpec(str(folder), "cpu", offload=offload), lean=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_lean_perplexity_equals_the_whole_model(tiny_bf16, family):
    bf16, fp32 = tiny_bf16[family]
    windows = _windows()
    whole = window_nlls(_open(fp32).model, windows)
    for offload in ("ram", "disk"):
        lean = _open(bf16, offload)
        assert lean.offload == offload and lean.stored_dtype == torch.bfloat16 and lean.dtype == torch.float32
        steps = []
        got = window_nlls(lean.model, windows, on_window=lambda d, t: steps.append((d, t)))
        assert torch.allclose(got, whole, rtol=1e-6, atol=1e-6), (offload, got, whole)
        assert steps[-1][0] == steps[-1][1] == 2 + len(windows)      # 2 blocks, then the windows
        weights = [p for n, p in lean.model.named_parameters() if ".0.mlp." in n or ".0.attn." in n]
        if offload == "ram":     # home untouched: still bf16 in RAM after the pass
            assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in weights)
        else:                    # the blocks never left their files
            assert weights and all(p.device.type == "meta" for p in weights)


def test_fp32_model_on_cpu_is_resident_and_lean_is_a_no_op(tiny_llama):
    loaded = load_model(ModelSpec(str(tiny_llama), "cpu"), lean=True)
    assert loaded.offload == "none" and is_resident(loaded.model)
    block = loaded.model.model.layers[0]
    before = block.mlp.up_proj.weight
    with onloaded(loaded.model, 0) as on:
        assert on.mlp.up_proj.weight is before         # the very tensor: no copy, same numbers


def test_kl_block_by_block_matches_whole(tiny_bf16):
    windows = _windows(3, 20)
    ref_whole = _open(tiny_bf16["llama"][1]).model
    other_whole = _open(tiny_bf16["phi3"][1]).model
    expected = kl_divergence(ref_whole, other_whole, windows)
    got = kl_divergence(_open(tiny_bf16["llama"][0], "disk").model, _open(tiny_bf16["phi3"][0], "ram").model,
                        windows)
    assert expected > 0.01 and abs(got - expected) < 1e-5 * expected
    assert kl_divergence(ref_whole, _open(tiny_bf16["llama"][0], "ram").model, windows) < 1e-9


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_block_by_block_hooks_see_the_whole_forward_inputs(tiny_bf16, family):
    """Hessians and spike scores from the block-by-block pass equal those from hooks on one
    whole-model forward of the same batches."""
    bf16, fp32 = tiny_bf16[family]
    windows = _windows(6, 20)
    whole = _open(fp32).model
    layers = layer_inventory(whole)
    seen: dict[str, list[torch.Tensor]] = {l.name: [] for l in layers}
    modules = dict(whole.named_modules())
    handles = [modules[l.name].register_forward_pre_hook(lambda m, a, n=l.name: seen[n].append(a[0].clone()))
               for l in layers]
    with torch.no_grad():
        for batch in windows.split(4):
            whole(input_ids=batch, use_cache=False)
    for h in handles:
        h.remove()
    got: dict[str, list[torch.Tensor]] = {l.name: [] for l in layers}
    lean = _open(bf16, "disk").model
    forward_with_input_hooks(lean, {l.name: (lambda m, a, n=l.name: got[n].append(a[0].clone())) for l in layers},
                             windows, batch_size=4)
    for name in seen:
        assert len(got[name]) == len(seen[name]) == 2
        for a, b in zip(got[name], seen[name]):
            assert torch.allclose(a, b, atol=1e-5), name
    H_whole, owner = collect_hessians(whole, layers, windows)
    H_lean, owner_lean = collect_hessians(lean, layers, windows)
    assert owner == owner_lean
    assert all(torch.allclose(H_whole[n], H_lean[n], rtol=1e-5, atol=1e-6) for n in H_whole)
    names = [l.name for l in layers]
    a, b = spike_scores(whole, names, windows), spike_scores(lean, names, windows)
    assert all(abs(a[n] - b[n]) <= 1e-4 * a[n] for n in names)


def test_release_drops_each_quantized_block_from_ram(tiny_bf16):
    loaded = _open(tiny_bf16["llama"][0], "ram")
    model = loaded.model
    plan = resolve_plan(PlanSpec(bits=4, group_size=32, rules=[]), layer_inventory(model))
    done = []
    out = quantize_model(model, plan, _windows(4, 16), QuantizeOptions(method="gptq"),
                         on_block_done=lambda i, q: done.append((i, sorted(q))), release=True)
    assert out == {} and [i for i, _ in done] == [0, 1] and len(done[0][1]) == 7
    for name, p in model.named_parameters():
        quantized = name.removesuffix(".weight") in plan.entries
        assert (p.device.type == "meta") == quantized, name
    assert model.model.norm.weight.dtype == torch.bfloat16


def test_lean_model_writes_quantized_weights_home_in_its_dtype(tiny_bf16):
    """Without release, the layers end up holding Ŵ, rounded to the stored dtype."""
    lean = _open(tiny_bf16["llama"][0], "ram").model
    whole = _open(tiny_bf16["llama"][1]).model
    windows = _windows(4, 16)
    plans = [resolve_plan(PlanSpec(bits=3, group_size=32, rules=[]), layer_inventory(m)) for m in (lean, whole)]
    q_lean = quantize_model(lean, plans[0], windows, QuantizeOptions())
    q_whole = quantize_model(whole, plans[1], windows, QuantizeOptions())
    for name, qw in q_whole.items():
        assert torch.equal(qw.codes, q_lean[name].codes), name
    w = lean.get_submodule("model.layers.1.mlp.down_proj").weight
    assert w.dtype == torch.bfloat16
    assert torch.equal(w, q_whole["model.layers.1.mlp.down_proj"].dequantize().to(torch.bfloat16))
    assert placement_of(lean).offload == "ram"


def test_generation_streams_blocks(tiny_bf16, tokenizer):
    from bitsmith.core.data import selfgen_windows

    bf16, fp32 = tiny_bf16["llama"]
    whole, lean = _open(fp32), _open(bf16, "disk")
    assert generate_text(whole.model, tokenizer, "def f(x):", 12) == generate_text(lean.model, tokenizer, "def f(x):", 12)
    import os

    os.environ["BITSMITH_CACHE"] = ""          # sample, not from the cache
    try:
        a = selfgen_windows(whole.model, tokenizer, 3, 12, seed=1)
        b = selfgen_windows(lean.model, tokenizer, 3, 12, seed=1)
    finally:
        del os.environ["BITSMITH_CACHE"]
    assert torch.equal(a, b)


def test_offload_is_refused_where_it_cannot_work(tiny_llama, tmp_path):
    from bitsmith.core.errors import BadInput

    with pytest.raises(BadInput, match="--offload"):
        load_model(ModelSpec(str(tiny_llama), offload="disk"))             # a whole-model job
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(BadInput, match="safetensors"):
        load_model(ModelSpec(str(gguf), offload="disk"), lean=True)


def test_logits_in_position_chunks_give_the_same_nll_and_kl(tiny_bf16, monkeypatch):
    """Block by block, the head makes a window's logits a few positions at a time (large
    vocabularies); chunks of 7 positions over windows of 24 give the whole-window numbers."""
    import bitsmith.core.evaluate as evaluate

    monkeypatch.setattr(evaluate, "POSITION_CHUNK", 7)
    bf16, fp32 = tiny_bf16["gemma3"]
    windows = _windows(3, 24)
    whole, lean = _open(fp32).model, _open(bf16, "ram").model
    assert torch.allclose(window_nlls(lean, windows), window_nlls(whole, windows), rtol=1e-6, atol=1e-6)
    other = _open(tiny_bf16["llama"][1]).model
    expected = kl_divergence(whole, other, windows)
    assert abs(kl_divergence(lean, other, windows) - expected) < 1e-5 * expected
