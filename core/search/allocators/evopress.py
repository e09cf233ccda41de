"""`evopress`: EvoPress (Sieberling et al., 2024), the levels found by an evolutionary search
that scores whole candidate models: fitness = KL(P_dense ‖ Q_candidate) per token on the
fitness pool, candidates assembled from the variant database (core/search/evopress.py for
the loop, fitness.py for the scorer, presets.py for its settings).

The pool's dense log-probabilities are computed once and cached in checkpoint/, and the
loop checkpoints every generation, so a resumed search reaches the same result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..registry import Allocation, register_allocator

USES = ("generations", "offspring", "survivors", "tokens", "fitness_seqlen", "pool_windows", "start_candidates",
        "kl_topk", "mutation", "share_prefixes", "eval_every")


@register_allocator("evopress", "evolutionary search scoring whole models by their KL to the dense one "
                    "(default)", rank=0, min_levels=2, uses=USES, label="EvoPress")
def evopress(setup, database) -> Allocation:
    from ..genome import check_target

    space = setup.unit_space(setup.spec.levels)
    check_target(space, setup.target)
    db = database()
    genome, report = _search(setup, space, db)
    return Allocation(space, genome, db, {"evopress": report})


def _search(setup, space, db) -> tuple[tuple, dict]:
    from ...config import to_dict
    from ...evaluate import perplexity
    from ...events import Progress
    from ..assemble import Assembler
    from ..blocks import BlockRunner
    from ..evopress import Hooks, config_record, evopress as run_loop
    from ..fitness import CandidateScorer
    from ..setup import eval_windows, settings_hash

    spec, preset, events = setup.spec, setup.preset, setup.events
    expand = setup.tying.expand
    assembler = Assembler(setup.model, setup.layers, setup.layer_space(space.levels), db)
    runner = BlockRunner(setup.model)
    targets = dense_targets_of(setup, runner)
    scorer = CandidateScorer(runner, [l.block for l in setup.layers], assembler.set_layer, targets,
                             spec.batch_size, spec.share_prefixes)
    if setup.cluster is not None:       # the same scoring on Ray actors (core/search/cluster.py)
        from ..cluster_units import actor_job

        scorer = setup.cluster.pool(actor_job(setup, space.levels, db, dense_targets_path(setup)), setup.check)
    windows = eval_windows(setup) if preset.eval_every else None
    progress = Progress(events, "search", preset.generations)
    started = time.time()

    def on_generation(state, parent) -> None:
        g = state.generation
        events.metric("fitness", state.parent_fitness, step=g, split="search")
        events.metric("tokens", state.forward_tokens, step=g, split="search", candidate_tokens=state.candidate_tokens)
        events.plan(setup.layer_space(space.levels).bits_map(expand(parent)), generation=g,
                    avg_bits=round(space.avg_bits(parent), 4), fitness=state.parent_fitness)
        progress.done = g - 1
        progress.advance()
        if windows is not None and g % preset.eval_every == 0:
            assembler.assemble(expand(parent))
            ppl = perplexity(setup.model, windows, check=setup.check)
            state.history[-1]["ppl"] = ppl
            events.metric("ppl", ppl, step=g, split="eval")

    def score(genomes, rows):
        return scorer.score([expand(g) for g in genomes], rows, setup.check)

    events.stage("search", "start")
    # where candidates are scored is not part of what the result depends on: a clustered
    # search gives the local one's result, so a run resumes either way
    key_fields = {k: v for k, v in to_dict(spec).items() if k not in ("cluster", "cluster_actors")}
    key = settings_hash({"spec": key_fields, "db": db.meta["key"], "target": setup.target})
    state = run_loop(space, setup.target, preset, spec.seed, score,
                     setup.checkpoint_dir / f"search{setup.tag}.json", key, resume=setup.resume,
                     hooks=Hooks(on_generation=on_generation, check=setup.check,
                                 tokens=lambda: (scorer.forward_tokens, scorer.candidate_tokens)))
    events.stage("search", "end")
    assembler.restore()
    return tuple(state.parent), {
        "generations": state.generation, "fitness": state.parent_fitness,
        "forward_tokens": round(state.forward_tokens), "candidate_tokens": state.candidate_tokens,
        "prefix_saving": round(1 - state.forward_tokens / state.candidate_tokens, 4) if state.candidate_tokens else 0.0,
        "search_seconds": round(state.seconds, 2), "this_session_seconds": round(time.time() - started, 2),
        "dense_target_tokens": int(targets.windows.numel()), "kl_topk": targets.topk,
        "config": config_record(preset, spec.seed), "history": state.history,
        **({"cluster": scorer.summary()} if setup.cluster is not None else {})}


def dense_targets_path(setup) -> Path:
    """checkpoint/dense-<key>.safetensors: the fitness pool and its dense log-probabilities."""
    from ...model import model_fingerprint
    from ..setup import settings_hash

    spec, preset = setup.spec, setup.preset
    key = settings_hash({"model": model_fingerprint(setup.model), "calib": spec.calib, "seed": spec.seed,
                         "pool": preset.pool_windows, "seqlen": preset.fitness_seqlen, "topk": preset.kl_topk or None})
    return setup.checkpoint_dir / f"dense-{key}.safetensors"


def dense_targets_of(setup, runner) -> Any:
    """The dense model's log-probabilities on the fitness pool, cached in checkpoint/."""
    from safetensors.torch import load_file, save_file

    from ... import atomic
    from ...events import Progress
    from ..fitness import DenseTargets, dense_targets
    from ..setup import calibration

    spec, preset, events = setup.spec, setup.preset, setup.events
    path = dense_targets_path(setup)
    if path.is_file():
        t = load_file(str(path))
        return DenseTargets(t["windows"], t.get("logp"), t.get("top_logp"), t.get("top_idx"))
    # the pool is drawn with another seed than the Hessian windows: fitness on fresh text
    windows = calibration(setup, preset.pool_windows, preset.fitness_seqlen, spec.seed + 1)
    events.stage("dense_logits", "start")
    progress = Progress(events, "dense_logits", len(windows))
    targets = dense_targets(runner, windows, preset.kl_topk or None, spec.batch_size, setup.check,
                            on_batch=lambda done, total: progress.advance(done - progress.done))
    events.stage("dense_logits", "end")
    tensors = {k: v.contiguous() for k, v in {"windows": targets.windows, "logp": targets.logp,
                                              "top_logp": targets.top_logp, "top_idx": targets.top_idx}.items()
               if v is not None}
    with atomic.staged_file(path) as tmp:
        save_file(tensors, str(tmp))
    return targets
