"""`fisher`: ModelOpt's `auto_quantize` score. For layer l at level b,

    score_l(b) = ½ Σ (g ⊙ (Y − Y_b))²,   g = ∂L/∂Y on the calibration windows

(core/search/fisher.py), summed per unit, then the knapsack under the budget. The scores
depend on the model, the windows and the variants, not on the target: a sweep (or a later
search on the same database) computes them once and reads them back.
"""

from __future__ import annotations

import json
import time

from ..registry import Allocation, register_allocator


@register_allocator("fisher", "knapsack of gradient-weighted output errors (fast)", rank=3)
def fisher(setup, database) -> Allocation:
    from ... import atomic
    from ...model import model_fingerprint
    from ..fisher import fisher_scores
    from ..genome import check_target
    from ..knapsack import knapsack
    from ..setup import scored_on_calibration, settings_hash

    spec = setup.spec
    space = setup.unit_space(spec.levels)
    check_target(space, setup.target)
    db = database()
    started = time.time()
    key = settings_hash({"model": model_fingerprint(setup.model), "calib": spec.calib,
                         "windows": setup.preset.windows, "seqlen": spec.seqlen, "seed": spec.seed,
                         "levels": list(space.levels), "db": db.meta["key"]})
    cached = db.folder / f"fisher-scores-{key}.json"
    if cached.is_file():
        scores = {name: {int(b): v for b, v in per.items()} for name, per in json.loads(cached.read_text()).items()}
        setup.events.log(f"fisher scores from {cached}")
    else:
        scores = scored_on_calibration(setup, "fisher_scores", lambda windows, check, on_batch: fisher_scores(
            setup.model, setup.layers, windows, db.weight, space.levels, spec.batch_size, check, on_batch))
        atomic.write_json(cached, scores)
    errors = setup.tying.unit_errors([[scores[layer.name][bits] for bits in space.levels] for layer in setup.layers])
    genome = tuple(knapsack(space.numels, space.levels, errors, setup.target, space.costs))
    top = max(setup.layers, key=lambda layer: scores[layer.name][space.levels[0]])
    return Allocation(space, genome, db, {"fisher": {
        "seconds": round(time.time() - started, 2), "scores_file": str(cached),
        "summed_score": sum(errors[u][l] for u, l in enumerate(genome)),
        "most_sensitive_at_lowest_level": top.name}})
