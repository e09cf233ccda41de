"""The table's plan in core/plan.py's terms: the window does no budget arithmetic itself.

core/plan.py is pure Python (no torch), so the window can import it for the live budget
line and the rule preview.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

from bitsmith.core.plan import Budget, LayerPlan, Plan, PlanSpec, Rule, resolve_group_size, resolve_plan

KEEP_BITS = 16


def layer_infos(layers: Sequence[dict]) -> list[SimpleNamespace]:
    """Inventory dicts -> objects with .name/.d_out/.d_in, what core/plan expects."""
    return [SimpleNamespace(name=l["name"], d_out=int(l["d_out"]), d_in=int(l["d_in"])) for l in layers]


def plan_from_table(rows: Sequence, sym: bool = False) -> Plan:
    """A resolved Plan from table rows (LayerRow: name, d_out, d_in, bits, group_size)."""
    entries = {}
    for r in rows:
        if r.bits == KEEP_BITS:
            entries[r.name] = LayerPlan(bits=16, group_size=0, keep="16", d_out=r.d_out, d_in=r.d_in)
        else:
            entries[r.name] = LayerPlan(bits=r.bits, group_size=resolve_group_size(r.d_in, r.group_size),
                                        sym=sym, requested_group_size=r.group_size, d_out=r.d_out, d_in=r.d_in)
    return Plan(entries)


def layer_bytes(plan: Plan) -> dict[str, float]:
    """Storage of each layer under the plan, codes plus scales and zeros, in bytes."""
    return {name: sum(entry.storage_bits()) / 8 for name, entry in plan.entries.items()}


def budget_line(budget: Budget) -> str:
    """The linear layers only (what a plan decides): code bits, with scale/zero overhead, and
    their size against the same layers at 16-bit."""
    if budget.layers == 0:
        return "no model open"
    return (f"avg code bits {budget.avg_code_bits:.3f}  ·  effective bits {budget.effective_bits:.3f}  ·  "
            f"linear layers {budget.total_bytes / 2**20:.2f} MiB of {budget.bytes_16bit / 2**20:.2f} MiB at 16-bit "
            f"({budget.compression:.2f}×)  ·  {budget.kept_layers} kept")


def shadowed_rules(rules: list[tuple[str, int]], layers: Sequence[dict]) -> list[tuple[int, int, list[int]]]:
    """Rules that match layers but never apply, because earlier rules take every one of
    them (first match wins): [(rule index, layers it matches, [indices of the earlier rules])]."""
    import re

    out = []
    claimed: dict[str, int] = {}             # layer -> the rule that takes it
    for i, (pattern, _) in enumerate(rules):
        try:
            regex = re.compile(pattern)
        except re.error:
            return out                         # core/plan reports the bad pattern
        hits = [l["name"] for l in layers if regex.search(l["name"])]
        if hits and all(h in claimed for h in hits):
            out.append((i, len(hits), sorted({claimed[h] for h in hits})))
        for h in hits:
            claimed.setdefault(h, i)
    return out


def plan_differences(plan: Plan, table: dict[str, tuple[int, int]]) -> int:
    """How many layers the table ({name: (bits, group_size)}) sets otherwise than `plan`."""
    differ = 0
    for name, entry in plan.entries.items():
        bits, group = table.get(name, (None, None))
        if entry.keep == "16":
            differ += bits != KEEP_BITS
        else:
            differ += bits != entry.bits or (entry.requested_group_size or entry.group_size) != group
    return differ


def resolve_rules(rules: list[tuple[str, int]], default_bits: int, group_size: int, sym: bool,
                  layers: Sequence[dict]) -> Plan:
    """Rules (regex, bits; 16 = keep) in order, first match wins; raises BadInput on a bad rule."""
    spec = PlanSpec(rules=[Rule(p, keep="16") if b == KEEP_BITS else Rule(p, bits=b) for p, b in rules],
                    bits=default_bits, group_size=group_size, sym=sym)
    return resolve_plan(spec, layer_infos(layers))


def plan_spec_from_table(rows: Sequence, sym: bool = False) -> dict:
    """The table as a rule list a job can carry: one exact-name rule per layer that differs
    from the most common setting (kept short: a uniform table is zero rules)."""
    from collections import Counter

    quantized = [(r.bits, r.group_size) for r in rows if r.bits != KEEP_BITS]
    bits, group = Counter(quantized).most_common(1)[0][0] if quantized else (4, 64)
    rules = []
    for r in rows:
        pattern = "^" + r.name.replace(".", r"\.") + "$"
        if r.bits == KEEP_BITS:
            rules.append({"pattern": pattern, "keep": "16"})
        elif (r.bits, r.group_size) != (bits, group):
            rules.append({"pattern": pattern, "bits": r.bits, "group_size": r.group_size})
    return {"rules": rules, "bits": bits, "group_size": group, "sym": sym}
