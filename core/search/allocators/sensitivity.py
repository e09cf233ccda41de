"""`sensitivity`: the DP/knapsack baseline. Each layer's relative output error at each level,
e_l(b) = tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) (from the variant database), is assumed to add up:

    min Σ_u e_u(b_u)   s.t.   Σ_u n_u·b_u ≤ T·Σ_u n_u

one choice per unit (a fused group's error at a level is the sum of its layers' errors there).
"""

from __future__ import annotations

import time

from ..registry import Allocation, register_allocator


@register_allocator("sensitivity", "knapsack of Hessian-weighted errors", rank=2)
def sensitivity(setup, database) -> Allocation:
    from ..genome import check_target
    from ..knapsack import knapsack

    space = setup.unit_space(setup.spec.levels)
    check_target(space, setup.target)
    db = database()
    started = time.time()
    errors = setup.tying.unit_errors([[db.errors(layer.name)[bits] for bits in space.levels]
                                      for layer in setup.layers])
    genome = tuple(knapsack(space.numels, space.levels, errors, setup.target, space.costs))
    layer_bits = setup.layer_space(space.levels).bits_map(setup.tying.expand(genome))
    return Allocation(space, genome, db, {"sensitivity": {
        "seconds": round(time.time() - started, 3),
        "summed_error": sum(db.errors(n)[b] for n, b in layer_bits.items())}})
