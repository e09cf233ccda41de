"""Bit plans: an ordered list of rules resolved to one setting per linear layer.

A rule is a regular expression on the full layer name (`re.search`, so
`layers\\.1\\.mlp\\.down_proj$` and `down_proj` both work) with a setting: bits, group
size, symmetric, or keep the layer at 16-bit / fp8. The first matching rule wins; layers
no rule matches get the spec's defaults. A rule that matches no layer is an error (it is
almost always a typo).

    spec = PlanSpec(rules=[Rule(r"layers\\.(1|29)\\.mlp\\.down_proj", keep="16")], bits=3)
    plan = resolve_plan(spec, layer_inventory(model))
    plan.budget()   # average code bits, effective bits with scale/zero overhead, bytes

`plan.json` holds both the rules (the spec) and the resolved per-layer entries, so it can
be re-resolved for another model (rules) or replayed exactly (entries).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from . import atomic
from .config import from_dict, to_dict
from .errors import BadInput

PLAN_FORMAT = "bitsmith-plan"
PLAN_VERSION = 1
OVERHEAD_BITS_PER_GROUP = 32      # one scale and one zero point at 16 bits each
MIN_BITS, MAX_BITS = 2, 8
Keep = Literal["16", "fp8"]


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise BadInput(f"bits {bits!r} is outside {MIN_BITS}–{MAX_BITS}",
                       f"choose an integer bit-width from {MIN_BITS} to {MAX_BITS} (or keep the layer at 16-bit)")


def resolve_group_size(d_in: int, requested: int) -> int:
    """The largest divisor of `d_in` not above `requested` (576 with 128 asked -> 96)."""
    if requested < 1:
        raise BadInput(f"group size {requested} must be at least 1", "use e.g. --group-size 64 or 128")
    g = min(requested, d_in)
    while d_in % g:
        g -= 1
    return g


# --- the spec: rules and defaults ------------------------------------------------------

@dataclass
class Rule:
    pattern: str                      # regex, re.search on the full layer name
    bits: int | None = None           # None: the spec's default
    group_size: int | None = None
    sym: bool | None = None
    keep: Keep | None = None          # keep the layer unquantized: "16" (dtype) or "fp8"

    def validate(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise BadInput(f"plan rule pattern {self.pattern!r} is not a valid regular expression ({err})",
                           "fix the pattern (it is a Python regex matched anywhere in the layer name)") from None
        if self.bits is not None:
            _check_rule_bits(self.bits, self.pattern)
        if self.group_size is not None and self.group_size < 1:
            raise BadInput(f"plan rule {self.pattern!r}: group size {self.group_size} must be at least 1",
                           "use e.g. 64 or 128")

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


def _check_rule_bits(bits: int, where: str) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise BadInput(f"plan {where!r}: bits {bits} is outside {MIN_BITS}–{MAX_BITS}",
                       f"use {MIN_BITS}–{MAX_BITS} bits, or \"keep\": \"16\" to leave the layer unquantized")


@dataclass
class PlanSpec:
    rules: list[Rule] = field(default_factory=list)
    bits: int = 4
    group_size: int = 64
    sym: bool = False

    def validate(self) -> None:
        _check_rule_bits(self.bits, "default")
        if self.group_size < 1:
            raise BadInput(f"plan group size {self.group_size} must be at least 1", "use e.g. 64 or 128")
        for rule in self.rules:
            rule.validate()


def uniform_plan_spec(bits: int, group_size: int = 64, sym: bool = False,
                      keep: Sequence[str] = ()) -> PlanSpec:
    """Every layer at `bits`; layers matching a `keep` pattern stay at 16-bit."""
    spec = PlanSpec(rules=[Rule(pattern, keep="16") for pattern in keep], bits=bits,
                    group_size=group_size, sym=sym)
    spec.validate()
    return spec


# --- the resolved plan -----------------------------------------------------------------

@dataclass
class LayerPlan:
    bits: int                         # 2..8, or 16 for a kept layer
    group_size: int                   # the group size used (divides d_in); 0 for kept layers
    sym: bool = False
    keep: Keep | None = None
    requested_group_size: int = 0     # what was asked before the divisor fallback
    d_out: int = 0
    d_in: int = 0

    @property
    def quantized(self) -> bool:
        return self.keep is None

    @property
    def params(self) -> int:
        return self.d_out * self.d_in

    def storage_bits(self) -> tuple[int, int]:
        """(code bits, overhead bits) of this layer."""
        if self.keep == "16":
            return 16 * self.params, 0
        if self.keep == "fp8":
            return 8 * self.params, 16 * self.d_out     # one 16-bit scale per output row
        groups = self.d_out * (self.d_in // self.group_size)
        return self.bits * self.params, OVERHEAD_BITS_PER_GROUP * groups


@dataclass
class Budget:
    layers: int
    quantized_layers: int
    kept_layers: int
    params: int
    avg_code_bits: float        # bits of the codes per weight (kept layers at 16, fp8 at 8)
    effective_bits: float       # plus scale/zero overhead at 16 bits each per group
    total_bytes: int            # storage of the linear layers at `effective_bits`
    bytes_16bit: int            # the same layers at 16-bit
    compression: float          # bytes_16bit / total_bytes
    bits_histogram: dict[str, int]   # "4": layers at 4 bits, "16": kept, "fp8": fp8

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.avg_code_bits:.3f} bits/weight in codes, {self.effective_bits:.3f} with scales "
                f"and zeros, {self.total_bytes / 2**20:.1f} MiB ({self.compression:.2f}x smaller than 16-bit)")


@dataclass
class Plan:
    entries: dict[str, LayerPlan]     # layer name -> setting, in inventory order
    spec: PlanSpec | None = None

    def __getitem__(self, name: str) -> LayerPlan:
        return self.entries[name]

    def __len__(self) -> int:
        return len(self.entries)

    def bits_map(self) -> dict[str, int]:
        """{name: bits} as the `plan` event carries it (16 for kept layers)."""
        return {name: entry.bits for name, entry in self.entries.items()}

    def budget(self, layers: Sequence[Any] | None = None) -> Budget:
        """Budget arithmetic; `layers` (LayerInfo) supplies shapes when entries lack them."""
        shapes = {l.name: (l.d_out, l.d_in) for l in layers} if layers is not None else {}
        code = over = params = 0
        hist: dict[str, int] = {}
        for name, entry in self.entries.items():
            if name in shapes:
                entry = LayerPlan(**{**asdict(entry), "d_out": shapes[name][0], "d_in": shapes[name][1]})
            c, o = entry.storage_bits()
            code, over, params = code + c, over + o, params + entry.params
            key = entry.keep if entry.keep else str(entry.bits)
            hist[key] = hist.get(key, 0) + 1
        total_bytes = (code + over + 7) // 8
        kept = sum(1 for e in self.entries.values() if e.keep)
        return Budget(layers=len(self.entries), quantized_layers=len(self.entries) - kept, kept_layers=kept,
                      params=params, avg_code_bits=code / params if params else 0.0,
                      effective_bits=(code + over) / params if params else 0.0,
                      total_bytes=total_bytes, bytes_16bit=2 * params,
                      compression=2 * params / total_bytes if total_bytes else 0.0,
                      bits_histogram=dict(sorted(hist.items(), key=lambda kv: (len(kv[0]), kv[0]))))

    def to_dict(self) -> dict:
        return {name: asdict(entry) for name, entry in self.entries.items()}


def _layer_entry(layer: Any, bits: int, group_size: int, sym: bool, keep: str | None) -> LayerPlan:
    if keep is not None:
        return LayerPlan(bits=16, group_size=0, sym=False, keep=keep, requested_group_size=0,  # type: ignore[arg-type]
                         d_out=layer.d_out, d_in=layer.d_in)
    return LayerPlan(bits=bits, group_size=resolve_group_size(layer.d_in, group_size), sym=sym,
                     requested_group_size=group_size, d_out=layer.d_out, d_in=layer.d_in)


def resolve_plan(spec: PlanSpec, layers: Sequence[Any]) -> Plan:
    """One entry per layer (LayerInfo from `layer_inventory`), first matching rule wins."""
    spec.validate()
    used = [False] * len(spec.rules)
    entries: dict[str, LayerPlan] = {}
    for layer in layers:
        bits, group, sym, keep = spec.bits, spec.group_size, spec.sym, None
        for i, rule in enumerate(spec.rules):
            if rule.matches(layer.name):
                used[i] = True
                bits = rule.bits if rule.bits is not None else bits
                group = rule.group_size if rule.group_size is not None else group
                sym = rule.sym if rule.sym is not None else sym
                keep = rule.keep
                break
        entries[layer.name] = _layer_entry(layer, bits, group, sym, keep)
    unused = [rule.pattern for rule, hit in zip(spec.rules, used) if not hit]
    if unused:
        example = layers[0].name if layers else "(no layers)"
        raise BadInput(f"plan rule {unused[0]!r} matches no layer of this model",
                       f"fix the pattern; layer names look like {example!r}")
    return Plan(entries, spec)


def plan_from_bits(layers: Sequence[Any], bits: dict[str, int], group_size: int = 64,
                   sym: bool = False) -> Plan:
    """A plan from per-layer bit-widths (a search's genome); 16 keeps a layer at 16-bit.

    Every layer of `layers` needs an entry, and every entry a layer."""
    names = {l.name for l in layers}
    unknown = sorted(set(bits) - names)
    if unknown:
        raise BadInput(f"the plan names layer {unknown[0]!r}, which this model does not have",
                       "use a plan made for this model")
    missing = [l.name for l in layers if l.name not in bits]
    if missing:
        raise BadInput(f"the plan gives no bits for layer {missing[0]!r}", "give every layer a bit-width")
    entries = {}
    for layer in layers:
        b = bits[layer.name]
        if b == 16:
            entries[layer.name] = _layer_entry(layer, 16, group_size, sym, "16")
        else:
            _check_rule_bits(b, layer.name)
            entries[layer.name] = _layer_entry(layer, b, group_size, sym, None)
    return Plan(entries, PlanSpec(bits=max((b for b in bits.values() if b <= MAX_BITS), default=4),
                                  group_size=group_size, sym=sym))


# --- plan.json -------------------------------------------------------------------------

def plan_document(plan: Plan, spec: PlanSpec | None = None, layers: Sequence[Any] | None = None) -> dict:
    spec = spec or plan.spec
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION,
            "spec": to_dict(spec) if spec is not None else None,
            "budget": plan.budget(layers).to_dict(),
            "layers": plan.to_dict()}


def save_plan(path: str | Path, plan: Plan, spec: PlanSpec | None = None,
              layers: Sequence[Any] | None = None) -> None:
    atomic.write_json(path, plan_document(plan, spec, layers))


def load_plan_file(path: str | Path) -> PlanSpec | Plan:
    """A plan.json: the resolved Plan when it holds per-layer entries, else its PlanSpec.

    Accepted shapes: a full plan.json ({"spec": ..., "layers": {name: {...}}}), a bare spec
    ({"rules": [...], "bits": 3, ...}), or per-layer bits ({"layers": {name: 3 | 16}}).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"plan file {path} does not exist", "check the --plan path")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BadInput(f"plan file {path} is not valid JSON (line {err.lineno}: {err.msg})",
                       "fix the JSON syntax") from None
    except UnicodeDecodeError:
        raise BadInput(f"plan file {path} is not a text file", "pass a plan.json") from None
    return parse_plan_document(doc, where=str(path))


