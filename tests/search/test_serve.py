"""Serving targets: fused groups (q/k/v, gate/up) share one setting for vLLM and SGLang —
in every allocator's plan, and in a quantize job's rules."""

from __future__ import annotations

import json
import random
import re

import pytest

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
