"""The `search` job, step by step: model → (database) → allocation → plan.json → (quantize).

Each method is one function returning a genome over its search space; everything around
them (opening the model, the database, events, the plan file, the report) is shared.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import to_dict
from ..jobkinds.common import cpu_threads
from ..errors import BadInput
from ..events import Progress
from ..inventory import LayerInfo, inventory_summary, layer_inventory
from .database import (DatabaseSettings, VariantDatabase, build_database, find_database, model_fingerprint,
                       open_database)
from .genome import Genome, SearchSpace, check_target
from .presets import PRESETS, Preset

if TYPE_CHECKING:
    from ..jobkinds.search import SearchSpec
    from ..jobs import RunContext
    from ..model import LoadedModel

CHECKPOINT_FILE = "search.json"


@dataclass
class Setup:
    """What every method works with."""

    spec: "SearchSpec"
    preset: Preset               # the preset with the spec's overrides applied
    ctx: "RunContext"
    loaded: "LoadedModel"
    layers: list[LayerInfo]

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model


def resolved_preset(spec: "SearchSpec") -> Preset:
    """The preset, with every non-null spec field put in its place."""
    base = asdict(PRESETS[spec.preset])
    for name in base:
        value = getattr(spec, name, None)
        if value is not None:
            base[name] = value
    preset = Preset(**base)
    if len(preset.survivors) != len(preset.tokens):
        raise BadInput(f"{len(preset.survivors)} survivor counts but {len(preset.tokens)} token counts",
                       "give one token count per selection stage")
    return preset


def _hash(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the variant database ----------------------------------------------------------------

def database_settings(setup: Setup) -> DatabaseSettings:
    from .propagated import propagation_level

    spec = setup.spec
    levels = [b for b in spec.levels if b != 16]
    propagate = propagation_level(levels, spec.target_bits) if spec.database_inputs == "propagated" else None
    return DatabaseSettings(model=model_fingerprint(setup.model), calib=spec.calib,
                            windows=setup.preset.windows, seqlen=spec.seqlen, seed=spec.seed,
                            group_size=spec.group_size, sym=spec.sym, propagate_bits=propagate)


def ensure_database(setup: Setup) -> VariantDatabase:
    """Reuse `spec.database`, or build (or finish) this run's own database."""
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
                                spec.seed, model=setup.model)

    build_database(folder, settings, levels, setup.model, setup.layers, windows,
                   emit_layer=ctx.emitter.layer, check=ctx.cancel.check, on_progress=on_progress)
    ctx.emitter.stage("database", "end")
    db = open_database(folder, cache, db_device)
    ctx.emitter.log(f"variant database: {len(setup.layers)} layers × {levels} bits in {db.seconds:.0f} s")
    return db


# --- methods -----------------------------------------------------------------------------

def sensitivity_genome(setup: Setup, space: SearchSpace, db: VariantDatabase) -> Genome:
    """Knapsack over levels of the per-layer relative output errors (assumed additive)."""
    from .knapsack import knapsack

    errors = [[db.errors(name)[bits] for bits in space.levels] for name in space.names]
    return tuple(knapsack(space.numels, space.levels, errors, setup.spec.target_bits))


