"""`spike`: activation-spike-aware mixed precision (Maisonnave et al., 2025, with QFeM's score).

Each layer's score is the mean over calibration windows of max_t |x_t| / median_t |x_t| of
its inputs (core/search/spike.py); a unit scores its spikiest layer. Units above the
threshold (or the top k) keep `spike_keep_bits`, the rest share what the budget leaves:

    Σ_kept n_u·b_keep + Σ_rest n_u·b_u ≤ T·Σ n_u

It needs no variant database; one given (--database) measures the plan's perplexity.
"""

from __future__ import annotations

import json

from ..registry import Allocation, register_allocator


@register_allocator("spike", "keep activation-spike layers", rank=1, database=False, label="spike-aware",
                    uses=("spike_threshold", "spike_top_k", "spike_keep_bits"))
def spike(setup, database) -> Allocation:
    from ... import atomic
    from ...model import model_fingerprint
    from ..genome import check_target
    from ..setup import scored_on_calibration, settings_hash
    from ..spike import choose_kept, spike_allocation, spike_scores

    spec = setup.spec
    check_target(setup.layer_space([b for b in spec.levels if b != 16] or [16]), setup.target)
    db = database() if spec.database else None
    keep = spec.spike_keep_bits
    names = [layer.name for layer in setup.layers]
    space = setup.unit_space(sorted(set(spec.levels) | {keep}))
    key = settings_hash({"model": model_fingerprint(setup.model), "calib": spec.calib,
                         "windows": setup.preset.windows, "seqlen": spec.seqlen, "seed": spec.seed})
    cached = db.folder / f"spike-scores-{key}.json" if db is not None else None   # kept for later searches
    if cached is not None and cached.is_file():
        scores = json.loads(cached.read_text())
        setup.events.log(f"spike scores from {cached}")
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
        setup.events.layer(name, spike_score=round(scores[name], 3), kept=name in kept_layers)
    if alloc.dropped:
        setup.events.log(f"the budget cannot keep {len(alloc.dropped)} spiky layer(s) at {keep} bits: "
                         f"{', '.join(alloc.dropped)}")
    if db is not None and keep != 16 and keep not in db.levels:
        setup.events.log(f"the database has no {keep}-bit variants: the perplexity puts "
                         f"round-to-nearest {keep}-bit weights in the kept layers")
    ranked = sorted(scores, key=lambda n: -scores[n])
    return Allocation(space, alloc.genome, db, {"spike": {
        "spike_scores": scores, "kept": alloc.kept, "dropped": alloc.dropped, "rest_bits": alloc.rest_bits,
        "top_scores": {n: scores[n] for n in ranked[:10]}}})
