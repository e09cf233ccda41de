"""The fast scorer: ½ Σ (g ⊙ ΔY)² per layer and level, and the `fisher` search method."""

from __future__ import annotations

import pathlib

import pytest
import torch

from bitsmith.core.inventory import layer_inventory, linear_weight
from bitsmith.core.jobs import ModelSpec
from bitsmith.core.plan import Plan, load_plan_file
from bitsmith.core.search.fisher import fisher_scores
from bitsmith.core.synthetic import tiny_model


def _perturbed(model, scale: float):
    """variant(name, bits) = W + scale·bits·R_name, R fixed per layer."""
    noise = {}

    def variant(name: str, bits: int) -> torch.Tensor:
        w = linear_weight(model.get_submodule(name)).detach().float()
        if name not in noise:
            noise[name] = torch.randn(w.shape, generator=torch.Generator().manual_seed(len(noise)))
        return w + scale * bits * noise[name]
    return variant


def _direct(model, name: str, ids: torch.Tensor, delta: torch.Tensor) -> float:
    """½ Σ (g ⊙ X Δᵀ)² with X and g = ∂L/∂Y read off the layer by a plain forward/backward."""
    module, seen = model.get_submodule(name), {}

    def hook(mod, args, out):
        out.retain_grad()
        seen["x"], seen["y"] = args[0].detach(), out
    handle = module.register_forward_hook(hook)
    model.zero_grad()
    (model(ids, labels=ids).loss * ids.shape[0]).backward()
    handle.remove()
    return 0.5 * float(((seen["x"] @ delta.t()) * seen["y"].grad).pow(2).sum())


def test_scores_match_a_direct_computation():
    torch.manual_seed(0)
    model = tiny_model("llama").float()
    layers = layer_inventory(model)
    ids = torch.randint(0, 512, (2, 16))
    variant = _perturbed(model, 1e-3)
    scores = fisher_scores(model, layers, ids, variant, [2, 4], batch_size=2)
    for layer in (layers[0], layers[-1]):
        w = linear_weight(model.get_submodule(layer.name)).detach().float()
        for bits in (2, 4):
            expected = _direct(model, layer.name, ids, w - variant(layer.name, bits))
            assert scores[layer.name][bits] == pytest.approx(expected, rel=1e-4)
    # ΔY scales with the perturbation: the score quadruples from 2 to 4 "bits" of noise here
    assert all(s[4] == pytest.approx(4 * s[2], rel=1e-5) for s in scores.values())


def test_scores_are_zero_for_the_dense_weights_and_leave_the_model_as_it_was():
    model = tiny_model("llama")
    layers = layer_inventory(model)
    before = [p.requires_grad for p in model.parameters()]
    scores = fisher_scores(model, layers, torch.randint(0, 512, (3, 8)),
                           lambda name, bits: linear_weight(model.get_submodule(name)).detach().float(), [3],
                           batch_size=2)
    assert all(s[3] == 0.0 for s in scores.values())
    assert [p.requires_grad for p in model.parameters()] == before and not model.training


@pytest.mark.parametrize("serve", ["any", "vllm"])
def test_fisher_search_writes_a_plan_within_budget(serve, run_search, db_run, tiny_llama, tmp_path):
    code, run, events = run_search(tmp_path / serve, model=ModelSpec(str(tiny_llama)), method="fisher",
                                   target_bits=3.0, database=str(db_run), serve=serve)
    assert code == 0, [e for e in events if e["type"] == "error"]
    plan = load_plan_file(run.plan_file)
    assert isinstance(plan, Plan) and plan.budget().avg_code_bits <= 3.0 + 1e-9
    report = run.read_report()
    assert report["fisher"]["summed_score"] > 0 and report["ppl"] > 1
    computed = any(e["type"] == "progress" and e["stage"] == "fisher_scores" for e in events)
    reused = any("fisher scores from" in e.get("message", "") for e in events)
    assert computed != reused          # the second search on the same database reuses the scores
    assert pathlib.Path(report["fisher"]["scores_file"]).is_file()