def spike_genome(setup: Setup, cache: Path | None = None) -> tuple[SearchSpace, Genome, dict]:
    """Spike scores on calibration windows; keep the spiky layers; the rest to the budget.

    `cache`: a folder (the variant database's) where scores are kept for later searches."""
    from .. import atomic
    from ..pipeline import draw_calibration
    from .spike import choose_kept, spike_allocation, spike_scores

    spec, ctx = setup.spec, setup.ctx
    keep = spec.spike_keep_bits
    space = SearchSpace.from_layers(setup.layers, sorted(set(spec.levels) | {keep}))
    key = _hash({"model": model_fingerprint(setup.model), "calib": spec.calib,
                 "windows": setup.preset.windows, "seqlen": spec.seqlen, "seed": spec.seed})
    cached = cache / f"spike-scores-{key}.json" if cache is not None else None
    if cached is not None and cached.is_file():
        scores = json.loads(cached.read_text())
        ctx.emitter.log(f"spike scores from {cached}")
    else:
        windows = draw_calibration(spec.calib, setup.loaded.tokenizer, setup.preset.windows, spec.seqlen,
                                   spec.seed, model=setup.model)
        ctx.emitter.stage("spike_scores", "start")
        progress = Progress(ctx.emitter, "spike_scores", len(windows))
        scores = spike_scores(setup.model, space.names, windows, spec.batch_size, ctx.cancel.check,
                              on_batch=lambda done, total: progress.advance(done - progress.done))
        ctx.emitter.stage("spike_scores", "end")
        if cached is not None:
            atomic.write_json(cached, scores)
    kept = choose_kept(scores, spec.spike_threshold if spec.spike_top_k is None else None, spec.spike_top_k)
    alloc = spike_allocation(space, scores, spec.target_bits, kept, keep_bits=keep)
    for name in space.names:
        ctx.emitter.layer(name, spike_score=round(scores[name], 3), kept=name in alloc.kept)
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
    assembler = Assembler(setup.model, setup.layers, space, db)
    runner = BlockRunner(setup.model)
    targets = load_or_compute_targets(setup, runner)
    scorer = CandidateScorer(runner, [l.block for l in setup.layers], assembler.set_layer, targets,
                             spec.batch_size, spec.share_prefixes)
    eval_windows = _eval_windows(setup) if preset.eval_every else None
    progress = Progress(ctx.emitter, "search", cfg.generations)
    started = time.time()

    def on_generation(state, parent: Genome) -> None:
        g = state.generation
        ctx.emitter.metric("fitness", state.parent_fitness, step=g, split="search")
        ctx.emitter.metric("tokens", state.forward_tokens, step=g, split="search",
                           candidate_tokens=state.candidate_tokens)
        ctx.emitter.plan(space.bits_map(parent), generation=g, avg_bits=round(space.avg_bits(parent), 4),
                         fitness=state.parent_fitness)
        progress.done = g - 1
        progress.advance()
        if eval_windows is not None and g % preset.eval_every == 0:
            assembler.assemble(parent)
            ppl = perplexity(setup.model, eval_windows, check=ctx.cancel.check)
            state.history[-1]["ppl"] = ppl
            ctx.emitter.metric("ppl", ppl, step=g, split="eval")

    ctx.emitter.stage("search", "start")
    key = _hash({"spec": to_dict(spec), "db": db.meta["key"]})
    state = evopress(space, spec.target_bits, cfg, lambda genomes, rows: scorer.score(genomes, rows, ctx.cancel.check),
                     ctx.run_dir.checkpoint_dir / CHECKPOINT_FILE, key, resume=ctx.resume,
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
        "config": asdict(cfg), "history": state.history}


def load_or_compute_targets(setup: Setup, runner) -> "Any":
    """The dense model's log-probabilities on the fitness pool, cached in checkpoint/."""
    from safetensors.torch import load_file, save_file

    from .. import atomic
    from ..pipeline import draw_calibration
    from .fitness import DenseTargets, dense_targets

    spec, preset, ctx = setup.spec, setup.preset, setup.ctx
    topk = preset.kl_topk or None
    key = _hash({"model": model_fingerprint(setup.model), "calib": spec.calib,
                 "seed": spec.seed, "pool": preset.pool_windows, "seqlen": preset.fitness_seqlen, "topk": topk})
    path = ctx.run_dir.checkpoint_dir / f"dense-{key}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return DenseTargets(t["windows"], t.get("logp"), t.get("top_logp"), t.get("top_idx"))
    # the pool is drawn with another seed than the Hessian windows: fitness on fresh text
    windows = draw_calibration(spec.calib, setup.loaded.tokenizer, preset.pool_windows, preset.fitness_seqlen,
                               spec.seed + 1, model=setup.model)
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
    with cpu_threads(spec.threads) as threads:
        ctx.emitter.log(f"torch CPU threads: {threads}")
        report = _run_search(spec, ctx)
    report["threads"] = threads
    return report


