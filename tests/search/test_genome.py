"""Budget arithmetic, budget-neutral mutation, the start, and bad targets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsmith.core.errors import BadInput
from bitsmith.core.search.genome import (Exchange, SearchSpace, check_target, exchange_flip, exchanges,
                                         mutate, offspring, start_candidates)

LLAMA_BLOCK = [("q", 64 * 64), ("k", 32 * 64), ("v", 32 * 64), ("o", 64 * 64),
               ("gate", 128 * 64), ("up", 128 * 64), ("down", 64 * 128)]


def llama_space(blocks: int, levels=(2, 3, 4, 5, 6)) -> SearchSpace:
    names, numels = [], []
    for b in range(blocks):
        for role, n in LLAMA_BLOCK:
            names.append(f"layers.{b}.{role}")
            numels.append(n)
    return SearchSpace(tuple(names), tuple(numels), tuple(levels))


def test_groups_are_equal_size_layers():
    space = llama_space(2)
    groups = space.groups()
    assert sorted(len(g) for g in groups) == [4, 4, 6]
    for g in groups:
        assert len({space.numels[i] for i in g}) == 1


def test_budget_arithmetic_hand_checked():
    space = SearchSpace(("a", "b"), (100, 300), (2, 3, 4))
    genome = (2, 0)                                   # a at 4 bits, b at 2
    assert space.total_bits(genome) == 100 * 4 + 300 * 2
    assert space.avg_bits(genome) == pytest.approx(2.5)
    assert space.fits(genome, 2.5) and not space.fits(genome, 2.49)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), blocks=st.integers(1, 4),
       levels=st.sampled_from([(2, 3, 4, 5, 6), (2, 3, 4, 5, 6, 8), (2, 3, 4, 8, 16), (3, 4)]),
       start=st.integers(0, 10), exchange=st.booleans())
def test_mutation_is_budget_neutral_and_changes_the_genome(seed, blocks, levels, start, exchange):
    space = llama_space(blocks, levels)
    rng = random.Random(seed)
    parent = tuple(rng.randrange(len(levels)) for _ in range(space.n_layers)) if start else \
        (0,) * space.n_layers
    groups = space.groups()
    pairs = exchanges(space) if exchange else None
    for _ in range(5):
        child = mutate(parent, groups, space.levels, rng, pairs)
        assert space.total_bits(child) == space.total_bits(parent)
        assert all(0 <= x < len(levels) for x in child)
        # at most 3 flips, each moving a layer by one level
        assert all(abs(a - b) <= 3 for a, b in zip(parent, child))
        if not exchange:   # the reference: the bits inside every size group are unchanged
            for g in groups:
                assert sum(space.levels[child[i]] for i in g) == sum(space.levels[parent[i]] for i in g)
            assert sum(a != b for a, b in zip(parent, child)) <= 6        # 3 flips of 2 layers


def test_exchanges_pair_sizes_that_divide():
    space = llama_space(2)                       # q/o 4096, k/v 2048, MLP 8192 (6 layers)
    by_size = {space.numels[g[0]]: tuple(g) for g in space.groups()}
    found = {(space.numels[p.big[0]], space.numels[p.small[0]], p.ratio) for p in exchanges(space)}
    assert found == {(4096, 4096, 1), (2048, 2048, 1), (8192, 8192, 1),
                     (4096, 2048, 2), (8192, 2048, 4), (8192, 4096, 2)}
    assert all(p.big == by_size[space.numels[p.big[0]]] for p in exchanges(space))
    odd = SearchSpace(("a", "b", "c"), (30, 20, 20), (2, 3))   # 30 / 20 does not divide: no cross pair
    assert [(p.ratio, len(p.small)) for p in exchanges(odd)] == [(1, 2)]


def test_exchange_moves_budget_between_sizes():
    """One q_proj level (4096 weights) against two k/v levels (2048): the trade a
    within-group flip cannot make, exact in bits."""
    space = llama_space(1)
    pair = next(p for p in exchanges(space) if p.ratio == 2 and space.numels[p.small[0]] == 2048
                and space.numels[p.big[0]] == 4096)
    parent = list(space.uniform(3))
    rng = random.Random(1)
    assert exchange_flip(parent, pair, space.levels, rng)
    moved = {space.names[i]: space.levels[g] - 3 for i, g in enumerate(parent) if space.levels[g] != 3}
    assert sorted(moved.values()) in ([-1, 1, 1], [-1, -1, 1])
    assert space.total_bits(tuple(parent)) == space.total_bits(space.uniform(3))
    lowest = [0] * space.n_layers                 # nothing can go down, so nothing can go up
    assert exchange_flip(lowest, Exchange(pair.big, pair.small, 2), (2, 3), rng) is False
    assert lowest == [0] * space.n_layers


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40))
def test_offspring_are_distinct_and_differ_from_the_parent(seed, n):
    space = llama_space(2)
    rng = random.Random(seed)
    parent = space.uniform(3)
    children = offspring(parent, n, space.groups(), space.levels, rng)
    assert len(children) == n
    assert len(set(children)) == n and parent not in children


def test_flip_count_distribution_favours_one():
    """min(randint(1,3), randint(1,3)): P(1)=5/9, P(2)=3/9, P(3)=1/9."""
    space = llama_space(3)
    rng = random.Random(0)
    parent = space.uniform(4)
    counts = {1: 0, 2: 0, 3: 0}
    for _ in range(3000):
        child = mutate(parent, space.groups(), space.levels, rng)
        # from a uniform parent each flip moves two layers off 4 bits (flips can undo each other)
        moved = sum(a != b for a, b in zip(parent, child)) // 2
        if moved in counts:
            counts[moved] += 1
    assert counts[1] / 3000 > 0.5 and counts[3] / 3000 < 0.15 and counts[2] > counts[3]


def test_no_flip_possible_leaves_the_genome():
    space = SearchSpace(("a", "b"), (10, 20), (2, 3))   # every group has one layer
    assert mutate((0, 1), space.groups(), space.levels, random.Random(0)) == (0, 1)
    assert offspring((0, 1), 3, space.groups(), space.levels, random.Random(0), max_tries=5) == []


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), target=st.floats(2.0, 6.0))
def test_fractional_start_meets_the_budget_tightly(seed, target):
    space = llama_space(2)
    starts = start_candidates(space, target, 4, random.Random(seed))
    for genome in starts:
        assert space.fits(genome, target)
        # built down from ceil(target): no layer above it, and one more layer down would be too far
        assert max(space.bits(genome)) <= max(b for b in space.levels if b >= target)
        assert space.avg_bits(genome) > target - max(space.numels) / space.total_params - 1e-9


def test_integer_start_is_uniform():
    space = llama_space(2)
    assert start_candidates(space, 3.0, 8, random.Random(0)) == [space.uniform(3)]


@pytest.mark.parametrize("target", [1.5, 6.5, float("nan")])
def test_bad_targets_are_rejected(target):
    with pytest.raises(BadInput, match="outside the levels 2–6"):
        check_target(llama_space(1), target)
