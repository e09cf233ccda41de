"""Serving targets: which runtime will load the plan, and what that runtime requires of it.

vLLM and SGLang fuse the q/k/v projections of an attention block into one `qkv_proj`
module, and gate/up of an MLP (or of one MoE expert) into one `gate_up_proj`. A fused
module has a single quantization scheme, so every layer of a fused group must share one
setting: bits, group size, symmetry, kept or not. A plan that splits a group exports to
compressed-tensors or GPTQ-`dynamic` and then fails to load in exactly those runtimes.

    target = serve_target("vllm")
    groups = fused_groups(layers)        # [("model.layers.0.self_attn.q_proj", ...k, ...v), ...]
    check_plan_serves(plan, layers, target)   # BadInput naming the split group and the fix

A target registers itself (`register_target`); `--serve` choices read the registry.

llama.cpp stores every layer in a GGUF type of its own, so its budget counts those types'
real size (`ServeTarget.level_cost`): a 2-bit layer is Q2_K (2.625 bits per weight) when
its d_in is a multiple of 256 and a 4-bit block (4.5) otherwise; 5-8 bits are Q8_0 (8.5).
The exporter writes these types with `--lowbit kquant`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

from .errors import BadInput

# Roles a fused runtime serves as one module, per parent module (the attention block, the
# MLP, one MoE expert). Mixtral-style experts name gate/up w1/w3.
FUSED_ROLES: tuple[frozenset[str], ...] = (
    frozenset({"q_proj", "k_proj", "v_proj"}),
    frozenset({"gate_proj", "up_proj"}),
    frozenset({"w1", "w3"}),
)


# (d_in, bits, group size, symmetric) -> bits per weight as the runtime stores the layer
LevelCost = Callable[[int, int, int, bool], Fraction]


@dataclass(frozen=True)
class ServeTarget:
    name: str
    fused: bool                 # fused groups share one setting
    note: str                   # one line for help texts and warnings
    level_cost: LevelCost | None = None   # the runtime's own storage per level (None: bits + 32/g)


def gguf_level_cost(d_in: int, bits: int, group_size: int, sym: bool) -> Fraction:
    """Bits per weight of a layer in the GGUF type the exporter writes for it with
    `--lowbit kquant` (a 16-bit level is F16): the exporter's own policy
    (core/export/gguf_policy.py), from the plan alone."""
    from .export.gguf_policy import BITS_PER_WEIGHT, planned_block_type

    if bits >= 16:
        return Fraction(16)
    return Fraction(BITS_PER_WEIGHT[planned_block_type(bits, d_in, group_size, sym, True, "kquant")])


SERVE_TARGETS: dict[str, ServeTarget] = {}


def register_target(target: ServeTarget) -> ServeTarget:
    SERVE_TARGETS[target.name] = target
    return target


register_target(ServeTarget("any", fused=False, note="no runtime constraint (per-layer choices are free)"))
register_target(ServeTarget("vllm", fused=True, note="q/k/v and gate/up are fused: each group shares one setting"))
register_target(ServeTarget("sglang", fused=True, note="q/k/v and gate/up are fused: each group shares one setting"))
register_target(ServeTarget("llama.cpp", fused=False, level_cost=gguf_level_cost,
                            note="per-tensor GGUF types: every layer may differ; an effective budget counts "
                                 "each level's GGUF type (Q2_K 2.625, Q3_K 3.4375, 4-bit 4.5, Q8_0 8.5 bits)"))
register_target(ServeTarget("transformers", fused=False,
                            note="GPTQ with mixed bits does not load (no `dynamic`): use compressed-tensors"))


def serve_help() -> str:
    """The --serve help text, from the registry."""
    return "the runtime the plan is for; " + "; ".join(f"{t.name}: {t.note}" for t in SERVE_TARGETS.values())


def serve_target(name: str) -> ServeTarget:
    try:
        return SERVE_TARGETS[name]
    except KeyError:
        raise BadInput(f"unknown serving target {name!r}",
                       f"choose --serve from {', '.join(SERVE_TARGETS)}") from None


def _parent_and_role(name: str) -> tuple[str, str]:
    parent, _, role = name.rpartition(".")
    return parent, role


def fused_groups(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Layer names that a fused runtime serves as one module, each group in inventory order.
    Only groups of two or more layers are listed (Phi-3's `qkv_proj` is already one layer)."""
    found: dict[tuple[str, int], list[str]] = {}
    for name in names:
        parent, role = _parent_and_role(name)
        for kind, roles in enumerate(FUSED_ROLES):
            if role in roles:
                found.setdefault((parent, kind), []).append(name)
    return [tuple(group) for group in found.values() if len(group) > 1]


