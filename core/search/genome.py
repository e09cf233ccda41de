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

Exchange mutation (our extension, `mutation="exchange"`): a flip may also move budget
between size groups whose sizes divide exactly — one layer of the larger size one level
up (or down) against `ratio` layers of the smaller size one level down (or up), ratio =
larger numel / smaller numel. The total stays exact. Within-group flips are the ratio-1
case. Why: with grouped-query attention the k/v projections are a size group of their own
(SmolLM2: 576×192 against 576×576 for q/o, 8× smaller than the MLP's), so within-group
flips can give v_proj more bits only by taking them from k_proj. On SmolLM2 at 3 bits,
v_proj at 6 bits everywhere (+0.094 bits) takes WikiText perplexity from 66.0 to 45.9 and
q_proj at 2 bits (−0.094) costs only 66.0 → 71.8 (4 windows, database variants): a trade
the within-group search can never make.

Runtime costs (`SearchSpace.costs`): a runtime that stores each level in a type of its own
counts that type's real size. llama.cpp stores 2/3-bit layers as Q2_K/Q3_K (2.625/3.4375
bits per weight) only when d_in is a multiple of 256, else in 4-bit blocks (4.5), and 5-8
bits as Q8_0 (8.5). So each layer has its own row of costs per level, and the budget is

    Σ numel_i · cost_i(level_i)  ≤  target · Σ numel_i

The mutations then move by cost steps, not level steps: a flip pairs a step down and a step
up of equal cost (a step of cost 0 — 2 → 3 bits where both are stored in 4-bit blocks — is
budget-neutral too and only changes quality).

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
Cost = int | Fraction


class LayerCosts(tuple):
    """[layer][level] costs in bits per weight, passed to the mutations in place of the one
    `levels` row all layers share when the runtime counts bits as the levels say."""


def _row(levels: Sequence[int] | LayerCosts, i: int) -> Sequence[Cost]:
    """Layer i's cost per level."""
    return levels[i] if isinstance(levels, LayerCosts) else levels


@dataclass(frozen=True)
class SearchSpace:
    names: tuple[str, ...]      # layer names, inventory order
    numels: tuple[int, ...]     # d_out * d_in of each layer
    levels: tuple[int, ...]     # bit-widths, ascending (16 = kept unquantized)
    # [layer][level] bits per weight as the runtime stores them (see the module docstring);
    # None: each level costs its bits
    costs: tuple[tuple[Fraction, ...], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.names) != len(self.numels) or not self.names:
            raise ValueError("a search space needs one size per layer, and at least one layer")
        if list(self.levels) != sorted(set(self.levels)) or not self.levels:
            raise ValueError(f"levels must be distinct and ascending, got {self.levels}")
        if self.costs is not None and (len(self.costs) != len(self.names)
                                       or any(len(row) != len(self.levels) for row in self.costs)):
            raise ValueError("costs must be [layers][levels]")

    @classmethod
    def from_layers(cls, layers: Sequence, levels: Sequence[int], cost=None) -> "SearchSpace":
        """From `LayerInfo`s (core/inventory.py); `cost(layer, bits)`: bits per weight as a
        runtime stores that layer at that level (None: the level's bits)."""
        levels = tuple(sorted(set(levels)))
        costs = None if cost is None else tuple(tuple(Fraction(cost(l, b)) for b in levels) for l in layers)
        return cls(tuple(l.name for l in layers), tuple(l.d_out * l.d_in for l in layers), levels, costs)

    @property
    def steps(self) -> Sequence[int] | LayerCosts:
        """What the mutations step by: the levels, or each layer's costs."""
        return LayerCosts(self.costs) if self.costs is not None else self.levels

    def cost(self, i: int, level: int) -> Cost:
        """Bits per weight of layer i at level index `level`."""
        return self.costs[i][level] if self.costs is not None else self.levels[level]

    def avg_bounds(self) -> tuple[float, float]:
        """The least and the most average cost any genome has (all lowest, all highest)."""
        return (self.avg_bits((0,) * self.n_layers), self.avg_bits((len(self.levels) - 1,) * self.n_layers))

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @property
    def total_params(self) -> int:
        return sum(self.numels)

    def bits(self, genome: Genome) -> list[int]:
        return [self.levels[g] for g in genome]

    def total_bits(self, genome: Genome) -> Cost:
        """Σ numel·cost (exact: an int, or a Fraction with runtime costs)."""
        return sum(n * self.cost(i, g) for i, (n, g) in enumerate(zip(self.numels, genome)))

    def avg_bits(self, genome: Genome) -> float:
        return float(self.total_bits(genome) / self.total_params)

    def fits(self, genome: Genome, target: float) -> bool:
        """Σ numel·bits ≤ target·Σ numel, in exact arithmetic (no float round-off)."""
        return self.total_bits(genome) <= Fraction(target).limit_denominator(10**6) * self.total_params

    def uniform(self, bits: int) -> Genome:
        return (self.levels.index(bits),) * self.n_layers

    def bits_map(self, genome: Genome) -> dict[str, int]:
        return dict(zip(self.names, self.bits(genome)))

    def groups(self) -> list[list[int]]:
        """Layer indices grouped by size (q/o, k/v, gate/up/down in a Llama), each in order."""
        by_size: dict[int, list[int]] = {}
        for i, n in enumerate(self.numels):
            by_size.setdefault(n, []).append(i)
        return list(by_size.values())


