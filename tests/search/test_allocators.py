"""Selection keeps the best; the knapsack on a hand-checked case; spike allocation."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsmith.core.errors import BadInput
from bitsmith.core.search.genome import SearchSpace
from bitsmith.core.search.knapsack import knapsack
from bitsmith.core.search.selection import select
from bitsmith.core.search.spike import choose_kept, spike_allocation


# --- selection ---------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=30),
       parent=st.floats(0, 100, allow_nan=False),
       survivors=st.sampled_from([[1], [4, 1], [16, 4, 1], [2, 2, 1]]))
def test_selection_with_exact_fitness_returns_the_best(values, parent, survivors):
    offspring = list(range(len(values)))                # candidate = index; parent = -1
    fitness = {i: v for i, v in enumerate(values)} | {-1: parent}
    seen_stages = []

    def score(cands, stage):
        seen_stages.append((stage, list(cands)))
        return [fitness[c] for c in cands]

    result = select(-1, offspring, survivors, score)
    assert result.fitness == min(values + [parent])
    assert fitness[result.best] == result.fitness
    # the parent appears only in the last stage; stage k scores at most survivors[k-1]
    for stage, cands in seen_stages:
        assert (-1 in cands) == (stage == len(survivors) - 1)
        if stage > 0:
            assert len(cands) <= survivors[stage - 1] + (stage == len(survivors) - 1)


def test_selection_is_elitist_against_noise_in_early_stages():
    """A child that looks good on the small sample but loses on the last one does not
    replace the parent."""
    fit = {"parent": [None, None, 1.0], "lucky": [0.1, 0.1, 2.0], "plain": [0.5, 0.5, 3.0]}
    result = select("parent", ["plain", "lucky"], [2, 2, 1],
                    lambda cands, stage: [fit[c][stage] for c in cands])
    assert result.best == "parent" and result.parent_fitness == 1.0


# --- knapsack ----------------------------------------------------------------------------

def test_knapsack_hand_checked():
    # three layers, sizes 1, 1, 2; levels 2/3/4 bits; budget 3 bits avg = 12 bit-params.
    numels, levels = [1, 1, 2], [2, 3, 4]
    errors = [[8.0, 4.0, 1.0],     # layer a: very sensitive
              [1.0, 0.5, 0.4],     # layer b: barely
              [4.0, 2.0, 0.0]]     # layer c: twice the size
    # by hand: a4 b2 c3 costs 4+2+6=12, error 1+1+2=4; uniform 3 costs 12, error 6.5;
    # a4 b3 c... c2 costs 4+3+4=11, error 1+0.5+4=5.5; a3 b2 c4 = 3+2+8=13 (over).
    assert knapsack(numels, levels, errors, 3.0) == [2, 0, 1]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), target=st.sampled_from([2.0, 2.5, 3.0, 3.7, 4.0]))
def test_knapsack_matches_brute_force(seed, target):
    rng = random.Random(seed)
    numels = [rng.choice([1, 2, 3, 4]) for _ in range(5)]
    levels = [2, 3, 4]
    errors = [sorted((rng.random() for _ in levels), reverse=True) for _ in numels]
    picks = knapsack(numels, levels, errors, target)
    budget = target * sum(numels)
    cost = lambda p: sum(n * levels[l] for n, l in zip(numels, p))     # noqa: E731
    err = lambda p: sum(errors[i][l] for i, l in enumerate(p))         # noqa: E731
    assert cost(picks) <= budget + 1e-9
    best = min(err(p) for p in itertools.product(range(3), repeat=5) if cost(p) <= budget + 1e-9)
    assert err(picks) == pytest.approx(best)


def test_knapsack_infeasible_target():
    with pytest.raises(BadInput, match="fits 1.5 bits"):
        knapsack([1, 1], [2, 3], [[1, 0], [1, 0]], 1.5)


# --- spike allocation --------------------------------------------------------------------

def test_choose_kept_threshold_and_top_k():
    scores = {"a": 4000.0, "b": 12.0, "c": 140.0, "d": 9.0}
    assert choose_kept(scores, 50.0, None) == ["a", "c"]
    assert choose_kept(scores, None, 1) == ["a"]
    assert choose_kept(scores, 1e9, None) == []


def test_spike_allocation_counts_kept_layers_in_the_budget():
    names = tuple(f"l{i}" for i in range(8))
    space = SearchSpace(names, (10,) * 8, (2, 3, 4, 16))
    scores = {n: float(i) for i, n in enumerate(names)}       # l7 most spiky
    alloc = spike_allocation(space, scores, 4.0, ["l7"], keep_bits=16)
    bits = space.bits(alloc.genome)
    assert bits[7] == 16
    assert space.fits(alloc.genome, 4.0)
    # per 10 params: 16 + 7·b ≤ 32 → the rest at 2 (16 + 14 = 30); the 2 bits left raise
    # the two most spiky of the rest (l6, l5) to 3
    assert bits[:7] == [2, 2, 2, 2, 2, 3, 3] and alloc.rest_bits == 2


def test_spike_allocation_drops_kept_layers_the_budget_cannot_hold():
    space = SearchSpace(("a", "b", "c"), (10, 10, 10), (2, 3, 16))
    alloc = spike_allocation(space, {"a": 9.0, "b": 8.0, "c": 1.0}, 3.0, ["a", "b"], keep_bits=16)
    assert alloc.kept == [] and alloc.dropped == ["a", "b"]
    assert space.bits(alloc.genome) == [3, 3, 3]
