"""Search presets: the reference defaults, and a size that finishes on a 2-core CPU.

`reference` is EvoPress's published setting (150 generations, 128 offspring, survivors
16 → 4 → 1 on 2048 → 16384 → 131072 tokens, full KL, flips inside equal-size groups).
`cpu` is sized so that database and search on the default model (SmolLM2-135M, 210
layers) finish in under 15 minutes on two CPU cores: a 16-window Hessian pass, short fitness
windows, top-1024 sparse KL (the vocabulary is 49k: full log-probabilities of the pool would
take 1.6 GB).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadInput


@dataclass(frozen=True)
class Preset:
    generations: int
    offspring: int
    survivors: list[int]
    tokens: list[int]
    fitness_seqlen: int          # tokens per fitness window
    pool_windows: int            # calibration windows whose dense logits are cached
    start_candidates: int        # fractional targets: random starts compared
    kl_topk: int                 # 0: full KL
    windows: int                 # calibration windows for Hessians / spike scores
    eval_every: int              # perplexity every k generations (0: never)
    eval_windows: int            # windows of that perplexity
    mutation: str = "within"     # within: the reference; exchange: also across sizes (genome.py)
    notes: list[str] = field(default_factory=list)


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



def resolved_preset(spec: Any) -> Preset:
    """The preset, with every non-null spec field put in its place."""
    base = asdict(PRESETS[spec.preset])
    for name in base:
        value = getattr(spec, name, None)
        if value is not None:
            base[name] = value
    preset = Preset(**base)
    if len(preset.survivors) != len(preset.tokens):
        raise BadInput(f"{len(preset.survivors)} survivor counts but {len(preset.tokens)} token counts",
                       "give one token count per selection stage")
    return preset


__all__ = ["Preset", "PRESETS", "resolved_preset"]
