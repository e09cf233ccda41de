"""`tune`: PV-Tuning (or the STE / continuous-only baselines) of a quantized checkpoint,
or EoRA low-rank compensation; writes a new checkpoint to RUN_DIR/quantized/."""

from __future__ import annotations

from ..jobs import RunContext, register_job
from ..tune.config import TuneSpec


@register_job("tune", TuneSpec, "fine-tune a quantized checkpoint (pv | ste | continuous) or add EoRA adapters")
def run_tune(spec: TuneSpec, ctx: RunContext) -> dict:
    from ..tune.run import run_eora, run_training

    if spec.method == "eora":
        return run_eora(spec, ctx)
    return run_training(spec, ctx)
