"""Multi-stage elitist selection (EvoPress), independent of what a candidate is.

One generation: λ offspring are scored on a small fresh token sample; the best
`survivors[0]` go on to a larger fresh sample, and so on. The parent joins only the last
stage, so it is replaced only by a child that beats it on the same (largest) sample.
Lower fitness is better (KL to the dense model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

C = TypeVar("C")

# score(candidates, stage index) -> one fitness per candidate, all on the same fresh sample
ScoreFn = Callable[[list[C], int], list[float]]


@dataclass
class StageResult(Generic[C]):
    candidates: list[C]
    fitness: list[float]


@dataclass
class Selection(Generic[C]):
    best: C
    fitness: float                      # the winner's fitness on the last stage's sample
    parent_fitness: float               # the parent's fitness on that same sample
    stages: list[StageResult] = field(default_factory=list)


def select(parent: C, offspring: Sequence[C], survivors: Sequence[int], score: ScoreFn) -> Selection[C]:
    """Run the stages; returns the best of the last stage (the parent when no child beats it)."""
    if not survivors or survivors[-1] < 1:
        raise ValueError(f"survivors must end with at least 1, got {list(survivors)}")
    candidates = list(offspring)
    stages: list[StageResult] = []
    for stage, keep in enumerate(survivors):
        last = stage == len(survivors) - 1
        if last:
            candidates = candidates + [parent]
        fitness = score(candidates, stage)
        stages.append(StageResult(list(candidates), list(fitness)))
        # stable: on a tie the earlier candidate wins, so a child ties the parent and moves on
        order = sorted(range(len(candidates)), key=lambda i: fitness[i])
        kept = order[: max(keep, 1)] if not last else order[:1]
        if last:
            parent_fitness = fitness[len(candidates) - 1]
            return Selection(candidates[kept[0]], fitness[kept[0]], parent_fitness, stages)
        candidates = [candidates[i] for i in kept]
    raise AssertionError("unreachable")


__all__ = ["select", "Selection", "StageResult", "ScoreFn"]