def parse_plan_document(doc: Any, where: str = "plan") -> PlanSpec | Plan:
    if not isinstance(doc, dict):
        raise BadInput(f"{where} must hold a JSON object", 'write {"rules": [...], "bits": 4} or a plan.json')
    if doc.get("format", PLAN_FORMAT) != PLAN_FORMAT:
        raise BadInput(f"{where} is not a Bitsmith plan (format {doc.get('format')!r})", "pass a plan.json")
    spec_doc = doc.get("spec") if "spec" in doc or "layers" in doc else \
        {k: v for k, v in doc.items() if k not in ("format", "version")}
    spec = from_dict(PlanSpec, spec_doc, where=f"{where}.spec") if spec_doc is not None else None
    layers = doc.get("layers")
    if layers is None:
        if spec is None:
            raise BadInput(f"{where} holds neither rules nor layers", 'add "rules" or "layers"')
        return spec
    if not isinstance(layers, dict) or not layers:
        raise BadInput(f"{where}: \"layers\" must be a non-empty object of layer name -> setting",
                       "use a plan.json written by Bitsmith")
    entries = {}
    for name, value in layers.items():
        if isinstance(value, int) and not isinstance(value, bool):
            if value != 16:
                _check_rule_bits(value, name)
            value = {"bits": value, "group_size": 0 if value == 16 else (spec.group_size if spec else 64),
                     "keep": "16" if value == 16 else None, "sym": spec.sym if spec else False}
            value["requested_group_size"] = value["group_size"]
        entry = from_dict(LayerPlan, value, where=f"{where}.layers.{name}")
        if entry.keep is None:
            _check_rule_bits(entry.bits, name)
        entries[name] = entry
    return Plan(entries, spec)


