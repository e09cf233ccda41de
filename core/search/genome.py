"""The search space of a bit allocation: one level per layer, and its budget arithmetic.

A genome is a tuple of level *indices*, one per layer (index into `levels`, e.g.
levels (2, 3, 4, 5, 6) and index 1 = 3 bits). The budget is on average code bits,
weighted by layer size:

    Σ numel_i · bits_i  ≤  target · Σ numel_i

Budget-neutral mutation (EvoPress): layers of equal size form a group; one flip picks a
group (∝ its layer count), one layer that can go down a level and another that can go up,
and moves them −1/+1. With equally spaced levels (2..6) that keeps the total exactly; with
uneven steps (…, 6, 8, 16) the layer going up is chosen among those whose step up is as
large as the other's step down, so the total stays exact either way.

Everything here is pure (random choices come from a `random.Random` passed in).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from ..errors import BadInput

Genome = tuple[int, ...]


@dataclass(frozen=True)
class SearchSpace:
    names: tuple[str, ...]      # layer names, inventory order
    numels: tuple[int, ...]     # d_out * d_in of each layer
    levels: tuple[int, ...]     # bit-widths, ascending (16 = kept unquantized)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.numels) or not self.names:
            raise ValueError("a search space needs one size per layer, and at least one layer")
        if list(self.levels) != sorted(set(self.levels)) or not self.levels:
            raise ValueError(f"levels must be distinct and ascending, got {self.levels}")

    @classmethod
    def from_layers(cls, layers: Sequence, levels: Sequence[int]) -> "SearchSpace":
        """From `LayerInfo`s (core/inventory.py)."""
        return cls(tuple(l.name for l in layers), tuple(l.d_out * l.d_in for l in layers),
                   tuple(sorted(set(levels))))

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @property
    def total_params(self) -> int:
        return sum(self.numels)

    def bits(self, genome: Genome) -> list[int]:
        return [self.levels[g] for g in genome]

    def total_bits(self, genome: Genome) -> int:
        return sum(n * self.levels[g] for n, g in zip(self.numels, genome))

    def avg_bits(self, genome: Genome) -> float:
        return self.total_bits(genome) / self.total_params

    def fits(self, genome: Genome, target: float) -> bool:
        """Σ numel·bits ≤ target·Σ numel, in exact arithmetic (no float round-off)."""
        return self.total_bits(genome) <= Fraction(target).limit_denominator(10**6) * self.total_params

    def uniform(self, bits: int) -> Genome:
        return (self.levels.index(bits),) * self.n_layers

    def bits_map(self, genome: Genome) -> dict[str, int]:
        return dict(zip(self.names, self.bits(genome)))

    def genome_of(self, bits_map: dict[str, int]) -> Genome:
        return tuple(self.levels.index(bits_map[name]) for name in self.names)

    def groups(self) -> list[list[int]]:
        """Layer indices grouped by size (q/o, k/v, gate/up/down in a Llama), each in order."""
        by_size: dict[int, list[int]] = {}
        for i, n in enumerate(self.numels):
            by_size.setdefault(n, []).append(i)
        return list(by_size.values())


def check_target(space: SearchSpace, target: float) -> None:
    """A target outside [lowest level, highest level] cannot be met by any genome."""
    low, high = space.levels[0], space.levels[-1]
    if not math.isfinite(target) or not low <= target <= high:
        raise BadInput(f"target {target} bits is outside the levels {low}–{high}",
                       f"choose --target-bits between {low} and {high}, or change --levels")


# --- mutation ----------------------------------------------------------------------------

def _step(levels: Sequence[int], index: int, direction: int) -> int | None:
    """Bits gained (+) or lost (−) by moving one level in `direction`; None at the edge."""
    j = index + direction
    if not 0 <= j < len(levels):
        return None
    return levels[j] - levels[index]


def flip(genome: list[int], group: Sequence[int], levels: Sequence[int], rng: random.Random) -> bool:
    """One budget-neutral flip inside `group`, in place; False when none is possible."""
    down = [i for i in group if _step(levels, genome[i], -1) is not None]
    rng.shuffle(down)
    for d in down:
        lost = -_step(levels, genome[d], -1)  # type: ignore[operator]
        up = [i for i in group if i != d and _step(levels, genome[i], +1) == lost]
        if up:
            u = rng.choice(up)
            genome[d] -= 1
            genome[u] += 1
            return True
    return False


def mutate(parent: Genome, groups: Sequence[Sequence[int]], levels: Sequence[int],
           rng: random.Random) -> Genome:
    """The parent with min(randint(1,3), randint(1,3)) flips, each in a group drawn ∝ its size."""
    child = list(parent)
    flips = min(rng.randint(1, 3), rng.randint(1, 3))
    movable = [g for g in groups if len(g) > 1]
    for _ in range(flips):
        options = list(movable)
        while options:
            group = rng.choices(options, weights=[len(g) for g in options])[0]
            if flip(child, group, levels, rng):
                break
            options.remove(group)   # nothing can move here: try another group
    return tuple(child)


def offspring(parent: Genome, n: int, groups: Sequence[Sequence[int]], levels: Sequence[int],
              rng: random.Random, max_tries: int = 100) -> list[Genome]:
    """`n` distinct children, none equal to the parent (fewer only when the neighbourhood
    is exhausted after n·max_tries draws)."""
    children: list[Genome] = []
    seen = {parent}
    tries = 0
    while len(children) < n and tries < n * max_tries:
        tries += 1
        child = mutate(parent, groups, levels, rng)
        if child not in seen:
            seen.add(child)
            children.append(child)
    return children


# --- the start ---------------------------------------------------------------------------

def lower_to_budget(space: SearchSpace, start: Genome, target: float, rng: random.Random) -> Genome:
    """From `start`, lower random layers one level at a time until the budget is met."""
    genome = list(start)
    while not space.fits(tuple(genome), target):
        down = [i for i, g in enumerate(genome) if g > 0]
        if not down:
            raise BadInput(f"target {target} bits cannot be met with levels {space.levels}",
                           "raise --target-bits or add a lower level")
        genome[rng.choice(down)] -= 1
    return tuple(genome)


def start_candidates(space: SearchSpace, target: float, n: int, rng: random.Random) -> list[Genome]:
    """The start: every layer at the target when it is a level; otherwise `n` random
    genomes built down from the next level above the target to the budget."""
    check_target(space, target)
    if float(target).is_integer() and int(target) in space.levels:
        return [space.uniform(int(target))]
    above = min(b for b in space.levels if b >= target)
    top = space.uniform(above)
    return [lower_to_budget(space, top, target, rng) for _ in range(max(1, n))]


__all__ = ["Genome", "SearchSpace", "check_target", "flip", "mutate", "offspring",
           "lower_to_budget", "start_candidates"]