def tie_units(names: Sequence[str], target: ServeTarget) -> list[tuple[int, ...]]:
    """A partition of layer indices into units that take one setting together: the fused
    groups when the target fuses, else one unit per layer. Units are ordered by their first
    layer, so with no fusing the units are exactly the layers, in order."""
    if not target.fused:
        return [(i,) for i in range(len(names))]
    index = {name: i for i, name in enumerate(names)}
    unit_of: dict[int, tuple[int, ...]] = {}
    for group in fused_groups(names):
        unit = tuple(index[n] for n in group)
        for i in unit:
            unit_of[i] = unit
    units, seen = [], set()
    for i in range(len(names)):
        unit = unit_of.get(i, (i,))
        if unit not in seen:
            seen.add(unit)
            units.append(unit)
    return units


def _setting(entry: Any) -> tuple:
    return (entry.bits, entry.group_size, entry.sym, entry.keep)


def split_groups(plan: Any, names: Sequence[str]) -> list[tuple[tuple[str, ...], list[tuple]]]:
    """Fused groups whose layers the plan gives different settings: (group, settings)."""
    split = []
    for group in fused_groups([n for n in names if n in plan.entries]):
        settings = [_setting(plan.entries[n]) for n in group]
        if len(set(settings)) > 1:
            split.append((group, settings))
    return split


def _describe(setting: tuple) -> str:
    bits, group_size, sym, keep = setting
    if keep:
        return f"kept {keep}"
    return f"{bits}-bit g{group_size}{' sym' if sym else ''}"


def group_rule_pattern(group: Sequence[str], every_block: bool = False) -> str:
    """A regex matching exactly the layers of one fused group, e.g.
    `model\\.layers\\.3\\.self_attn\\.(q|k|v)_proj$`; with `every_block`, that group in
    every block (`self_attn\\.(q|k|v)_proj$`)."""
    parent = _parent_and_role(group[0])[0]
    if every_block:
        parent = parent.rpartition(".")[2]
    roles = [_parent_and_role(n)[1] for n in group]
    stems = [r[:-5] if r.endswith("_proj") else r for r in roles]
    suffix = "_proj" if all(r.endswith("_proj") for r in roles) else ""
    escaped = parent.replace(".", "\\.")
    return f"{escaped}\\.({'|'.join(stems)}){suffix}$"


def check_plan_serves(plan: Any, names: Sequence[str], target: ServeTarget, what: str = "the plan") -> None:
    """Refuse a plan that splits a fused group for a fusing target, naming the group and the fix."""
    if not target.fused:
        return
    split = split_groups(plan, names)
    if not split:
        return
    group, settings = split[0]
    roles = "/".join(_parent_and_role(n)[1] for n in group)
    given = ", ".join(f"{_parent_and_role(n)[1]} {_describe(s)}" for n, s in zip(group, settings))
    more = f" (and {len(split) - 1} more group(s))" if len(split) > 1 else ""
    raise BadInput(
        f"{what} splits the fused group {roles} of {_parent_and_role(group[0])[0]} ({given}){more}: "
        f"{target.name} serves it as one module with one scheme",
        f"give each fused group one setting: one rule for the whole group, e.g. the pattern "
        f"{group_rule_pattern(group, every_block=True)} (every block) or {group_rule_pattern(group)} "
        f"(this block), or choose --serve any")


__all__ = ["ServeTarget", "SERVE_TARGETS", "gguf_level_cost", "register_target", "serve_help", "serve_target", "fused_groups", "tie_units",
           "split_groups", "check_plan_serves", "group_rule_pattern", "FUSED_ROLES"]