@dataclass(frozen=True)
class Tying:
    """Units of layers that take one level together: a fused group for vLLM/SGLang
    (core/serve.py `tie_units`), else one layer per unit. The search runs over the units'
    space — each unit one gene, its size the sum of its layers' — and `expand` turns a unit
    genome back into a per-layer one. With one layer per unit both are the same."""

    units: tuple[tuple[int, ...], ...]     # layer indices of each unit, units in inventory order

    def unit_space(self, layers: SearchSpace) -> SearchSpace:
        """A unit's cost at a level is its layers' size-weighted mean cost there."""
        names = tuple("+".join(layers.names[i] for i in unit) for unit in self.units)
        numels = tuple(sum(layers.numels[i] for i in unit) for unit in self.units)
        costs = None
        if layers.costs is not None:
            costs = tuple(tuple(Fraction(sum(layers.numels[i] * layers.costs[i][l] for i in unit), size)
                                for l in range(len(layers.levels))) for unit, size in zip(self.units, numels))
        return SearchSpace(names, numels, layers.levels, costs)

    def expand(self, genome: Genome) -> Genome:
        """Unit genome -> layer genome (every layer of a unit at the unit's level)."""
        layer_genome = [0] * sum(len(unit) for unit in self.units)
        for unit, level in zip(self.units, genome):
            for i in unit:
                layer_genome[i] = level
        return tuple(layer_genome)

    def unit_errors(self, per_layer: Sequence[Sequence[float]]) -> list[list[float]]:
        """[unit][level] errors from [layer][level] ones: a unit's error is its layers' sum."""
        return [[sum(per_layer[i][l] for i in unit) for l in range(len(per_layer[unit[0]]))] for unit in self.units]

    def unit_values(self, per_layer: Sequence[float], combine=sum) -> list[float]:
        """One value per unit from one per layer (summed errors, the largest spike score)."""
        return [combine(per_layer[i] for i in unit) for unit in self.units]


def check_target(space: SearchSpace, target: float) -> None:
    """A target outside [lowest level, highest level] (their costs, with runtime costs)
    cannot be met by any genome."""
    low, high = space.levels[0], space.levels[-1]
    if space.costs is not None:
        low, high = space.avg_bounds()
    if not math.isfinite(target) or not low - 1e-9 <= target <= high + 1e-9:
        raise BadInput(f"target {target} bits is outside the levels {low:g}–{high:g}",
                       f"choose --target-bits between {low:g} and {high:g}, or change --levels")


# --- mutation ----------------------------------------------------------------------------

def _step(row: Sequence[Cost], index: int, direction: int) -> Cost | None:
    """Bits gained (+) or lost (−) by moving one level in `direction`; None at the edge."""
    j = index + direction
    if not 0 <= j < len(row):
        return None
    return row[j] - row[index]


def flip(genome: list[int], group: Sequence[int], levels: Sequence[int] | LayerCosts, rng: random.Random) -> bool:
    """One budget-neutral flip inside `group`, in place; False when none is possible."""
    down = [i for i in group if _step(_row(levels, i), genome[i], -1) is not None]
    rng.shuffle(down)
    for d in down:
        lost = -_step(_row(levels, d), genome[d], -1)  # type: ignore[operator]
        up = [i for i in group if i != d and _step(_row(levels, i), genome[i], +1) == lost]
        if up:
            u = rng.choice(up)
            genome[d] -= 1
            genome[u] += 1
            return True
    return False


