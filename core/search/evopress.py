"""EvoPress (Sieberling et al., 2024): per-layer levels by an elitist evolutionary search.

    parent ← start (uniform at an integer target; else the best of several random genomes
             built down from the level above the target, scored on a small sample)
    each generation:
        λ offspring ← distinct budget-neutral mutations of the parent
        stages: score on a fresh sample of the pool, keep the best survivors[k];
                the parent joins the last stage only
        parent ← the winner

All randomness comes from one `random.Random`, whose state is checkpointed with the parent
after every generation (atomically), so a killed search resumed from its checkpoint
continues to the very result an uninterrupted run reaches.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .. import atomic
from .genome import Genome, SearchSpace, exchanges, offspring, start_candidates
from .presets import Preset
from .selection import select

CHECKPOINT_VERSION = 1


@dataclass
class SearchState:
    generation: int
    parent: list[int]
    parent_fitness: float | None
    rng: list                               # random.Random state, JSON-safe
    forward_tokens: float = 0.0
    candidate_tokens: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    version: int = CHECKPOINT_VERSION
    key: str = ""                           # what the checkpoint belongs to (settings hash)


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def save_state(path: Path, state: SearchState) -> None:
    atomic.write_json(path, asdict(state))


def load_state(path: Path, key: str) -> SearchState | None:
    """The checkpoint at `path` when it belongs to this search (same key), else None."""
    import json

    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("version") != CHECKPOINT_VERSION or doc.get("key") != key:
        return None
    return SearchState(**doc)


def sample_rows(rng: random.Random, tokens: int, cfg: Preset) -> list[int]:
    """A fresh sample: ⌈tokens / fitness_seqlen⌉ distinct pool windows (at most the pool)."""
    n = min(cfg.pool_windows, max(1, -(-tokens // cfg.fitness_seqlen)))
    return sorted(rng.sample(range(cfg.pool_windows), n))


def config_record(cfg: Preset, seed: int) -> dict:
    """The loop's settings as a search report records them."""
    return {"generations": cfg.generations, "offspring": cfg.offspring, "survivors": list(cfg.survivors),
            "tokens": list(cfg.tokens), "seqlen": cfg.fitness_seqlen, "pool_windows": cfg.pool_windows,
            "start_candidates": cfg.start_candidates, "mutation": cfg.mutation, "seed": seed}


# Scoring: (genomes, pool window rows) -> mean KL per token of each genome.
Score = Callable[[Sequence[Genome], list[int]], list[float]]


@dataclass
class Hooks:
    """What the loop reports to, and how it can be stopped (all optional)."""

    on_generation: Callable[[SearchState, Genome], None] | None = None
    check: Callable[[], None] | None = None
    tokens: Callable[[], tuple[float, int]] | None = None     # (forward, candidate) tokens so far


def evopress(space: SearchSpace, target: float, cfg: Preset, seed: int, score: Score, checkpoint: Path,
             key: str, resume: bool = False, hooks: Hooks | None = None) -> SearchState:
    """Run (or continue) the search with the settings `cfg` (core/search/presets.py) and the
    random seed `seed`; returns the final state (its `parent` is the result)."""
    hooks = hooks or Hooks()
    rng = random.Random(seed)
    state = load_state(checkpoint, key) if resume else None
    token_base = (state.forward_tokens, state.candidate_tokens) if state else (0.0, 0)
    started = time.time() - (state.seconds if state else 0.0)

    def spent() -> tuple[float, int]:
        f, c = hooks.tokens() if hooks.tokens else (0.0, 0)
        return token_base[0] + f, token_base[1] + c

    if state is None:
        starts = start_candidates(space, target, cfg.start_candidates, rng)
        parent, fitness = starts[0], None
        if len(starts) > 1:                       # fractional target: the best start wins
            fits = score(starts, sample_rows(rng, cfg.tokens[0], cfg))
            best = min(range(len(starts)), key=lambda i: fits[i])
            parent, fitness = starts[best], fits[best]
        f, c = spent()
        state = SearchState(0, list(parent), fitness, _rng_state(rng), f, c, time.time() - started, key=key)
        save_state(checkpoint, state)
    else:
        _set_rng_state(rng, state.rng)

    groups = space.groups()
    pairs = exchanges(space) if cfg.mutation == "exchange" else None
    while state.generation < cfg.generations:
        if hooks.check is not None:
            hooks.check()
        parent = tuple(state.parent)
        children = offspring(parent, cfg.offspring, groups, space.steps, rng, pairs=pairs)

        def stage_score(cands: list[Genome], stage: int) -> list[float]:
            return score(cands, sample_rows(rng, cfg.tokens[stage], cfg))

        result = select(parent, children, cfg.survivors, stage_score) if children else None
        if result is not None:
            state.parent, state.parent_fitness = list(result.best), result.fitness
        state.generation += 1
        state.rng = _rng_state(rng)
        state.forward_tokens, state.candidate_tokens = spent()
        state.seconds = time.time() - started
        state.history.append({"generation": state.generation, "fitness": state.parent_fitness,
                              "replaced": result is not None and tuple(result.best) != parent,
                              "forward_tokens": state.forward_tokens,
                              "candidate_tokens": state.candidate_tokens,
                              "avg_bits": space.avg_bits(tuple(state.parent))})
        save_state(checkpoint, state)
        if hooks.on_generation is not None:
            hooks.on_generation(state, tuple(state.parent))
    return state


__all__ = ["SearchState", "evopress", "config_record", "save_state", "load_state", "sample_rows", "Hooks"]
