"""Serving targets: fused groups (q/k/v, gate/up) share one setting for vLLM and SGLang —
in every allocator's plan, and in a quantize job's rules."""

from __future__ import annotations

import json
import random
import re

import pytest

from bitsmith.core.errors import BadInput
from bitsmith.core.events import Emitter
from bitsmith.core.inventory import layer_inventory
from bitsmith.core.jobs import ModelSpec, make_job
from bitsmith.core.plan import Plan, load_plan_file
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute
from bitsmith.core.search.genome import SearchSpace, Tying, mutate, exchanges, start_candidates
from bitsmith.core.serve import (fused_groups, group_rule_pattern, serve_target, split_groups, tie_units)
from bitsmith.core.synthetic import tiny_model


def _names(family: str) -> list[str]:
    return [layer.name for layer in layer_inventory(tiny_model(family))]


def test_fused_groups_per_family():
    llama = fused_groups(_names("llama"))
    assert len(llama) == 4                                   # 2 blocks × (q/k/v, gate/up)
    assert llama[0] == tuple(f"model.layers.0.self_attn.{r}_proj" for r in "qkv")
    assert llama[1] == ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")
    assert fused_groups(_names("phi3")) == []                # qkv_proj, gate_up_proj: fused already
    assert fused_groups(_names("gpt2")) == []                # c_attn is one layer


def test_tie_units_partition_the_layers_in_order():
    names = _names("llama")
    assert tie_units(names, serve_target("any")) == [(i,) for i in range(14)]
    units = tie_units(names, serve_target("vllm"))
    assert len(units) == 8 and sorted(i for u in units for i in u) == list(range(14))
    assert [u[0] for u in units] == sorted(u[0] for u in units)


def test_group_rule_pattern_matches_exactly_its_group():
    names = _names("llama")
    for group in fused_groups(names):
        pattern = group_rule_pattern(group)
        assert [n for n in names if re.search(pattern, n)] == list(group), pattern


@pytest.mark.parametrize("exchange", [False, True])
def test_tied_mutations_keep_groups_together_and_the_budget(exchange):
    names = _names("llama")
    layers = layer_inventory(tiny_model("llama"))
    tying = Tying(tuple(tie_units(names, serve_target("vllm"))))
    layer_space = SearchSpace.from_layers(layers, (2, 3, 4, 5, 6))
    space = tying.unit_space(layer_space)
    rng = random.Random(0)
    parent = start_candidates(space, 3.5, 4, rng)[0]
    pairs = exchanges(space) if exchange else None
    for _ in range(200):
        child = mutate(parent, space.groups(), space.levels, rng, pairs)
        layer_genome = tying.expand(child)
        assert space.avg_bits(child) == pytest.approx(layer_space.avg_bits(layer_genome))
        assert space.fits(child, 3.5)
        for group in fused_groups(names):
            assert len({layer_genome[names.index(n)] for n in group}) == 1
        parent = child


def _quantize(tmp_path, tiny_llama, serve: str, rules: list[dict]) -> tuple[int, list[dict]]:
    events: list[dict] = []
    job = make_job("quantize", model={"source": str(tiny_llama)}, method="rtn", calib_windows=0,
                   plan={"bits": 4, "group_size": 32, "rules": rules}, serve=serve)
    run = RunDir.create(tmp_path / f"q-{serve}", job.to_dict())
    return execute(run, Emitter([events.append])), events


def test_a_rule_that_splits_a_group_is_refused_for_vllm(tmp_path, tiny_llama):
    split = [dict(pattern=r"k_proj$", bits=3)]
    code, events = _quantize(tmp_path, tiny_llama, "vllm", split)
    error = [e for e in events if e["type"] == "error"][-1]
    assert code == 2 and "splits the fused group q_proj/k_proj/v_proj" in error["message"]
    assert "self_attn\\.(q|k|v)_proj$" in error["hint"] and "--serve any" in error["hint"]
    assert _quantize(tmp_path, tiny_llama, "any", split)[0] == 0
    whole = [dict(pattern=r"self_attn\.(q|k|v)_proj$", bits=3)]
    assert _quantize(tmp_path, tiny_llama, "sglang", whole)[0] == 0


def test_unknown_target_is_bad_input(tiny_llama):
    from bitsmith.core.errors import BadInput

    with pytest.raises(BadInput, match="unknown serving target 'tgi'") as err:
        make_job("quantize", model={"source": str(tiny_llama)}, serve="tgi").validate()
    assert "choose --serve from any, vllm, sglang, llama.cpp, transformers" in err.value.hint