def _run_search(spec: "SearchSpec", ctx: "RunContext") -> dict:
    from ..jobkinds.common import open_model
    from ..plan import plan_from_bits, save_plan

    from ..jobkinds.common import preflight

    started = time.time()
    preset = resolved_preset(spec)
    estimate = preflight("search", spec, ctx)        # refuses a search that cannot fit, before loading
    loaded = open_model(spec.model, ctx, lean=True)      # blocks onloaded one at a time (core/offload.py)
    if loaded.quantized is not None:
        raise BadInput(f"{spec.model.source} is already quantized", "search on the original model")
    layers = layer_inventory(loaded.model)
    setup = Setup(spec, preset, ctx, loaded, layers)
    report: dict[str, Any] = {"model": loaded.summary(), "inventory": inventory_summary(layers),
                              "method": spec.method, "target_bits": spec.target_bits, "preset": spec.preset,
                              "levels": sorted(set(spec.levels)), "estimate": estimate}
    db = None
    if spec.method == "spike":
        check_target(SearchSpace.from_layers(layers, [b for b in spec.levels if b != 16] or [16]), spec.target_bits)
        if spec.database:         # the spike plan needs no database; one given is used to measure it
            db = ensure_database(setup)
        space, genome, extra = spike_genome(setup, db.folder if db is not None else None)
        report["spike"] = extra
        if db is not None and spec.spike_keep_bits != 16 and spec.spike_keep_bits not in db.levels:
            ctx.emitter.log(f"the database has no {spec.spike_keep_bits}-bit variants: the perplexity puts "
                            f"round-to-nearest {spec.spike_keep_bits}-bit weights in the kept layers")
    else:
        space = SearchSpace.from_layers(layers, spec.levels)
        check_target(space, spec.target_bits)
        db_started = time.time()
        db = ensure_database(setup)
        report["database"] = {"folder": str(db.folder), "build_seconds": round(db.seconds, 2),
                              "this_session_seconds": round(time.time() - db_started, 2),
                              "settings": db.meta["settings"], "levels": db.levels}
        search_started = time.time()
        if spec.method == "sensitivity":
            genome = sensitivity_genome(setup, space, db)
            report["sensitivity"] = {"seconds": round(time.time() - search_started, 3),
                                     "summed_error": sum(db.errors(n)[b] for n, b in space.bits_map(genome).items())}
        else:
            genome, report["evopress"] = evopress_genome(setup, space, db)

    plan = plan_from_bits(layers, space.bits_map(genome), spec.group_size, spec.sym)
    save_plan(ctx.run_dir.plan_file, plan, plan.spec, layers)
    budget = plan.budget(layers)
    ctx.emitter.plan(plan.bits_map(), budget=budget.to_dict(), final=True)
    ctx.emitter.log(f"plan: {budget.summary()}")
    report.update({"plan_file": str(ctx.run_dir.plan_file), "avg_code_bits": budget.avg_code_bits,
                   "effective_bits": budget.effective_bits, "budget": budget.to_dict(),
                   "bits": space.bits_map(genome)})
    if spec.final_eval and db is not None:
        windows = _eval_windows(setup)
        eval_started = time.time()
        report["ppl"] = plan_perplexity(setup, space, genome, db, windows)
        report["eval_seconds"] = round(time.time() - eval_started, 2)
        report["eval"] = {"data": spec.eval_data, "windows": len(windows), "seqlen": spec.eval_seqlen,
                          "how": "variants from the database assembled into the model"}
        ctx.emitter.metric("ppl", report["ppl"], step=report.get("evopress", {}).get("generations", 0), split="eval")
    if spec.then_quantize:
        report["quantize"] = then_quantize(setup)
    report["search_total_seconds"] = round(time.time() - started, 2)
    return report


def then_quantize(setup: Setup) -> dict:
    """Quantize per the plan just written, into RUN_DIR/quantized/ (the quantize job)."""
    from ..jobkinds.quantize import QuantizeSpec, run_quantize

    spec, ctx = setup.spec, setup.ctx
    qspec = QuantizeSpec(model=spec.model, plan=str(ctx.run_dir.plan_file), calib=spec.quantize_calib,
                         calib_windows=spec.quantize_windows, seqlen=spec.seqlen, seed=spec.seed)
    ctx.emitter.stage("then_quantize", "start")
    report = run_quantize(qspec, ctx)
    ctx.emitter.stage("then_quantize", "end")
    return {k: v for k, v in report.items() if k != "layers"}


__all__ = ["run_search_job", "resolved_preset", "ensure_database", "plan_perplexity", "Setup"]
