"""The `search` job's spec: which model, which allocator (core/search/allocators/), the
budget, the calibration, the preset's overrides, the variant database and the follow-up
quantization. Torch-free: the window builds its form from it, the CLI its flags
(core/spec_args.py). The job itself is core/jobkinds/search.py.

EvoPress's settings are defined once, in core/search/presets.Preset; the fields here named
after them are a job's overrides (null: the preset's value, `resolved_preset`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import setting
from ..errors import BadInput
from ..jobs import ModelSpec
from ..serve import SERVE_TARGETS, serve_help, serve_target
from .presets import PRESETS, check_stages, preset_help
from .registry import allocator, allocator_names, allocators

ALLOWED_LEVELS = (2, 3, 4, 5, 6, 7, 8, 16)
EVOPRESS = "EvoPress (defaults from the preset)"     # the CLI's groups of flags
SPIKE = "spike-aware"


def _method_help() -> str:
    return "; ".join(f"{a.name}: {a.description}" for a in allocators().values())


def override(name: str, help: str = "", group: str = EVOPRESS) -> Any:
    """A job's override of the preset's `name` (null: the preset's value), with its help."""
    return setting(None, lambda: f"{help or preset_help(name)} (default: the preset's)", group=group)


@dataclass
class SearchSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    method: str = setting("evopress", _method_help, choices=allocator_names)
    target_bits: float = setting(3.0, "average bits per weight over the searched layers (default 3.0), as "
                                 "--budget counts")
    # plan.json: target_bits's plan when it is among them, else the last target's
    targets: list[float] | None = setting(None, "a budget sweep, e.g. 2.5,3,3.5,4: one plan per target "
                                          "(RUN/sweep/), sharing one database and the dense targets")
    budget: Literal["effective", "code"] = setting(
        "effective", "effective (default): codes plus scales and zero points (4-bit g64 = 4.5), as ModelOpt's "
        "effective_bits; code: the codes alone (4-bit = 4.0)")
    levels: list[int] = setting([2, 3, 4, 5, 6], "bit-widths to choose from (default 2,3,4,5,6)")
    group_size: int = 64
    sym: bool = setting(False, "symmetric grid (default asymmetric)")
    preset: str = setting("cpu", "cpu: under 15 minutes on a small model on 2 cores; reference: EvoPress's "
                          "defaults", choices=lambda: list(PRESETS))
    # selfgen as in the quantize job, so the variants are what it makes
    calib: str = setting("selfgen", "calibration text for Hessians, spike scores and the fitness pool "
                         "(default selfgen)")
    windows: int | None = override("windows", group="")
    seqlen: int = setting(512, "calibration window length")
    seed: int = 0
    generations: int | None = override("generations")
    offspring: int | None = override("offspring")
    survivors: list[int] | None = override("survivors")
    tokens: list[int] | None = override("tokens")
    fitness_seqlen: int | None = override("fitness_seqlen")
    pool_windows: int | None = override("pool_windows")
    start_candidates: int | None = override("start_candidates")
    kl_topk: int | None = override("kl_topk")
    mutation: Literal["within", "exchange"] | None = override("mutation")
    share_prefixes: bool = setting(True, "candidates share the blocks they agree on", group=EVOPRESS)
    batch_size: int = setting(4, "windows per forward")
    threads: int | None = setting(None, "torch CPU threads (default: 1 on a busy machine, else all)")
    cluster: str | None = setting(None, "build the variant database and score EvoPress candidates on Ray (pip "
                                  "install 'bitsmith[cluster]'): local:N (N actors on this machine), "
                                  "ray://HOST:PORT (a running cluster), or auto (RAY_ADDRESS or `ray start`); "
                                  "the run directory must be on storage every node mounts")
    cluster_actors: int | None = setting(None, "actors on a ray:// or auto cluster (default: one per GPU, else "
                                         "one per node)")
    eval_every: int | None = override("eval_every")
    eval_data: str = setting("builtin-eval", "text of those perplexities", group=EVOPRESS)
    eval_windows: int | None = override("eval_windows")
    eval_seqlen: int = 512
    final_eval: bool = setting(True, "the perplexity of the chosen plan (variants assembled)", group=EVOPRESS)
    # variant database
    database: str | None = setting(None, "reuse the variant database of another search run (its folder)")
    database_inputs: Literal["dense", "propagated"] = setting(
        "dense", "dense: every variant from the dense model's Hessians (the reference); propagated: from inputs "
        "through the model quantized at the target, as `quantize` makes them (core/search/propagated.py)")
    cache_gb: float = setting(2.0, "GB of dequantized variants kept in memory")
    # spike-aware. Scores: Llama-2-7B 4136 and 139, the rest ≲ 18; SmolLM2-135M 2129, then 86, 64, 56
    spike_threshold: float = setting(100.0, "keep layers whose spike score is above this", group=SPIKE)
    spike_top_k: int | None = setting(None, "... or the top k", group=SPIKE)
    # 8-bit (GPTQ, near lossless at g64) costs the rest 5 bits per kept weight against 13 for 16-bit
    spike_keep_bits: Literal[16, 8] = setting(8, "bits of the kept layers", group=SPIKE, cli="keep-bits")
    # vllm/sglang tie q/k/v and gate/up into one setting per fused group
    serve: str = setting("any", serve_help, choices=lambda: list(SERVE_TARGETS))   # core/serve.py
    # then quantize per the plan (the quantize job's calibration and GPTQ settings)
    then_quantize: bool = setting(False, "quantize per the plan into RUN/quantized")
    quantize_calib: str = setting("selfgen", "--then-quantize's calibration text (the quantize job's default)")
    quantize_windows: int = setting(32, "--then-quantize's calibration windows (the quantize job's default)")

    def validate(self) -> None:
        serve_target(self.serve)
        method = allocator(self.method)
        if self.preset not in PRESETS:
            raise BadInput(f"unknown preset {self.preset!r}", f"use one of: {', '.join(PRESETS)}")
        bad = [b for b in self.levels if b not in ALLOWED_LEVELS]
        if bad or not self.levels:
            raise BadInput(f"levels {self.levels} are not all allowed bit-widths",
                           f"use levels from {', '.join(map(str, ALLOWED_LEVELS))}, e.g. --levels 2,3,4,5,6")
        if len(set(self.levels)) < method.min_levels:
            raise BadInput(f"{method.label} needs at least {method.min_levels} levels", "use e.g. --levels 2,3,4,5,6")
        quantized = [b for b in self.levels if b != 16] or [16]
        low, high = min(quantized), max(self.levels)
        for target in [self.target_bits, *(self.targets or [])]:
            if not low <= target <= high:
                raise BadInput(f"target {target} bits is outside the levels {low}–{high}",
                               f"choose targets between {low} and {high}, or change --levels")
        if self.targets is not None and (not self.targets or len(set(self.targets)) != len(self.targets)):
            raise BadInput(f"targets {self.targets} must be distinct and at least one", "use e.g. --targets 2.5,3,3.5")
        if self.targets and self.then_quantize:
            raise BadInput("a budget sweep writes one plan per target; --then-quantize takes one plan",
                           "quantize a chosen plan afterwards: bitsmith quantize MODEL --plan RUN/sweep/plan-T.json")
        if self.group_size < 1:
            raise BadInput(f"group size {self.group_size} must be at least 1", "use e.g. --group-size 64")
        if self.survivors is not None and (not self.survivors or self.survivors[-1] != 1
                                           or any(s < 1 for s in self.survivors)):
            raise BadInput(f"survivors {self.survivors} must be positive and end with 1", "use e.g. 16,4,1")
        check_stages(self.survivors, self.tokens)
        for name in ("generations", "offspring", "windows", "pool_windows", "fitness_seqlen", "eval_windows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"{name} {value} must be at least 1", f"raise --{name.replace('_', '-')}")
        if self.seqlen < 2 or self.eval_seqlen < 2 or self.batch_size < 1:
            raise BadInput("seqlen must be at least 2 and batch_size at least 1", "use the defaults")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"threads {self.threads} must be at least 1", "use e.g. --threads 2")
        if self.cluster is not None:
            from ..search.cluster import parse_cluster

            address = parse_cluster(self.cluster)
            if not method.database:
                raise BadInput("--cluster builds the variant database and scores EvoPress candidates; "
                               f"the {self.method} method does neither", "leave --cluster out, or use another --method")
            if address.kind == "local" and self.cluster_actors is not None:
                raise BadInput(f"--cluster {self.cluster} already says how many actors",
                               "leave --cluster-actors out, or change N in local:N")
        if self.cluster_actors is not None and (self.cluster_actors < 1 or self.cluster is None):
            raise BadInput(f"cluster_actors {self.cluster_actors} needs --cluster and must be at least 1",
                           "pass --cluster ray://HOST:PORT (or auto) with --cluster-actors 1 or more")
        if self.spike_top_k is not None and self.spike_top_k < 0:
            raise BadInput(f"spike_top_k {self.spike_top_k} is negative", "use 0 or more")


__all__ = ["ALLOWED_LEVELS", "SearchSpec"]
