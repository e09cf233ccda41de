"""A search, step by step: (database) → allocation → plan.json, and budget sweeps of it.

The allocators (core/search/allocators/, one file each) return one shape, an Allocation;
everything around them is here: the variant database they share, the plan file, its
budget and events, the plan's perplexity with the database's variants, and a sweep over
targets. Plain arguments: the job (core/jobkinds/search.py) makes the Setup from its run
context and chains a quantize run after it.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInput
from ..events import Progress
from ..serve import check_plan_serves, serve_target
from .database import DatabaseSettings, VariantDatabase, build_database, find_database, model_fingerprint, open_database
from .genome import Genome, SearchSpace
from .registry import allocator
from .setup import Setup, calibration, code_target, eval_windows


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
        setup.events.log("the propagated variant database is built in this process (each layer's inputs "
                              "depend on the layers quantized before it); the cluster scores candidates")
        return None
    return setup.cluster.database_blocks(settings, levels, setup.check)


def ensure_database(setup: Setup) -> VariantDatabase:
    """Reuse `spec.database`, or build (or finish) this run's own database."""
    spec, events = setup.spec, setup.events
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
        events.log(f"reusing the variant database at {folder} (built in {db.seconds:.0f} s)")
        return db
    folder = setup.run_path / f"database-{settings.key()}"
    events.stage("database", "start")
    progress: dict[str, Progress] = {}
    last = {"t": time.monotonic()}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in progress:          # the stage began when the previous one ended
            progress[stage] = Progress(events, stage, total)
            progress[stage]._start = last["t"]
        progress[stage].advance(done - progress[stage].done)
        last["t"] = time.monotonic()

    def windows() -> torch.Tensor:
        return calibration(setup, setup.preset.windows, spec.seqlen, spec.seed)

    build_database(folder, settings, levels, setup.model, setup.layers, windows,
                   emit_layer=events.layer, check=setup.check, on_progress=on_progress,
                   quantizer=database_quantizer(setup, settings, levels))
    events.stage("database", "end")
    db = open_database(folder, cache, db_device)
    events.log(f"variant database: {len(setup.layers)} layers × {levels} bits in {db.seconds:.0f} s")
    return db


# --- one allocation ----------------------------------------------------------------------

def allocate(setup: Setup, plan_file: Path) -> dict:
    """One allocation at `setup.target` by the spec's allocator, the plan written to
    `plan_file`, and (with a database) the plan's perplexity. The report's part for it."""
    from ..plan import plan_from_bits, save_plan

    spec, events, layers, tying = setup.spec, setup.events, setup.layers, setup.tying
    method = allocator(spec.method)
    report: dict[str, Any] = {"target_code_bits": round(setup.target, 6)}

    def database() -> VariantDatabase:
        started = time.time()
        db = ensure_database(setup)
        if method.database:
            report["database"] = {"folder": str(db.folder), "build_seconds": round(db.seconds, 2),
                                  "this_session_seconds": round(time.time() - started, 2),
                                  "settings": db.meta["settings"], "levels": db.levels}
        return db

    found = method.allocate(setup, database)
    report.update(found.report)
    layer_space, layer_genome = setup.layer_space(found.space.levels), tying.expand(found.genome)
    plan = plan_from_bits(layers, layer_space.bits_map(layer_genome), spec.group_size, spec.sym)
    check_plan_serves(plan, [layer.name for layer in layers], serve_target(spec.serve), "the search's plan")
    save_plan(plan_file, plan, plan.spec, layers)
    budget = plan.budget(layers)
    events.plan(plan.bits_map(), budget=budget.to_dict(), final=True)
    events.log(f"plan: {budget.summary()}")
    report.update({"plan_file": str(plan_file), "avg_code_bits": budget.avg_code_bits,
                   "effective_bits": budget.effective_bits, "budget": budget.to_dict(),
                   "bits": layer_space.bits_map(layer_genome)})
    if spec.final_eval and found.db is not None:
        windows = eval_windows(setup)
        eval_started = time.time()
        report["ppl"] = plan_perplexity(setup, layer_space, layer_genome, found.db, windows)
        report["eval_seconds"] = round(time.time() - eval_started, 2)
        report["eval"] = {"data": spec.eval_data, "windows": len(windows), "seqlen": spec.eval_seqlen,
                          "how": "variants from the database assembled into the model"}
        events.metric("ppl", report["ppl"], step=report.get("evopress", {}).get("generations", 0), split="eval")
    return report


def plan_perplexity(setup: Setup, space: SearchSpace, genome: Genome, db: VariantDatabase,
                    windows: torch.Tensor, stage: str = "evaluate") -> float:
    """Perplexity of the genome's model assembled from the database variants."""
    from ..evaluate import perplexity
    from .assemble import Assembler

    events = setup.events
    assembler = Assembler(setup.model, setup.layers, space, db)
    assembler.assemble(genome)
    try:
        events.stage(stage, "start")
        progress = Progress(events, stage, len(windows))
        ppl = perplexity(setup.model, windows, on_window=lambda d, t: progress.advance(), check=setup.check)
        events.stage(stage, "end")
    finally:
        assembler.restore()
    return ppl


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

    spec, events = setup.spec, setup.events
    folder = setup.run_path / SWEEP_DIR
    folder.mkdir(exist_ok=True)
    rows = []
    for index, target in enumerate(spec.targets):
        done_file = folder / f"report-{target:g}.json"
        if setup.resume and done_file.is_file():
            row = json.loads(done_file.read_text())
            events.log(f"sweep: {target:g} bits already done ({row['plan_file']})")
        else:
            started = time.time()
            spec_t = replace(spec, target_bits=target)
            point = replace(setup, spec=spec_t, target=code_target(spec_t, setup.layers), tag=f"-{target:g}")
            events.stage(f"sweep {target:g}", "start")
            row = _sweep_row(target, allocate(point, folder / f"plan-{target:g}.json"), time.time() - started)
            atomic.write_json(done_file, row)
            events.stage(f"sweep {target:g}", "end")
        rows.append(row)
        events.metric("sweep_point", row["ppl"], step=index, split="sweep",
                           **{k: row[k] for k in ("target_bits", "avg_code_bits", "effective_bits", "mb", "kl",
                                                  "plan_file")})
    return rows


__all__ = ["ensure_database", "allocate", "plan_perplexity", "run_sweep", "SWEEP_DIR"]
