"""`search`: choose per-layer bit-widths — EvoPress, spike-aware, or the sensitivity baseline.

Writes RUN_DIR/plan.json (what `bitsmith quantize --plan` reads) and, with
`then_quantize`, goes straight on to quantize the model per that plan into
RUN_DIR/quantized/. The variant database lives in RUN_DIR/database-<key>/ and can be
reused by another search (`database`: that run's folder). Preset fields left null take
the preset's value (core/search/presets.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import BadInput
from ..jobs import ModelSpec, RunContext, register_job
from ..serve import serve_target

ALLOWED_LEVELS = (2, 3, 4, 5, 6, 7, 8, 16)


@dataclass
class SearchSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    method: Literal["evopress", "spike", "sensitivity", "fisher"] = "evopress"
    target_bits: float = 3.0              # average bits per weight over the searched layers, …
    targets: list[float] | None = None    # a budget sweep: one plan per target (RUN_DIR/sweep/), sharing
                                          # the database and the dense targets; plan.json: target_bits's
                                          # plan when it is among them, else the last target's
    budget: Literal["effective", "code"] = "effective"   # … counting scales and zero points too
                                          # (effective, as ModelOpt's effective_bits), or the codes alone
    levels: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6])
    group_size: int = 64
    sym: bool = False
    preset: Literal["cpu", "reference"] = "cpu"
    calib: str = "selfgen"                # calibration text (Hessians, spike scores, fitness pool); selfgen
                                          # as in the quantize job, so the variants are what it makes
    windows: int | None = None            # calibration windows for Hessians / spike scores
    seqlen: int = 512                     # their length
    seed: int = 0
    # EvoPress (null: the preset's value)
    generations: int | None = None
    offspring: int | None = None
    survivors: list[int] | None = None
    tokens: list[int] | None = None       # tokens per selection stage
    fitness_seqlen: int | None = None
    pool_windows: int | None = None
    start_candidates: int | None = None
    kl_topk: int | None = None            # 0: full KL; k: top-k sparse KL
    mutation: Literal["within", "exchange"] | None = None   # flips inside size groups, or also across
    share_prefixes: bool = True           # candidates share the blocks they agree on
    batch_size: int = 4                   # windows per forward
    threads: int | None = None            # torch CPU threads; null: 1 when the CPU is oversubscribed
    cluster: str | None = None            # database tasks and EvoPress scoring on Ray ('bitsmith[cluster]'):
                                          # local:N (N actors on this machine), ray://HOST:PORT, or auto
                                          # (RAY_ADDRESS / `ray start`); null: in this process, no Ray
    cluster_actors: int | None = None     # ray:// and auto: actors (null: one per GPU, else one per node)
    eval_every: int | None = None         # perplexity every k generations (0: never)
    eval_data: str = "builtin-eval"
    eval_windows: int | None = None
    eval_seqlen: int = 512
    final_eval: bool = True               # perplexity of the chosen plan (variants assembled)
    # variant database
    database: str | None = None           # a run directory (or database folder) to reuse
    database_inputs: Literal["dense", "propagated"] = "dense"   # Hessians of the dense model (the
                                          # reference), or of inputs propagated through the model quantized
                                          # at the target, as `quantize` sees them (core/search/propagated.py)
    cache_gb: float = 2.0                 # dequantized variants kept in memory
    # spike-aware
    spike_threshold: float = 100.0        # keep layers scoring above this (Llama-2-7B: 4136 and 139, the
                                          # rest ≲ 18; SmolLM2-135M: 2129, then 86, 64, 56) …
    spike_top_k: int | None = None        # … or the top k
    spike_keep_bits: Literal[16, 8] = 8   # kept layers: 8-bit (GPTQ, near lossless at g64) costs the rest
                                          # 5 bits per kept weight against 13 for 16-bit
    serve: str = "any"                    # runtime the plan is for (core/serve.py): vllm/sglang tie q/k/v
                                          # and gate/up into one setting per fused group
    # then quantize per the plan (the quantize job's calibration and GPTQ settings)
    then_quantize: bool = False
    quantize_calib: str = "selfgen"       # the quantize job's defaults (core/jobkinds/quantize.py)
    quantize_windows: int = 32

    def validate(self) -> None:
        serve_target(self.serve)
        bad = [b for b in self.levels if b not in ALLOWED_LEVELS]
        if bad or not self.levels:
            raise BadInput(f"levels {self.levels} are not all allowed bit-widths",
                           f"use levels from {', '.join(map(str, ALLOWED_LEVELS))}, e.g. --levels 2,3,4,5,6")
        if self.method == "evopress" and len(set(self.levels)) < 2:
            raise BadInput("EvoPress needs at least two levels", "use e.g. --levels 2,3,4,5,6")
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
        if self.survivors is not None and self.tokens is not None and len(self.survivors) != len(self.tokens):
            raise BadInput(f"{len(self.survivors)} survivor counts but {len(self.tokens)} token counts",
                           "give one token count per selection stage")
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
            if self.method == "spike":
                raise BadInput("--cluster builds the variant database and scores EvoPress candidates; "
                               "the spike method does neither", "leave --cluster out, or use another --method")
            if address.kind == "local" and self.cluster_actors is not None:
                raise BadInput(f"--cluster {self.cluster} already says how many actors",
                               "leave --cluster-actors out, or change N in local:N")
        if self.cluster_actors is not None and (self.cluster_actors < 1 or self.cluster is None):
            raise BadInput(f"cluster_actors {self.cluster_actors} needs --cluster and must be at least 1",
                           "pass --cluster ray://HOST:PORT (or auto) with --cluster-actors 1 or more")
        if self.spike_top_k is not None and self.spike_top_k < 0:
            raise BadInput(f"spike_top_k {self.spike_top_k} is negative", "use 0 or more")


@register_job("search", SearchSpec, "per-layer bit-widths: EvoPress, spike-aware, or sensitivity (knapsack)")
def run_search(spec: SearchSpec, ctx: RunContext) -> dict:
    from ..search.driver import run_search_job

    return run_search_job(spec, ctx)
