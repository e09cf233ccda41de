"""The sensitivity baseline's allocator: a multiple-choice knapsack over levels.

Each layer i picks one level l with cost numel_i · bits_l and error e_i(l); the errors are
assumed to add (the assumption EvoPress argues against). Minimise Σ e_i(l_i) subject to
Σ cost ≤ target · Σ numel, by dynamic programming over the bit budget.

Costs are counted in units of `unit` bits·params: the GCD of the layer sizes (divided by the
common denominator of fractional runtime costs, e.g. 16 for Q3_K's 3.4375 bits) when that
keeps the table small (exact), else a coarser unit with costs rounded *up*, so a solution
the DP accepts always fits the true budget. `costs[i][l]` (bits per weight as a runtime
stores layer i at level l; core/search/genome.py) replaces levels[l] when given.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import reduce
from typing import Sequence

import numpy as np

from ..errors import BadInput

MAX_CAPACITY = 200_000    # table width limit: layers × capacity cells of int8 back-pointers


def _unit(numels: Sequence[int], rows: Sequence[Sequence[Fraction]], budget: Fraction) -> Fraction:
    denominator = reduce(math.lcm, (Fraction(c).denominator for row in rows for c in row), 1)
    unit = Fraction(reduce(math.gcd, numels), denominator)
    if budget / unit > MAX_CAPACITY:
        unit = Fraction(math.ceil(budget / MAX_CAPACITY))
    return unit


def knapsack(numels: Sequence[int], levels: Sequence[int], errors: Sequence[Sequence[float]],
             target: float, costs: Sequence[Sequence[Fraction]] | None = None) -> list[int]:
    """Level index per layer minimising the summed error under the average-bits target.

    errors[i][l] is layer i's error at levels[l] (inf = level not allowed); costs[i][l]
    its bits per weight when a runtime's types decide them (default: levels[l]).
    """
    n, m = len(numels), len(levels)
    if any(len(row) != m for row in errors) or len(errors) != n:
        raise ValueError("errors must be [layers][levels]")
    rows = costs if costs is not None else [levels] * n
    budget = Fraction(target).limit_denominator(10**6) * sum(numels)
    unit = _unit(numels, rows, budget)
    capacity = int(budget // unit)
    # cost[i][l] in units, rounded up (exact when unit divides every numel·cost)
    cost = [[math.ceil(numels[i] * Fraction(rows[i][l]) / unit) for l in range(m)] for i in range(n)]
    err = np.asarray(errors, dtype=np.float64)

    # best[c] = least error of the layers so far using exactly c units (inf: unreachable)
    best = np.full(capacity + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((n, capacity + 1), dtype=np.int16)
    for i in range(n):
        new = np.full(capacity + 1, np.inf)
        for l in range(m):
            c = cost[i][l]
            if c > capacity or not np.isfinite(err[i, l]):
                continue
            cand = np.full(capacity + 1, np.inf)
            cand[c:] = best[: capacity + 1 - c] + err[i, l]
            better = cand < new
            new[better] = cand[better]
            choice[i, better] = l
        best = new
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        lowest = sum(n * min(Fraction(c) for c in row) for n, row in zip(numels, rows)) / sum(numels)
        raise BadInput(f"no allocation of levels {list(levels)} fits {target} bits",
                       f"raise --target-bits to at least {float(lowest):.4g}")
    picks = [0] * n
    c = end
    for i in range(n - 1, -1, -1):
        picks[i] = int(choice[i, c])
        c -= cost[i][picks[i]]
    return picks


__all__ = ["knapsack"]