@dataclass(frozen=True)
class Exchange:
    """A pair of size groups a flip may trade budget between: one layer of `big` moves one
    level against `ratio` layers of `small` moving one level the other way
    (numel(big) = ratio · numel(small); `big is small` with ratio 1 is a within-group flip)."""

    big: tuple[int, ...]
    small: tuple[int, ...]
    ratio: int

    @property
    def weight(self) -> int:
        """How often it is drawn: ∝ the layers it involves (within-group: ∝ group size)."""
        return len(self.big) if self.big == self.small else len(self.big) + len(self.small)


def exchanges(space: SearchSpace) -> list[Exchange]:
    """Every within-group pair, and every pair of groups whose sizes divide exactly."""
    groups = [tuple(g) for g in space.groups()]
    size = {g: space.numels[g[0]] for g in groups}
    pairs = [Exchange(g, g, 1) for g in groups if len(g) > 1]
    for big in groups:
        for small in groups:
            if size[big] > size[small] and size[big] % size[small] == 0 and size[big] // size[small] <= len(small):
                pairs.append(Exchange(big, small, size[big] // size[small]))
    return pairs


def exchange_flip(genome: list[int], pair: Exchange, levels: Sequence[int] | LayerCosts, rng: random.Random) -> bool:
    """One budget-neutral exchange, in place: a `big` layer one level in a random direction,
    `ratio` distinct `small` layers one level the other way, all steps of equal size.
    False when none is possible."""
    if pair.big == pair.small:
        return flip(genome, pair.big, levels, rng)
    for direction in rng.sample((+1, -1), 2):
        movers = [i for i in pair.big if _step(_row(levels, i), genome[i], direction) is not None]
        rng.shuffle(movers)
        for b in movers:
            moved = _step(_row(levels, b), genome[b], direction)
            partners = [i for i in pair.small if _step(_row(levels, i), genome[i], -direction) == -moved]
            if len(partners) >= pair.ratio:
                genome[b] += direction
                for i in rng.sample(partners, pair.ratio):
                    genome[i] -= direction
                return True
    return False


def mutate(parent: Genome, groups: Sequence[Sequence[int]], levels: Sequence[int] | LayerCosts,
           rng: random.Random, pairs: Sequence[Exchange] | None = None) -> Genome:
    """The parent with min(randint(1,3), randint(1,3)) flips, each in a group drawn ∝ its
    size — or, given `pairs` (exchange mutation), each an exchange drawn ∝ its weight."""
    if pairs is None:       # the reference: within-group flips only
        pairs = [Exchange(tuple(g), tuple(g), 1) for g in groups if len(g) > 1]
    child = list(parent)
    flips = min(rng.randint(1, 3), rng.randint(1, 3))
    for _ in range(flips):
        options = list(pairs)
        while options:
            pair = rng.choices(options, weights=[p.weight for p in options])[0]
            if exchange_flip(child, pair, levels, rng):
                break
            options.remove(pair)   # nothing can move here: try another pair
    return tuple(child)


def offspring(parent: Genome, n: int, groups: Sequence[Sequence[int]], levels: Sequence[int] | LayerCosts,
              rng: random.Random, max_tries: int = 100, pairs: Sequence[Exchange] | None = None) -> list[Genome]:
    """`n` distinct children, none equal to the parent (fewer only when the neighbourhood
    is exhausted after n·max_tries draws). `pairs`: exchange mutation (see `exchanges`)."""
    children: list[Genome] = []
    seen = {parent}
    tries = 0
    while len(children) < n and tries < n * max_tries:
        tries += 1
        child = mutate(parent, groups, levels, rng, pairs)
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
    if space.costs is None and float(target).is_integer() and int(target) in space.levels:
        return [space.uniform(int(target))]
    # the lowest uniform genome at or above the budget (with runtime costs, by its cost)
    top = next((space.uniform(b) for b in space.levels if space.avg_bits(space.uniform(b)) >= target - 1e-12),
               space.uniform(space.levels[-1]))
    if space.fits(top, target):
        return [top]
    return [lower_to_budget(space, top, target, rng) for _ in range(max(1, n))]


__all__ = ["Genome", "SearchSpace", "LayerCosts", "Tying", "check_target", "flip", "mutate", "offspring", "Exchange", "exchanges",
           "exchange_flip", "lower_to_budget", "start_candidates"]
