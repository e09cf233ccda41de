"""EvoPress's settings, defined once: a `Preset` holds them, a preset is a named one, and a
search job's non-null fields of the same names override it (`resolved_preset`); the loop
(core/search/evopress.py) runs with the result.

`reference` is EvoPress's published setting (150 generations, 128 offspring, survivors
16 → 4 → 1 on 2048 → 16384 → 131072 tokens, full KL, flips inside equal-size groups).
`cpu` is sized so that database and search on the default model (SmolLM2-135M, 210
layers) finish in under 15 minutes on two CPU cores: a 16-window Hessian pass, short fitness
windows, top-1024 sparse KL (the vocabulary is 49k: full log-probabilities of the pool would
take 1.6 GB).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import setting
from ..errors import BadInput

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Preset:
    generations: int = setting(MISSING, "EvoPress generations")
    offspring: int = setting(MISSING, "offspring per generation")
    survivors: list[int] = setting(MISSING, "survivors per selection stage, e.g. 16,4,1 (the last is 1)")
    tokens: list[int] = setting(MISSING, "tokens per stage, e.g. 2048,16384,131072")
    fitness_seqlen: int = setting(MISSING, "tokens per fitness window")
    pool_windows: int = setting(MISSING, "calibration windows whose dense logits are cached (the fitness pool)")
    start_candidates: int = setting(MISSING, "fractional targets: random starts compared")
    kl_topk: int = setting(MISSING, "top-k sparse KL (0: full KL)")
    windows: int = setting(MISSING, "calibration windows for Hessians / spike scores")
    eval_every: int = setting(MISSING, "perplexity every k generations (0: never)")
    eval_windows: int = setting(MISSING, "windows of that perplexity, and of the chosen plan's")
    mutation: str = setting("within", "within: budget-neutral flips inside equal-size groups (the reference); "
                            "exchange: also between sizes that divide, e.g. one q_proj level against three k/v "
                            "levels (core/search/genome.py)")
    notes: list[str] = field(default_factory=list, metadata={"cli": False})

    def __post_init__(self) -> None:
        check_stages(self.survivors, self.tokens)


def check_stages(survivors: list[int] | None, tokens: list[int] | None) -> None:
    """One token count per selection stage."""
    if survivors is not None and tokens is not None and len(survivors) != len(tokens):
        raise BadInput(f"{len(survivors)} survivor counts but {len(tokens)} token counts",
                       "give one token count per selection stage")


PRESETS: dict[str, Preset] = {
    "reference": Preset(generations=150, offspring=128, survivors=[16, 4, 1], tokens=[2048, 16384, 131072],
                        fitness_seqlen=2048, pool_windows=64, start_candidates=16, kl_topk=0, windows=128,
                        eval_every=10, eval_windows=16),
    # ~5k forward tokens a generation (8 × 256 + 3 × 1024, less the shared prefixes): about
    # 10 s a generation on two idle cores, so 56 generations plus the database (~190 s) finish
    # in about 14 minutes. Exchange mutation: see core/search/genome.py (on SmolLM2 at 3.0
    # bits it moves budget from q/o and the MLP to v_proj and k_proj).
    "cpu": Preset(generations=56, offspring=8, survivors=[2, 1], tokens=[256, 1024],
                  fitness_seqlen=128, pool_windows=64, start_candidates=4, kl_topk=1024, windows=16,
                  eval_every=0, eval_windows=4, mutation="exchange"),
}


def preset_fields() -> list[str]:
    """The settings a search job may override (every Preset field but its notes)."""
    return [f.name for f in dataclasses.fields(Preset) if f.metadata.get("cli", True) is not False]


def preset_help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(Preset) if f.name == name)


def resolved_preset(spec: Any) -> Preset:
    """The spec's preset, with every non-null spec field of a preset's name put in its place."""
    overrides = {name: getattr(spec, name) for name in preset_fields() if getattr(spec, name, None) is not None}
    return dataclasses.replace(PRESETS[spec.preset], **overrides)


__all__ = ["Preset", "PRESETS", "check_stages", "preset_fields", "preset_help", "resolved_preset"]
