"""The `search` job, step by step: model → (database) → allocation → plan.json → (quantize).

Each method is one function returning a genome over its search space; everything around
them (opening the model, the database, events, the plan file, the report) is shared.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..config import to_dict
from ..threads import cpu_threads
from ..errors import BadInput
from ..events import Progress
from ..inventory import LayerInfo, inventory_summary, layer_inventory
from ..plan import OVERHEAD_BITS_PER_GROUP, resolve_group_size
from .database import (DatabaseSettings, VariantDatabase, build_database, find_database, model_fingerprint,
                       open_database)
from .genome import Genome, SearchSpace, Tying, check_target
from .presets import Preset, resolved_preset
from ..serve import check_plan_serves, serve_target, tie_units

if TYPE_CHECKING:
    from ..jobkinds.search import SearchSpec
    from ..jobs import RunContext
    from ..model import LoadedModel


@dataclass
class Setup:
    """What every method works with."""

    spec: "SearchSpec"
    preset: Preset               # the preset with the spec's overrides applied
    ctx: "RunContext"
    loaded: "LoadedModel"
    layers: list[LayerInfo]
    tying: Tying                 # units of layers that share one level (fused groups for vLLM/SGLang)
    target: float                # the budget in average code bits, or runtime bits (see `code_target`)
    tag: str = ""                # names this allocation's checkpoint apart (a sweep's target)
    cluster: Any = None          # a ClusterSession (core/search/cluster.py) with --cluster

    @classmethod
    def create(cls, spec: "SearchSpec", preset: Preset, ctx: "RunContext", loaded: "LoadedModel",
               layers: list[LayerInfo]) -> "Setup":
        """With the units of the spec's serving target and the budget in code bits."""
        units = tie_units([layer.name for layer in layers], serve_target(spec.serve))
        return cls(spec, preset, ctx, loaded, layers, Tying(tuple(units)), code_target(spec, layers))

    def layer_space(self, levels) -> SearchSpace:
        """Layers × levels; with a runtime that stores each level in its own type (llama.cpp)
        and an effective budget, each level costs that type's bits per weight."""
        return SearchSpace.from_layers(self.layers, levels, runtime_cost(self.spec))

    def unit_space(self, levels) -> SearchSpace:
        """The space the allocators search: one gene per unit."""
        return self.tying.unit_space(self.layer_space(levels))

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model


def runtime_cost(spec: "SearchSpec") -> Callable[[LayerInfo, int], Any] | None:
    """(layer, bits) -> bits per weight as the serving target stores it, when the budget is
    effective and the target has types of its own (core/serve.py); else None."""
    level_cost = serve_target(spec.serve).level_cost
    if spec.budget != "effective" or level_cost is None:
        return None
    return lambda layer, bits: level_cost(layer.d_in, bits, resolve_group_size(layer.d_in, spec.group_size), spec.sym)


def code_target(spec: "SearchSpec", layers: list[LayerInfo]) -> float:
    """The budget in average code bits, which the allocators work in.

    An effective-bits budget (`budget="effective"`, as ModelOpt's `effective_bits`) also
    counts each group's scale and zero point: 32 bits per group, the same at every level.
    So it is the code budget less the mean overhead, exactly:
        Σ n_i·(b_i + 32/g_i) ≤ T·Σ n_i   ⟺   Σ n_i·b_i ≤ (T − Σ n_i·32/g_i / Σ n_i)·Σ n_i
    (g_i: the group size layer i gets, 64 → 0.5 bits per weight). A layer kept at 16 bits
    carries no overhead; counting it anyway errs on the safe side."""
    if spec.budget == "code" or runtime_cost(spec) is not None:   # runtime costs include the overhead
        return spec.target_bits
    params = sum(l.params for l in layers)
    overhead = sum(l.params * OVERHEAD_BITS_PER_GROUP / resolve_group_size(l.d_in, spec.group_size)
                   for l in layers) / params
    target = spec.target_bits - overhead
    lowest = min([b for b in spec.levels if b != 16] or [16])
    if target < lowest - 1e-9:
        raise BadInput(f"an effective budget of {spec.target_bits} bits leaves {target:.3f} code bits after "
                       f"scales and zero points ({overhead:.3f} bits per weight), below the lowest level {lowest}",
                       f"raise --target-bits to at least {lowest + overhead:.3f}, or use --budget code")
    return target


