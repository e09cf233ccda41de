"""What every allocator works with: the search's `Setup` (spec, model, layers, fused units,
the budget in code bits) and the few steps they share: calibration windows, scores on them
with progress, the evaluation windows, a settings hash.

No run context here: the job (core/jobkinds/search.py) hands over its event emitter, its
cancellation check, its run directory and whether it resumes, as plain values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BadInput
from ..events import Emitter, Progress
from ..inventory import LayerInfo
from ..plan import OVERHEAD_BITS_PER_GROUP, resolve_group_size
from ..serve import serve_target, tie_units
from .genome import SearchSpace, Tying
from .presets import Preset

if TYPE_CHECKING:
    import torch

    from ..model import LoadedModel
    from .config import SearchSpec


@dataclass
class Setup:
    """What every allocator works with."""

    spec: "SearchSpec"
    preset: Preset               # the preset with the spec's overrides applied
    loaded: "LoadedModel"
    layers: list[LayerInfo]
    tying: Tying                 # units of layers that share one level (fused groups for vLLM/SGLang)
    target: float                # the budget in average code bits, or runtime bits (see `code_target`)
    events: Emitter = field(default_factory=Emitter)   # where stages, progress, layers and logs go
    check: Callable[[], None] = lambda: None           # raises Cancelled between steps
    run_path: Path = Path(".")   # the run directory: the database, checkpoint/ and sweep/ go there
    resume: bool = False         # continue from what run_path holds
    # {on_step, check} for sampling calibration text from the model (selfgen), made per draw
    sampling: Callable[[], dict] = dict
    tag: str = ""                # names this allocation's checkpoint apart (a sweep's target)
    cluster: Any = None          # a ClusterSession (core/search/cluster.py) with --cluster

    @classmethod
    def create(cls, spec: "SearchSpec", preset: Preset, loaded: "LoadedModel", layers: list[LayerInfo],
               **plain: Any) -> "Setup":
        """With the units of the spec's serving target and the budget in code bits; `plain`:
        the job's events, check, run_path, resume, sampling, cluster."""
        units = tie_units([layer.name for layer in layers], serve_target(spec.serve))
        return cls(spec, preset, loaded, layers, Tying(tuple(units)), code_target(spec, layers), **plain)

    def layer_space(self, levels) -> SearchSpace:
        """Layers × levels; with a runtime that stores each level in its own type (llama.cpp)
        and an effective budget, each level costs that type's bits per weight."""
        return SearchSpace.from_layers(self.layers, levels, runtime_cost(self.spec))

    def unit_space(self, levels) -> SearchSpace:
        """The space the allocators search: one gene per unit."""
        return self.tying.unit_space(self.layer_space(levels))

    @property
    def model(self) -> "torch.nn.Module":
        return self.loaded.model

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_path / "checkpoint"


def runtime_cost(spec: "SearchSpec") -> Callable[[LayerInfo, int], Any] | None:
    """(layer, bits) -> bits per weight as the serving target stores it, when the budget is
    effective and the target has types of its own (core/serve.py); else None."""
    level_cost = serve_target(spec.serve).level_cost
    if spec.budget != "effective" or level_cost is None:
        return None
    return lambda layer, bits: level_cost(layer.d_in, bits, resolve_group_size(layer.d_in, spec.group_size), spec.sym)


def code_target(spec: "SearchSpec", layers: list[LayerInfo]) -> float:
    """The budget in average code bits, which the allocators work in.

    An effective-bits budget (`budget="effective"`, as ModelOpt's `effective_bits`) also
    counts each group's scale and zero point: 32 bits per group, the same at every level.
    So it is the code budget less the mean overhead, exactly:
        Σ n_i·(b_i + 32/g_i) ≤ T·Σ n_i   ⟺   Σ n_i·b_i ≤ (T − Σ n_i·32/g_i / Σ n_i)·Σ n_i
    (g_i: the group size layer i gets, 64 → 0.5 bits per weight). A layer kept at 16 bits
    carries no overhead; counting it anyway errs on the safe side."""
    if spec.budget == "code" or runtime_cost(spec) is not None:   # runtime costs include the overhead
        return spec.target_bits
    params = sum(l.params for l in layers)
    overhead = sum(l.params * OVERHEAD_BITS_PER_GROUP / resolve_group_size(l.d_in, spec.group_size)
                   for l in layers) / params
    target = spec.target_bits - overhead
    lowest = min([b for b in spec.levels if b != 16] or [16])
    if target < lowest - 1e-9:
        raise BadInput(f"an effective budget of {spec.target_bits} bits leaves {target:.3f} code bits after "
                       f"scales and zero points ({overhead:.3f} bits per weight), below the lowest level {lowest}",
                       f"raise --target-bits to at least {lowest + overhead:.3f}, or use --budget code")
    return target


def settings_hash(doc: Any) -> str:
    """16 hex digits naming a cache file after what it depends on."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def calibration(setup: Setup, windows: int, seqlen: int, seed: int) -> "torch.Tensor":
    """[windows, seqlen] calibration windows of the spec's source (selfgen: sampled from the model)."""
    from ..pipeline import draw_calibration

    return draw_calibration(setup.spec.calib, setup.loaded.tokenizer, windows, seqlen, seed, model=setup.model,
                            **setup.sampling())


def scored_on_calibration(setup: Setup, stage: str, compute: Callable) -> Any:
    """Draw the calibration windows and run `compute(windows, check, on_batch)` as `stage`,
    with progress events per batch (spike and fisher scores)."""
    spec = setup.spec
    windows = calibration(setup, setup.preset.windows, spec.seqlen, spec.seed)
    setup.events.stage(stage, "start")
    progress = Progress(setup.events, stage, len(windows))
    out = compute(windows, setup.check, lambda done, total: progress.advance(done - progress.done))
    setup.events.stage(stage, "end")
    return out


def eval_windows(setup: Setup) -> "torch.Tensor":
    """The windows the chosen plan's perplexity (and EvoPress's periodic one) is measured on."""
    from ..data import eval_windows as windows_of

    return windows_of(setup.spec.eval_data, setup.loaded.tokenizer, setup.spec.eval_seqlen,
                      setup.preset.eval_windows)


__all__ = ["Setup", "runtime_cost", "code_target", "settings_hash", "calibration", "scored_on_calibration",
           "eval_windows"]
