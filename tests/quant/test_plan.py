"""Bit plans: rule order, divisor fallback, budget arithmetic, plan.json, bad plans."""

import json

import pytest

from bitsmith.core.errors import BadInput
from bitsmith.core.inventory import LayerInfo
from bitsmith.core.plan import (Plan, PlanSpec, Rule, load_plan_file, plan_for_model, plan_from_bits,
                                resolve_plan, save_plan, uniform_plan_spec)


def _layers(blocks=2, hidden=576, inter=1536):
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
    return [LayerInfo(f"model.layers.{b}.{r}", b, r.split(".")[-1], *shapes[r], False)
            for b in range(blocks) for r in shapes]


def test_first_matching_rule_wins_and_defaults_fill_in():
    spec = PlanSpec(rules=[Rule(r"layers\.1\.mlp\.down_proj$", keep="16"),
                           Rule(r"down_proj", bits=6, group_size=128),
                           Rule(r"q_proj", sym=True)], bits=3, group_size=64)
    plan = resolve_plan(spec, _layers())
    assert list(plan.entries) == [l.name for l in _layers()]
    assert plan["model.layers.1.mlp.down_proj"].keep == "16" and plan["model.layers.1.mlp.down_proj"].bits == 16
    down0 = plan["model.layers.0.mlp.down_proj"]
    assert (down0.bits, down0.group_size, down0.requested_group_size, down0.sym) == (6, 128, 128, False)
    q = plan["model.layers.0.self_attn.q_proj"]
    assert (q.bits, q.group_size, q.sym) == (3, 64, True)
    assert plan["model.layers.0.mlp.up_proj"].bits == 3


def test_group_size_falls_back_to_a_divisor_and_is_recorded():
    plan = resolve_plan(PlanSpec(bits=4, group_size=128), _layers(1))
    assert plan["model.layers.0.self_attn.q_proj"].group_size == 96          # 576 = 6 * 96
    assert plan["model.layers.0.self_attn.q_proj"].requested_group_size == 128
    assert plan["model.layers.0.mlp.down_proj"].group_size == 128            # 1536 = 12 * 128


def test_budget_arithmetic():
    layers = _layers(1)
    plan = resolve_plan(PlanSpec(rules=[Rule("down_proj", keep="16"), Rule("o_proj", keep="fp8")],
                                 bits=4, group_size=64), layers)
    b = plan.budget()
    p = {l.name.split(".")[-1]: l.params for l in layers}
    code = 4 * (p["q_proj"] + p["up_proj"]) + 16 * p["down_proj"] + 8 * p["o_proj"]
    over = 32 * (576 * 9 + 1536 * 9) + 16 * 576          # groups of q and up; fp8 row scales
    total = sum(p.values())
    assert b.params == total
    assert b.avg_code_bits == pytest.approx(code / total)
    assert b.effective_bits == pytest.approx((code + over) / total)
    assert b.total_bytes == (code + over + 7) // 8
    assert b.kept_layers == 2 and b.quantized_layers == 2
    assert b.bits_histogram == {"4": 2, "16": 1, "fp8": 1}
    uniform = resolve_plan(uniform_plan_spec(4, 64), layers).budget()
    assert uniform.avg_code_bits == 4 and uniform.effective_bits == pytest.approx(4.5)
    assert plan.budget(layers).effective_bits == b.effective_bits


def test_plan_json_round_trip(tmp_path):
    layers = _layers()
    spec = uniform_plan_spec(3, 64, keep=[r"layers\.1\.mlp\.down_proj"])
    plan = resolve_plan(spec, layers)
    save_plan(tmp_path / "plan.json", plan, spec, layers)
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["budget"]["avg_code_bits"] == pytest.approx(plan.budget().avg_code_bits)
    loaded = load_plan_file(tmp_path / "plan.json")
    assert isinstance(loaded, Plan) and loaded.entries == plan.entries
    assert plan_for_model(loaded, layers).entries == plan.entries
    # a bare spec file resolves against the model
    (tmp_path / "spec.json").write_text(json.dumps({"rules": [{"pattern": "q_proj", "bits": 8}], "bits": 2}))
    spec2 = load_plan_file(tmp_path / "spec.json")
    assert isinstance(spec2, PlanSpec)
    assert plan_for_model(spec2, layers)["model.layers.0.self_attn.q_proj"].bits == 8
    # per-layer bits, as a search writes them
    bits = {l.name: (16 if l.role == "down_proj" else 3) for l in layers}
    from_bits = plan_from_bits(layers, bits, 64)
    assert from_bits.budget().kept_layers == 2
    (tmp_path / "bits.json").write_text(json.dumps({"layers": bits}))
    assert plan_for_model(load_plan_file(tmp_path / "bits.json"), layers).bits_map() == bits


@pytest.mark.parametrize("doc, words", [
    ({"rules": [{"pattern": "no_such_layer", "bits": 3}]}, "matches no layer"),
    ({"rules": [{"pattern": "q_proj", "bits": 1}]}, "outside 2–8"),
    ({"rules": [{"pattern": "q_proj", "bits": 9}]}, "outside 2–8"),
    ({"bits": 9}, "outside 2–8"),
    ({"rules": [{"pattern": "(", "bits": 3}]}, "not a valid regular expression"),
    ({"rules": [{"pattern": "q_proj", "keep": "int4"}]}, "keep"),
    ({"rules": [{"pattern": "q_proj", "bitz": 4}]}, "unknown field"),
    ({"layers": {"model.layers.7.mlp.down_proj": 3}}, "does not have"),
    ({"layers": {"model.layers.0.self_attn.q_proj": 1}}, "outside 2–8"),
])
def test_bad_plans_are_clear_errors(tmp_path, doc, words):
    file = tmp_path / "plan.json"
    file.write_text(json.dumps(doc))
    with pytest.raises(BadInput) as err:
        plan_for_model(load_plan_file(file), _layers())
    assert words in err.value.one_line()


def test_malformed_and_missing_plan_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rules": [')
    with pytest.raises(BadInput, match="not valid JSON"):
        load_plan_file(bad)
    with pytest.raises(BadInput, match="does not exist"):
        load_plan_file(tmp_path / "nope.json")
    bad.write_text("[1, 2]")
    with pytest.raises(BadInput, match="JSON object"):
        load_plan_file(bad)