def plan_for_model(source: PlanSpec | Plan, layers: Sequence[Any]) -> Plan:
    """Resolve a spec for these layers, or check that a resolved plan fits them.

    A resolved plan replays exactly (group sizes re-checked against the shapes); one made
    for another model (layer names this model does not have) is an error.
    """
    if isinstance(source, PlanSpec):
        return resolve_plan(source, layers)
    by_name = {l.name: l for l in layers}
    unknown = [name for name in source.entries if name not in by_name]
    if unknown:
        raise BadInput(f"the plan names layer {unknown[0]!r}, which this model does not have",
                       "the plan was made for another model: re-resolve its rules, or make a new plan")
    missing = [l.name for l in layers if l.name not in source.entries]
    if missing:
        raise BadInput(f"the plan has no entry for layer {missing[0]!r}",
                       "use a plan made for this model (every layer needs an entry)")
    entries = {}
    for layer in layers:
        e = source.entries[layer.name]
        if e.keep is None:
            requested = e.requested_group_size or e.group_size
            entries[layer.name] = _layer_entry(layer, e.bits, requested, e.sym, None)
        else:
            entries[layer.name] = _layer_entry(layer, 16, 0, False, e.keep)
    return Plan(entries, source.spec)


__all__ = ["Rule", "PlanSpec", "LayerPlan", "Plan", "Budget", "resolve_plan", "uniform_plan_spec",
           "plan_from_bits", "save_plan", "load_plan_file", "parse_plan_document", "plan_for_model",
           "plan_document", "resolve_group_size", "check_bits", "PLAN_FORMAT"]
