"""Steps that several job kinds share: open the model, draw windows, with stage events."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..jobs import ModelSpec, RunContext
    from ..model import LoadedModel


def open_model(spec: "ModelSpec", ctx: "RunContext", stage: str = "load", lean: bool = False) -> "LoadedModel":
    """`lean`: the job walks the model block by block, so its weights may stay home (core/offload.py)."""
    from ..model import load_model

    ctx.emitter.stage(stage, "start")
    loaded = load_model(spec, lean=lean)
    stored = str(loaded.stored_dtype).replace("torch.", "")
    where = "" if loaded.offload == "none" else f"; weights kept in {loaded.offload.upper()} as {stored}"
    ctx.emitter.log(f"opened {loaded.source}: {loaded.architecture} on {loaded.device} ({loaded.dtype}{where})")
    ctx.emitter.stage(stage, "end")
    return loaded


def eval_windows_for(loaded: "LoadedModel", data: str, seqlen: int, windows: int | None) -> "torch.Tensor":
    from ..data import eval_windows

    return eval_windows(data, loaded.tokenizer, seqlen, windows)


def measure_perplexity(loaded: "LoadedModel", windows: "torch.Tensor", ctx: "RunContext",
                       stage: str = "evaluate", step: int = 0) -> float:
    """Perplexity over `windows`, with progress events and cancellation between windows."""
    from ..evaluate import perplexity
    from ..events import Progress

    ctx.emitter.stage(stage, "start")
    progress = Progress(ctx.emitter, stage, len(windows))

    def on_step(done: int, total: int) -> None:     # windows, or blocks then windows (block by block)
        progress.total = total
        progress.advance(done - progress.done)

    ppl = perplexity(loaded.model, windows, on_window=on_step, check=ctx.cancel.check)
    ctx.emitter.metric("ppl", ppl, step=step, split="eval")
    ctx.emitter.stage(stage, "end")
    return ppl


SAMPLING_EVENT_S = 0.5      # at most two progress events a second while sampling


def sampling_hooks(ctx: "RunContext", stage: str = "calibrate") -> dict[str, Any]:
    """`on_step` and `check` for draw_calibration: selfgen sampling (minutes on a CPU) emits
    `progress` for `stage` with an ETA, throttled, and stops at a cancel between tokens.
    Pass as `**sampling_hooks(ctx)`; sources other than selfgen never call them."""
    from ..events import Progress

    # the clock starts now (before the first step), so the first event's ETA counts that step
    state: dict[str, Any] = {"progress": None, "last": 0.0, "began": time.monotonic()}

    def on_step(done: int, total: int) -> None:
        progress = state["progress"]
        if progress is None or progress.total != total or done < progress.done:
            progress = state["progress"] = Progress(ctx.emitter, stage, total)   # a new part of "a+b"
            progress._start = state["began"]
        now = time.monotonic()
        if done == total or done == 1 or now - state["last"] >= SAMPLING_EVENT_S:
            state["last"] = now
            progress.advance(done - progress.done)
        else:
            progress.done = done
        if done == total:
            state["began"] = now                 # the next part of "a+b" starts here

    return {"on_step": on_step, "check": ctx.cancel.check}


def preflight(kind: str, spec: object, ctx: "RunContext") -> dict | None:
    """The job's memory and disk estimate (core/estimate.py, no timing probe), logged; a job
    that cannot fit is refused here, before anything loads, with the setting that would fit.
    Returns the estimate's figures for the report (None when the model cannot be sized
    without loading it: the job then runs as it would have)."""
    import logging

    from ..errors import BadInput
    from ..estimate import estimate_job
    from ..jobs import Job

    try:
        est = estimate_job(Job(kind, spec), probe=False, run_dir=ctx.run_dir.path)
    except Exception as err:  # noqa: BLE001 - a model that cannot be sized is the loader's to report
        logging.getLogger("bitsmith.estimate").warning("no estimate for this job: %s", err)
        return None
    ctx.emitter.log(f"estimate: {est.summary()}")
    if not est.fits:
        raise BadInput(f"this {kind} job {est.problem}", str(est.suggestion))
    return {"peak_ram": est.peak_ram, "peak_gpu": est.peak_gpu, "disk": est.disk,
            "phases": est.phases, "limits": est.limits}