@pytest.mark.parametrize("method", ["sensitivity", "evopress", "spike"])
def test_vllm_plans_give_each_group_one_setting(method, run_search, EVO, db_run, tiny_llama, tmp_path):
    extra = EVO if method == "evopress" else {}
    code, run, events = run_search(tmp_path / method, model=ModelSpec(str(tiny_llama)), method=method,
                                   target_bits=3.5, database=str(db_run), serve="vllm", **extra)
    assert code == 0, [e for e in events if e["type"] == "error"]
    plan = load_plan_file(run.plan_file)
    assert isinstance(plan, Plan)
    assert split_groups(plan, list(plan.entries)) == []
    assert plan.budget().avg_code_bits <= 3.5 + 1e-9
    assert run.read_report()["units"] == 8


def test_a_vllm_plan_exports_one_scheme_per_fused_group(run_search, EVO, db_run, tiny_llama, tmp_path):
    """End to end: an EvoPress plan for vLLM, quantized and exported to compressed-tensors. The
    compressed-tensors library's own loader (`apply_quantization_config`, what vLLM and
    transformers run on the config) gives q/k/v and gate/up of every block one scheme."""
    pytest.importorskip("compressed_tensors")
    import torch
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from transformers import AutoConfig, AutoModelForCausalLM

    from bitsmith.core.export import export_checkpoint

    code, run, events = run_search(tmp_path / "search", model=ModelSpec(str(tiny_llama)), method="evopress",
                                   target_bits=3.5, database=str(db_run), serve="vllm", **EVO)
    assert code == 0, [e for e in events if e["type"] == "error"]
    job = make_job("quantize", model={"source": str(tiny_llama)}, method="rtn", calib_windows=0,
                   plan=str(run.plan_file), serve="vllm")
    quantized = RunDir.create(tmp_path / "q", job.to_dict())
    assert execute(quantized, Emitter()) == 0
    export_checkpoint(quantized.path / "quantized", "compressed-tensors", tmp_path / "ct")
    doc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama))
    apply_quantization_config(model, QuantizationConfig.model_validate(doc))

    def scheme(module: torch.nn.Module) -> tuple | None:        # None: left in 16-bit
        found = getattr(module, "quantization_scheme", None)
        return None if found is None or found.weights is None else \
            (found.weights.num_bits, found.weights.group_size, found.weights.symmetric)

    schemes = {name: scheme(m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names = [layer.name for layer in layer_inventory(model)]
    assert len({schemes[n] for n in names}) > 1, "the plan should mix settings, or this checks nothing"
    for group in fused_groups(names):
        assert len({schemes[n] for n in group}) == 1, {n: schemes[n] for n in group}


def test_effective_budget_counts_scales_and_zeros(run_search, db_run, tiny_llama, tmp_path):
    """3.5 effective bits at g64 (0.5 bits per weight of scale and zero) = 3.0 code bits."""
    code, run, events = run_search(tmp_path / "eff", model=ModelSpec(str(tiny_llama)), method="sensitivity",
                                   target_bits=3.5, budget="effective", database=str(db_run))
    assert code == 0, [e for e in events if e["type"] == "error"]
    report = run.read_report()
    assert report["target_code_bits"] == pytest.approx(3.0)
    assert report["effective_bits"] <= 3.5 + 1e-9 and report["avg_code_bits"] <= 3.0 + 1e-9
    assert report["effective_bits"] == pytest.approx(report["avg_code_bits"] + 0.5)
    code, run, events = run_search(tmp_path / "low", model=ModelSpec(str(tiny_llama)), method="sensitivity",
                                   target_bits=2.25, budget="effective", database=str(db_run))
    error = [e for e in events if e["type"] == "error"][-1]
    assert code == 2 and "leaves 1.750 code bits" in error["message"] and "at least 2.500" in error["hint"]


def test_budget_sweep_writes_a_plan_per_target_and_resumes_to_the_same(run_search, EVO, db_run, tiny_llama,
                                                                       tmp_path):
    from bitsmith.core.jobs import CancelToken

    common = dict(model=ModelSpec(str(tiny_llama)), method="evopress", targets=[2.5, 3.5], target_bits=3.5,
                  database=str(db_run), **{**EVO, "eval_every": 0})
    code, straight, events = run_search(tmp_path / "straight", **common)
    assert code == 0, [e for e in events if e["type"] == "error"]
    rows = straight.read_report()["sweep"]
    assert [r["target_bits"] for r in rows] == [2.5, 3.5]
    assert rows[0]["avg_code_bits"] <= 2.5 + 1e-9 < rows[1]["avg_code_bits"] <= 3.5 + 1e-9
    assert rows[0]["mb"] < rows[1]["mb"] and all(r["ppl"] > 1 and r["kl"] is not None for r in rows)
    assert (straight.plan_file.read_text() == (straight.path / "sweep" / "plan-3.5.json").read_text())
    points = [e for e in events if e["type"] == "metric" and e["name"] == "sweep_point"]
    assert [p["step"] for p in points] == [0, 1] and points[0]["effective_bits"] == rows[0]["effective_bits"]

    # the same sweep, cancelled in the second target's search, then resumed
    cancel = CancelToken()

    def stop_in_second(event: dict) -> None:
        if event["type"] == "stage" and event["stage"] == "sweep 3.5" and event["state"] == "start":
            cancel.cancel()

    from bitsmith.core.events import Emitter
    code, killed, _ = run_search(tmp_path / "killed", emitter=Emitter([stop_in_second]), cancel=cancel, **common)
    assert code == 3 and (killed.path / "sweep" / "report-2.5.json").is_file()
    code, resumed, events = run_search(tmp_path / "killed", resume=True, **common)
    assert code == 0, [e for e in events if e["type"] == "error"]
    again = resumed.read_report()["sweep"]
    assert [r["plan_file"].rsplit("/", 1)[1] for r in again] == ["plan-2.5.json", "plan-3.5.json"]
    for a, b in zip(rows, again):
        assert (a["avg_code_bits"], a["kl"], a["ppl"]) == (b["avg_code_bits"], b["kl"], b["ppl"])
    for t in ("2.5", "3.5"):
        assert json.loads((straight.path / "sweep" / f"plan-{t}.json").read_text())["layers"] == \
            json.loads((resumed.path / "sweep" / f"plan-{t}.json").read_text())["layers"]


def test_exports_warn_before_writing_a_split_group(tiny_llama):
    """compressed-tensors and GPTQ check the fused groups too: a split plan is named before
    anything is written; a plan made with --serve vllm gets no such warning."""
    from bitsmith.core.export.checks import export_warnings
    from bitsmith.core.plan import PlanSpec, Rule, resolve_plan

    layers = layer_inventory(tiny_model("llama"))
    split = resolve_plan(PlanSpec(rules=[Rule(r"k_proj$", bits=3)], bits=4), layers)
    tied = resolve_plan(PlanSpec(rules=[Rule(r"self_attn\.(q|k|v)_proj$", bits=3)], bits=4), layers)
    for fmt in ("compressed-tensors", "gptq"):
        warned = [w for w in export_warnings(split, fmt) if "fuse (qkv)" in w]
        assert len(warned) == 1 and "--serve vllm" in warned[0] and "k_proj=3-bit" in warned[0], fmt
        assert not [w for w in export_warnings(tied, fmt) if "fuse (" in w], fmt


# --- llama.cpp: each level costs its GGUF type ------------------------------------------

def _smollm_block(block: int = 0) -> list:
    """The default model's layer shapes (hidden 576, MLP 1536, 3 kv heads of 64)."""
    from bitsmith.core.inventory import LayerInfo

    shapes = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
              "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}
    return [LayerInfo(f"model.layers.{block}.{'mlp' if 'p_' in role and role[0] in 'gud' else 'self_attn'}.{role}",
                      block, role, d_out, d_in, False) for role, (d_out, d_in) in shapes.items()]


def test_gguf_level_costs_are_the_types_the_exporter_writes():
    from fractions import Fraction

    from bitsmith.core.serve import gguf_level_cost

    assert gguf_level_cost(1536, 2, 64, False) == Fraction(21, 8)         # Q2_K: d_in a multiple of 256
    assert gguf_level_cost(1536, 3, 64, False) == Fraction(55, 16)        # Q3_K
    assert gguf_level_cost(576, 2, 64, False) == gguf_level_cost(576, 3, 64, False) == 4.5   # 4-bit blocks
    assert gguf_level_cost(576, 4, 64, True) == 4.5 and gguf_level_cost(576, 4, 64, False) == 5   # Q4_0, Q4_1
    assert gguf_level_cost(576, 6, 64, False) == gguf_level_cost(576, 8, 64, False) == 8.5      # Q8_0
    assert gguf_level_cost(576, 4, 48, False) == gguf_level_cost(576, 16, 64, False) == 16      # F16


def test_llama_cpp_knapsack_counts_gguf_sizes_and_skips_dominated_levels():
    """Errors fall with bits, so a level that costs as much as a higher one (2/3 bits stored
    in 4-bit blocks where d_in is 576) is never chosen, and the plan's GGUF size fits."""
    from bitsmith.core.search.knapsack import knapsack
    from bitsmith.core.serve import gguf_level_cost

    layers = _smollm_block(0) + _smollm_block(1)
    levels = (2, 3, 4, 8)
    space = SearchSpace.from_layers(layers, levels, lambda l, b: gguf_level_cost(l.d_in, b, 64, True))
    errors = [[1.0 / b ** 2 * (1 + i % 3) for b in levels] for i in range(len(layers))]
    for target in (4.1, 4.5, 6.0):
        genome = knapsack(space.numels, space.levels, errors, target, space.costs)
        assert space.fits(tuple(genome), target)
        for layer, g in zip(layers, genome):
            if layer.d_in == 576:
                assert levels[g] not in (2, 3), (target, layer.name)
        assert space.avg_bits(tuple(genome)) == pytest.approx(
            sum(l.params * float(gguf_level_cost(l.d_in, levels[g], 64, True)) for l, g in zip(layers, genome))
            / sum(l.params for l in layers))
    # 4.1 GGUF bits cannot hold everything at 4-bit (4.5): the down projections go to Q2_K/Q3_K
    genome = knapsack(space.numels, space.levels, errors, 4.1, space.costs)
    assert {levels[g] for l, g in zip(layers, genome) if l.role == "down_proj"} <= {2, 3}


@pytest.mark.parametrize("exchange", [False, True])
def test_llama_cpp_mutations_keep_the_gguf_budget(exchange):
    from bitsmith.core.serve import gguf_level_cost

    layers = [l for b in range(3) for l in _smollm_block(b)]
    space = SearchSpace.from_layers(layers, (2, 3, 4, 5, 6, 8), lambda l, b: gguf_level_cost(l.d_in, b, 64, True))
    rng = random.Random(1)
    parent = start_candidates(space, 4.2, 4, rng)[0]
    assert space.fits(parent, 4.2)
    pairs = exchanges(space) if exchange else None
    moved = 0
    for _ in range(200):
        child = mutate(parent, space.groups(), space.steps, rng, pairs)
        assert space.total_bits(child) == space.total_bits(parent)
        moved += child != parent
        parent = child
    assert moved > 100


def knapsack_at(layers: list, target: float) -> list[int]:
    from bitsmith.core.search.knapsack import knapsack
    from bitsmith.core.serve import gguf_level_cost

    space = SearchSpace.from_layers(layers, (2, 3, 4), lambda l, b: gguf_level_cost(l.d_in, b, 64, True))
    return knapsack(space.numels, space.levels, [[1.0, 0.5, 0.1]] * len(layers), target, space.costs)


def test_llama_cpp_search_budget_is_in_gguf_bits(run_search, db_run, tiny_llama, tmp_path):
    """The tiny model's d_in (64, 128) is no multiple of 256: 2/3-bit layers are stored in
    4-bit blocks (4.5 bits) and asymmetric 4-bit in Q4_1 (5.0). So 4.5 GGUF bits buys 3 bits
    everywhere, where the same effective budget for any runtime (4.0 code bits + 0.5) buys 4."""
    code, run, events = run_search(tmp_path / "cpp", model=ModelSpec(str(tiny_llama)), method="sensitivity",
                                   target_bits=4.5, budget="effective", serve="llama.cpp", database=str(db_run))
    assert code == 0, [e for e in events if e["type"] == "error"]
    plan = load_plan_file(run.plan_file)
    assert {e.bits for e in plan.entries.values()} == {3}
    assert run.read_report()["target_code_bits"] == 4.5
    code, run, events = run_search(tmp_path / "any", model=ModelSpec(str(tiny_llama)), method="sensitivity",
                                   target_bits=4.5, budget="effective", serve="any", database=str(db_run))
    plan = load_plan_file(run.plan_file)
    assert code == 0 and plan.budget().avg_code_bits <= 4.0 + 1e-9 and max(e.bits for e in plan.entries.values()) > 3
    # below the cheapest GGUF plan: refused, naming the least budget
    with pytest.raises(BadInput) as err:
        knapsack_at(layers=_smollm_block(), target=3.5)
    assert "at least 4.031" in err.value.hint        # 2/3 bits cost 4.5 wherever d_in is 576
