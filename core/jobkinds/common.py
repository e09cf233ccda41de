"""Steps that several job kinds share: open the model, draw windows, with stage events."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..jobs import ModelSpec, RunContext
    from ..model import LoadedModel


def open_model(spec: "ModelSpec", ctx: "RunContext", stage: str = "load") -> "LoadedModel":
    from ..model import load_model

    ctx.emitter.stage(stage, "start")
    loaded = load_model(spec)
    ctx.emitter.log(f"opened {loaded.source}: {loaded.architecture} on {loaded.device} ({loaded.dtype})")
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
    ppl = perplexity(loaded.model, windows, on_window=lambda done, total: progress.advance(),
                     check=ctx.cancel.check)
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
