"""The `quantize` job's spec: which model, which method (core/quant/methods/), the plan, the
calibration and the method's settings. Torch-free: the window builds its form from it. The
job itself (calibration, the block pass, events, checkpoints) is core/jobkinds/quantize.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import setting
from ..errors import BadInput
from ..jobs import ModelSpec
from ..plan import PlanSpec
from ..serve import SERVE_TARGETS, serve_help, serve_target
from .registry import quantizer, quantizer_names, quantizers

if TYPE_CHECKING:
    from ..pipeline import QuantizeOptions


# Data-free by default: windows sampled from the model itself. Calibrating on one domain
# (the builtin Python docs) overfits it: 4-bit g64 WikiText-2, with the range search,
# 44.2 with builtin, 43.0 with selfgen.
DEFAULT_CALIB = "selfgen"


def _method_help() -> str:
    return "; ".join(f"{q.name}: {q.description}" for q in quantizers().values())


def _clip_help() -> str:
    defaults = ", ".join(f"{q.clip} for {q.name}" for q in quantizers().values())
    return f"search each group's range (shrink down to 0.8, weighted by the Hessian diagonal; default: {defaults})"


def _serve_choices() -> list[str]:
    return list(SERVE_TARGETS)


@dataclass
class QuantizeSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    method: str = setting("gptq", _method_help, choices=quantizer_names)   # core/quant/methods/
    plan: PlanSpec | str = field(default_factory=PlanSpec)   # inline rules, or a plan.json path
    calib: str = setting(DEFAULT_CALIB, "calibration text: builtin | selfgen | file:PATH | hf:NAME; 'a+b' mixes "
                         f"(default {DEFAULT_CALIB})")
    calib_windows: int = 32           # 0: no calibration (RTN only); 32 x 512 = 16k tokens
    seqlen: int = 512
    seed: int = 0
    damp: float = setting(0.1, "GPTQ dampening, λ = damp · mean(diag H) (default 0.1)")
    act_order: bool = setting(True, "GPTQ columns by descending Hessian diagonal, static groups (default)")
    static_groups: bool = setting(False, "GPTQ grids fixed up front also without act-order")
    # on for GPTQ: it brings 4-bit g64 from 46.3 to 44.2 on WikiText-2; off for RTN; always for rtn-mse
    clip: bool | None = setting(None, _clip_help)
    clip_min_shrink: float = setting(0.8, "the range search's smallest factor (GPTQ's reference maxshrink)")
    block_size: int = setting(128, "GPTQ lazy-update block (columns)")
    true_sequential: bool = setting(True, "a group's Hessian sees the block's earlier groups quantized")
    batch_size: int = setting(8, "calibration windows per forward pass (default 8)")
    # vllm/sglang refuse a plan that gives one fused group (q/k/v, gate/up) different settings
    serve: str = setting("any", serve_help, choices=_serve_choices)   # core/serve.py
    # null: torch's default (every core). The result depends on the thread count (float sums
    # in another order): default 4-bit WikiText-2 42.72 on 2 threads, 43.06 on 1; so the
    # default does not follow the load
    threads: int | None = setting(None, "torch CPU threads (default: all cores; on a busy machine 1 runs GPTQ "
                                  "several times faster, with slightly different numbers)")

    @property
    def clips(self) -> bool:
        """Whether the grid's range search runs: `clip`, or the method's default."""
        return quantizer(self.method).clip != "off" if self.clip is None else self.clip

    def validate(self) -> None:
        serve_target(self.serve)
        method = quantizer(self.method)
        if self.calib_windows < 0:
            raise BadInput(f"calib_windows {self.calib_windows} is negative", "use --calib-windows 1 or more")
        if self.calib_windows == 0 and method.calibrated:
            raise BadInput(f"{method.label} needs calibration windows", "use --calib-windows 1 or more, or --method rtn")
        if self.clip is False and method.clip == "always":
            raise BadInput(f"{method.label} is defined by its range search; --no-clip would leave plain rounding",
                           "leave --no-clip out, or use --method rtn")
        if self.seqlen < 2:
            raise BadInput(f"seqlen {self.seqlen} is too short", "use --seqlen 2 or more (512 is standard)")
        if not self.damp > 0:
            raise BadInput(f"damp {self.damp} must be positive", "use e.g. --damp 0.01 or 0.1")
        if not 0 < self.clip_min_shrink <= 1:
            raise BadInput(f"clip_min_shrink {self.clip_min_shrink} must be in (0, 1]", "use e.g. 0.8")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"threads {self.threads} must be at least 1", "use e.g. --threads 2")
        if self.block_size < 1 or self.batch_size < 1:
            raise BadInput("block_size and batch_size must be at least 1", "use the defaults (128, 8)")
        if isinstance(self.plan, PlanSpec):
            self.plan.validate()

    def options(self) -> "QuantizeOptions":
        """The pipeline's options for this spec (the range search as `clips` says)."""
        from ..pipeline import QuantizeOptions
        from .grid import ClipConfig

        return QuantizeOptions(method=self.method, damp=self.damp, act_order=self.act_order,
                               static_groups=self.static_groups, block_size=self.block_size,
                               clip=ClipConfig(enabled=True, min_shrink=self.clip_min_shrink) if self.clips else None,
                               true_sequential=self.true_sequential, batch_size=self.batch_size)


__all__ = ["DEFAULT_CALIB", "QuantizeSpec"]