def _hash(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the variant database ----------------------------------------------------------------

def database_settings(setup: Setup) -> DatabaseSettings:
    from .propagated import propagation_level

    spec = setup.spec
    levels = [b for b in spec.levels if b != 16]
    propagate = propagation_level(levels, setup.target) if spec.database_inputs == "propagated" else None
    return DatabaseSettings(model=model_fingerprint(setup.model), calib=spec.calib,
                            windows=setup.preset.windows, seqlen=spec.seqlen, seed=spec.seed,
                            group_size=spec.group_size, sym=spec.sym, propagate_bits=propagate)


def database_quantizer(setup: Setup, settings: DatabaseSettings, levels: list[int]) -> Any:
    """Ray tasks with --cluster (core/search/cluster_database.py); None: this process. A
    propagated database stays here: each layer's inputs come from the layers quantized before it."""
    if setup.cluster is None:
        return None
    if settings.propagate_bits is not None:
        setup.ctx.emitter.log("the propagated variant database is built in this process (each layer's inputs "
                              "depend on the layers quantized before it); the cluster scores candidates")
        return None
    return setup.cluster.database_blocks(settings, levels, setup.ctx.cancel.check)


def ensure_database(setup: Setup) -> VariantDatabase:
    """Reuse `spec.database`, or build (or finish) this run's own database."""
    from ..jobkinds.common import sampling_hooks
    from ..pipeline import draw_calibration

    spec, ctx = setup.spec, setup.ctx
    settings = database_settings(setup)
    levels = sorted(b for b in set(spec.levels) if b != 16)
    cache = int(spec.cache_gb * 2**30)
    # dequantized variants live where the weights they replace live: the work device for a
    # resident model, the CPU for one whose blocks are onloaded per call
    db_device = setup.loaded.device if setup.loaded.offload == "none" else torch.device("cpu")
    if spec.database:
        folder = find_database(spec.database, settings)
        db = open_database(folder, cache, db_device)
        missing = [b for b in levels if b not in db.levels]
        if missing:
            raise BadInput(f"the database at {folder} has no variants at {missing} bits",
                           f"search with levels from {db.levels}, or leave --database out to build a new one")
        ctx.emitter.log(f"reusing the variant database at {folder} (built in {db.seconds:.0f} s)")
        return db
    folder = ctx.run_dir.path / f"database-{settings.key()}"
    ctx.emitter.stage("database", "start")
    progress: dict[str, Progress] = {}
    last = {"t": time.monotonic()}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in progress:          # the stage began when the previous one ended
            progress[stage] = Progress(ctx.emitter, stage, total)
            progress[stage]._start = last["t"]
        progress[stage].advance(done - progress[stage].done)
        last["t"] = time.monotonic()

    def windows() -> torch.Tensor:
        return draw_calibration(spec.calib, setup.loaded.tokenizer, setup.preset.windows, spec.seqlen,
                                spec.seed, model=setup.model, **sampling_hooks(ctx))

    build_database(folder, settings, levels, setup.model, setup.layers, windows,
                   emit_layer=ctx.emitter.layer, check=ctx.cancel.check, on_progress=on_progress,
                   quantizer=database_quantizer(setup, settings, levels))
    ctx.emitter.stage("database", "end")
    db = open_database(folder, cache, db_device)
    ctx.emitter.log(f"variant database: {len(setup.layers)} layers × {levels} bits in {db.seconds:.0f} s")
    return db


# --- methods -----------------------------------------------------------------------------

def sensitivity_genome(setup: Setup, space: SearchSpace, db: VariantDatabase) -> Genome:
    """Knapsack over levels of the relative output errors (assumed additive), one choice per
    unit: a fused group's error at a level is the sum of its layers' errors there."""
    from .knapsack import knapsack

    errors = setup.tying.unit_errors([[db.errors(layer.name)[bits] for bits in space.levels] for layer in setup.layers])
    return tuple(knapsack(space.numels, space.levels, errors, setup.target, space.costs))


def scored_on_calibration(setup: Setup, stage: str, compute: Callable) -> Any:
    """Draw the calibration windows and run `compute(windows, check, on_batch)` as `stage`,
    with progress events per batch (spike and fisher scores)."""
    from ..jobkinds.common import sampling_hooks
    from ..pipeline import draw_calibration

    spec, ctx = setup.spec, setup.ctx
    windows = draw_calibration(spec.calib, setup.loaded.tokenizer, setup.preset.windows, spec.seqlen,
                               spec.seed, model=setup.model, **sampling_hooks(ctx))
    ctx.emitter.stage(stage, "start")
    progress = Progress(ctx.emitter, stage, len(windows))
    out = compute(windows, ctx.cancel.check, lambda done, total: progress.advance(done - progress.done))
    ctx.emitter.stage(stage, "end")
    return out


def fisher_genome(setup: Setup, space: SearchSpace, db: VariantDatabase) -> tuple[Genome, dict]:
    """Fisher-weighted output errors of every variant (core/search/fisher.py), summed per unit,
    solved by the knapsack under the budget."""
    from .fisher import fisher_scores
    from .knapsack import knapsack

    from .. import atomic

    spec, ctx = setup.spec, setup.ctx
    started = time.time()
    # the scores depend on the model, the windows and the variants, not on the target: a
    # sweep (or a later search on the same database) computes them once
    key = _hash({"model": model_fingerprint(setup.model), "calib": spec.calib, "windows": setup.preset.windows,
                 "seqlen": spec.seqlen, "seed": spec.seed, "levels": list(space.levels), "db": db.meta["key"]})
    cached = db.folder / f"fisher-scores-{key}.json"
    if cached.is_file():
        scores = {name: {int(b): v for b, v in per.items()} for name, per in json.loads(cached.read_text()).items()}
        ctx.emitter.log(f"fisher scores from {cached}")
    else:
        scores = scored_on_calibration(setup, "fisher_scores", lambda windows, check, on_batch: fisher_scores(
            setup.model, setup.layers, windows, db.weight, space.levels, spec.batch_size, check, on_batch))
        atomic.write_json(cached, scores)
    errors = setup.tying.unit_errors([[scores[layer.name][bits] for bits in space.levels] for layer in setup.layers])
    genome = tuple(knapsack(space.numels, space.levels, errors, setup.target, space.costs))
    top = max(setup.layers, key=lambda layer: scores[layer.name][space.levels[0]])
    return genome, {"seconds": round(time.time() - started, 2), "scores_file": str(cached),
                    "summed_score": sum(errors[u][l] for u, l in enumerate(genome)),
                    "most_sensitive_at_lowest_level": top.name}


def spike_genome(setup: Setup, cache: Path | None = None) -> tuple[SearchSpace, Genome, dict]:
    """Spike scores on calibration windows; keep the spiky layers; the rest to the budget.

    `cache`: a folder (the variant database's) where scores are kept for later searches."""
    from .. import atomic
    from .spike import choose_kept, spike_allocation, spike_scores

    spec, ctx = setup.spec, setup.ctx
    keep = spec.spike_keep_bits
    levels = sorted(set(spec.levels) | {keep})
    names = [layer.name for layer in setup.layers]
    space = setup.unit_space(levels)
    key = _hash({"model": model_fingerprint(setup.model), "calib": spec.calib,
                 "windows": setup.preset.windows, "seqlen": spec.seqlen, "seed": spec.seed})
    cached = cache / f"spike-scores-{key}.json" if cache is not None else None
    if cached is not None and cached.is_file():
        scores = json.loads(cached.read_text())
        ctx.emitter.log(f"spike scores from {cached}")
    else:
        scores = scored_on_calibration(setup, "spike_scores", lambda windows, check, on_batch: spike_scores(
            setup.model, names, windows, spec.batch_size, check, on_batch=on_batch))
        if cached is not None:
            atomic.write_json(cached, scores)
    # a unit scores its spikiest layer: keeping a fused group keeps all of it
    unit_scores = dict(zip(space.names, setup.tying.unit_values([scores[n] for n in names], combine=max)))
    kept = choose_kept(unit_scores, spec.spike_threshold if spec.spike_top_k is None else None, spec.spike_top_k)
    alloc = spike_allocation(space, unit_scores, setup.target, kept, keep_bits=keep)
    kept_layers = {n for unit in alloc.kept for n in unit.split("+")}
    for name in names:
        ctx.emitter.layer(name, spike_score=round(scores[name], 3), kept=name in kept_layers)
    if alloc.dropped:
        ctx.emitter.log(f"the budget cannot keep {len(alloc.dropped)} spiky layer(s) at {keep} bits: "
                        f"{', '.join(alloc.dropped)}")
    ranked = sorted(scores, key=lambda n: -scores[n])
    return space, alloc.genome, {"spike_scores": scores, "kept": alloc.kept, "dropped": alloc.dropped,
                                 "rest_bits": alloc.rest_bits, "top_scores": {n: scores[n] for n in ranked[:10]}}


def evopress_genome(setup: Setup, space: SearchSpace, db: VariantDatabase) -> tuple[Genome, dict]:
    from ..evaluate import perplexity
    from .assemble import Assembler
    from .blocks import BlockRunner
    from .evopress import EvoConfig, Hooks, evopress
    from .fitness import CandidateScorer

    spec, preset, ctx = setup.spec, setup.preset, setup.ctx
    cfg = EvoConfig(generations=preset.generations, offspring=preset.offspring, survivors=list(preset.survivors),
                    tokens=list(preset.tokens), seqlen=preset.fitness_seqlen, pool_windows=preset.pool_windows,
                    start_candidates=preset.start_candidates, mutation=preset.mutation, seed=spec.seed)
    expand = setup.tying.expand
    assembler = Assembler(setup.model, setup.layers, setup.layer_space(space.levels), db)
    runner = BlockRunner(setup.model)
    targets = load_or_compute_targets(setup, runner)
    scorer = CandidateScorer(runner, [l.block for l in setup.layers], assembler.set_layer, targets,
                             spec.batch_size, spec.share_prefixes)
    if setup.cluster is not None:       # the same scoring on Ray actors (core/search/cluster.py)
        from .cluster_units import actor_job

        scorer = setup.cluster.pool(actor_job(setup, space.levels, db, dense_targets_path(setup)), ctx.cancel.check)
    eval_windows = _eval_windows(setup) if preset.eval_every else None
    progress = Progress(ctx.emitter, "search", cfg.generations)
    started = time.time()

    def on_generation(state, parent: Genome) -> None:
        g = state.generation
        ctx.emitter.metric("fitness", state.parent_fitness, step=g, split="search")
        ctx.emitter.metric("tokens", state.forward_tokens, step=g, split="search",
                           candidate_tokens=state.candidate_tokens)
        ctx.emitter.plan(setup.layer_space(space.levels).bits_map(expand(parent)), generation=g, avg_bits=round(space.avg_bits(parent), 4),
                         fitness=state.parent_fitness)
        progress.done = g - 1
        progress.advance()
        if eval_windows is not None and g % preset.eval_every == 0:
            assembler.assemble(expand(parent))
            ppl = perplexity(setup.model, eval_windows, check=ctx.cancel.check)
            state.history[-1]["ppl"] = ppl
            ctx.emitter.metric("ppl", ppl, step=g, split="eval")

    ctx.emitter.stage("search", "start")
    key = _hash({"spec": search_key_fields(spec), "db": db.meta["key"], "target": setup.target})
    def score(genomes, rows):
        return scorer.score([expand(g) for g in genomes], rows, ctx.cancel.check)

    state = evopress(space, setup.target, cfg, score,
                     ctx.run_dir.checkpoint_dir / f"search{setup.tag}.json", key, resume=ctx.resume,
                     hooks=Hooks(on_generation=on_generation, check=ctx.cancel.check,
                                 tokens=lambda: (scorer.forward_tokens, scorer.candidate_tokens)))
    ctx.emitter.stage("search", "end")
    assembler.restore()
    return tuple(state.parent), {
        "generations": state.generation, "fitness": state.parent_fitness,
        "forward_tokens": round(state.forward_tokens), "candidate_tokens": state.candidate_tokens,
        "prefix_saving": round(1 - state.forward_tokens / state.candidate_tokens, 4) if state.candidate_tokens else 0.0,
        "search_seconds": round(state.seconds, 2), "this_session_seconds": round(time.time() - started, 2),
        "dense_target_tokens": int(targets.windows.numel()), "kl_topk": targets.topk,
        "config": asdict(cfg), "history": state.history,
        **({"cluster": scorer.summary()} if setup.cluster is not None else {})}


def search_key_fields(spec: "SearchSpec") -> dict:
    """The spec fields a search's result depends on: where it is scored is not one of them
    (a clustered search gives the local one's result), so a run resumes either way."""
    return {k: v for k, v in to_dict(spec).items() if k not in ("cluster", "cluster_actors")}


def dense_targets_path(setup: Setup) -> Path:
    """checkpoint/dense-<key>.safetensors: the fitness pool and its dense log-probabilities."""
    spec, preset = setup.spec, setup.preset
    key = _hash({"model": model_fingerprint(setup.model), "calib": spec.calib, "seed": spec.seed,
                 "pool": preset.pool_windows, "seqlen": preset.fitness_seqlen, "topk": preset.kl_topk or None})
    return setup.ctx.run_dir.checkpoint_dir / f"dense-{key}.safetensors"


def load_or_compute_targets(setup: Setup, runner) -> "Any":
    """The dense model's log-probabilities on the fitness pool, cached in checkpoint/."""
    from safetensors.torch import load_file, save_file

    from .. import atomic
    from ..jobkinds.common import sampling_hooks
    from ..pipeline import draw_calibration
    from .fitness import DenseTargets, dense_targets

    spec, preset, ctx = setup.spec, setup.preset, setup.ctx
    topk = preset.kl_topk or None
    path = dense_targets_path(setup)
    if path.is_file():
        t = load_file(str(path))
        return DenseTargets(t["windows"], t.get("logp"), t.get("top_logp"), t.get("top_idx"))
    # the pool is drawn with another seed than the Hessian windows: fitness on fresh text
    windows = draw_calibration(spec.calib, setup.loaded.tokenizer, preset.pool_windows, preset.fitness_seqlen,
                               spec.seed + 1, model=setup.model, **sampling_hooks(ctx))
    ctx.emitter.stage("dense_logits", "start")
    progress = Progress(ctx.emitter, "dense_logits", len(windows))
    targets = dense_targets(runner, windows, topk, spec.batch_size, ctx.cancel.check,
                            on_batch=lambda done, total: progress.advance(done - progress.done))
    ctx.emitter.stage("dense_logits", "end")
    tensors = {k: v.contiguous() for k, v in {"windows": targets.windows, "logp": targets.logp,
                                              "top_logp": targets.top_logp, "top_idx": targets.top_idx}.items()
               if v is not None}
    with atomic.staged_file(path) as tmp:
        save_file(tensors, str(tmp))
    return targets


def _eval_windows(setup: Setup) -> torch.Tensor:
    from ..data import eval_windows

    return eval_windows(setup.spec.eval_data, setup.loaded.tokenizer, setup.spec.eval_seqlen,
                        setup.preset.eval_windows)


def plan_perplexity(setup: Setup, space: SearchSpace, genome: Genome, db: VariantDatabase,
                    windows: torch.Tensor, stage: str = "evaluate") -> float:
    """Perplexity of the genome's model assembled from the database variants."""
    from ..evaluate import perplexity
    from .assemble import Assembler

    ctx = setup.ctx
    assembler = Assembler(setup.model, setup.layers, space, db)
    assembler.assemble(genome)
    try:
        ctx.emitter.stage(stage, "start")
        progress = Progress(ctx.emitter, stage, len(windows))
        ppl = perplexity(setup.model, windows, on_window=lambda d, t: progress.advance(), check=ctx.cancel.check)
        ctx.emitter.stage(stage, "end")
    finally:
        assembler.restore()
    return ppl


# --- the job -----------------------------------------------------------------------------

def run_search_job(spec: "SearchSpec", ctx: "RunContext") -> dict:
    from .cluster import open_cluster

    # the cluster first: an unreachable one is one error line before any work
    with open_cluster(spec.cluster, ctx.emitter, spec.threads, spec.cluster_actors) as cluster, \
            cpu_threads(spec.threads) as threads:
        ctx.emitter.log(f"torch CPU threads: {threads}")
        report = _run_search(spec, ctx, cluster)
    report["threads"] = threads
    return report


def _run_search(spec: "SearchSpec", ctx: "RunContext", cluster: Any = None) -> dict:
    from ..jobkinds.common import open_model, preflight

    started = time.time()
    preset = resolved_preset(spec)
    estimate = preflight("search", spec, ctx)        # refuses a search that cannot fit, before loading
    loaded = open_model(spec.model, ctx, lean=True)      # blocks onloaded one at a time (core/offload.py)
    if loaded.quantized is not None:
        raise BadInput(f"{spec.model.source} is already quantized", "search on the original model")
    layers = layer_inventory(loaded.model)
    setup = replace(Setup.create(spec, preset, ctx, loaded, layers), cluster=cluster)
    report: dict[str, Any] = {"model": loaded.summary(), "inventory": inventory_summary(layers),
                              "method": spec.method, "target_bits": spec.target_bits, "preset": spec.preset,
                              "serve": spec.serve, "units": len(setup.tying.units), "budget_kind": spec.budget,
                              "levels": sorted(set(spec.levels)), "estimate": estimate}
    if spec.targets:
        report["sweep"] = run_sweep(setup)
        chosen = next((row for row in report["sweep"] if row["target_bits"] == spec.target_bits), report["sweep"][-1])
        shutil.copyfile(chosen["plan_file"], ctx.run_dir.plan_file)
        report["plan_file"] = str(ctx.run_dir.plan_file)
    else:
        report.update(allocate(setup, ctx.run_dir.plan_file))
        if spec.then_quantize:
            report["quantize"] = then_quantize(setup)
    report["search_total_seconds"] = round(time.time() - started, 2)
    return report


def allocate(setup: Setup, plan_file: Path) -> dict:
    """One allocation at `setup.target`: the method's genome, the plan written to `plan_file`,
    and (with a database) the plan's perplexity. The report's part for it."""
    from ..plan import plan_from_bits, save_plan

    spec, ctx, layers, tying = setup.spec, setup.ctx, setup.layers, setup.tying
    report: dict[str, Any] = {"target_code_bits": round(setup.target, 6)}
    db = None
    if spec.method == "spike":
        check_target(setup.layer_space([b for b in spec.levels if b != 16] or [16]), setup.target)
        if spec.database:         # the spike plan needs no database; one given is used to measure it
            db = ensure_database(setup)
        space, genome, extra = spike_genome(setup, db.folder if db is not None else None)
        report["spike"] = extra
        if db is not None and spec.spike_keep_bits != 16 and spec.spike_keep_bits not in db.levels:
            ctx.emitter.log(f"the database has no {spec.spike_keep_bits}-bit variants: the perplexity puts "
                            f"round-to-nearest {spec.spike_keep_bits}-bit weights in the kept layers")
    else:
        space = setup.unit_space(spec.levels)
        check_target(space, setup.target)
        db_started = time.time()
        db = ensure_database(setup)
        report["database"] = {"folder": str(db.folder), "build_seconds": round(db.seconds, 2),
                              "this_session_seconds": round(time.time() - db_started, 2),
                              "settings": db.meta["settings"], "levels": db.levels}
        search_started = time.time()
        if spec.method == "sensitivity":
            genome = sensitivity_genome(setup, space, db)
            layer_bits = setup.layer_space(space.levels).bits_map(tying.expand(genome))
            report["sensitivity"] = {"seconds": round(time.time() - search_started, 3),
                                     "summed_error": sum(db.errors(n)[b] for n, b in layer_bits.items())}
        elif spec.method == "fisher":
            genome, report["fisher"] = fisher_genome(setup, space, db)
        else:
            genome, report["evopress"] = evopress_genome(setup, space, db)

    layer_space, layer_genome = setup.layer_space(space.levels), tying.expand(genome)
    plan = plan_from_bits(layers, layer_space.bits_map(layer_genome), spec.group_size, spec.sym)
    check_plan_serves(plan, [layer.name for layer in layers], serve_target(spec.serve), "the search's plan")
    save_plan(plan_file, plan, plan.spec, layers)
    budget = plan.budget(layers)
    ctx.emitter.plan(plan.bits_map(), budget=budget.to_dict(), final=True)
    ctx.emitter.log(f"plan: {budget.summary()}")
    report.update({"plan_file": str(plan_file), "avg_code_bits": budget.avg_code_bits,
                   "effective_bits": budget.effective_bits, "budget": budget.to_dict(),
                   "bits": layer_space.bits_map(layer_genome)})
    if spec.final_eval and db is not None:
        windows = _eval_windows(setup)
        eval_started = time.time()
        report["ppl"] = plan_perplexity(setup, layer_space, layer_genome, db, windows)
        report["eval_seconds"] = round(time.time() - eval_started, 2)
        report["eval"] = {"data": spec.eval_data, "windows": len(windows), "seqlen": spec.eval_seqlen,
                          "how": "variants from the database assembled into the model"}
        ctx.emitter.metric("ppl", report["ppl"], step=report.get("evopress", {}).get("generations", 0), split="eval")
    return report


# --- budget sweeps -----------------------------------------------------------------------

SWEEP_DIR = "sweep"


def _sweep_row(target: float, part: dict, seconds: float) -> dict:
    """One point of the Pareto table: size against quality."""
    return {"target_bits": target, "avg_code_bits": part["avg_code_bits"], "effective_bits": part["effective_bits"],
            "mb": round(part["budget"]["total_bytes"] / 2**20, 3), "kl": part.get("evopress", {}).get("fitness"),
            "ppl": part.get("ppl"), "plan_file": part["plan_file"], "seconds": round(seconds, 2)}


def run_sweep(setup: Setup) -> list[dict]:
    """One allocation per target, sharing the variant database and the dense targets; each
    target's plan and report go to RUN_DIR/sweep/ as it finishes, so a resumed sweep skips
    finished targets and continues the unfinished one from its own EvoPress checkpoint."""
    from .. import atomic

    spec, ctx = setup.spec, setup.ctx
    folder = ctx.run_dir.path / SWEEP_DIR
    folder.mkdir(exist_ok=True)
    rows = []
    for index, target in enumerate(spec.targets):
        done_file = folder / f"report-{target:g}.json"
        if ctx.resume and done_file.is_file():
            row = json.loads(done_file.read_text())
            ctx.emitter.log(f"sweep: {target:g} bits already done ({row['plan_file']})")
        else:
            started = time.time()
            spec_t = replace(spec, target_bits=target)
            point = replace(setup, spec=spec_t, target=code_target(spec_t, setup.layers), tag=f"-{target:g}")
            ctx.emitter.stage(f"sweep {target:g}", "start")
            row = _sweep_row(target, allocate(point, folder / f"plan-{target:g}.json"), time.time() - started)
            atomic.write_json(done_file, row)
            ctx.emitter.stage(f"sweep {target:g}", "end")
        rows.append(row)
        ctx.emitter.metric("sweep_point", row["ppl"], step=index, split="sweep",
                           **{k: row[k] for k in ("target_bits", "avg_code_bits", "effective_bits", "mb", "kl",
                                                  "plan_file")})
    return rows


def then_quantize(setup: Setup) -> dict:
    """Quantize per the plan just written, into RUN_DIR/quantized/ (the quantize job)."""
    from ..jobkinds.quantize import QuantizeSpec, run_quantize

    spec, ctx = setup.spec, setup.ctx
    qspec = QuantizeSpec(model=spec.model, plan=str(ctx.run_dir.plan_file), calib=spec.quantize_calib,
                         calib_windows=spec.quantize_windows, seqlen=spec.seqlen, seed=spec.seed, serve=spec.serve)
    ctx.emitter.stage("then_quantize", "start")
    report = run_quantize(qspec, ctx)
    ctx.emitter.stage("then_quantize", "end")
    return {k: v for k, v in report.items() if k != "layers"}


__all__ = ["run_search_job", "ensure_database", "plan_perplexity", "Setup"]
