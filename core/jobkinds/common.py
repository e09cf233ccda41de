"""Steps that several job kinds share: open the model, draw windows, with stage events."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..jobs import ModelSpec, RunContext
    from ..model import LoadedModel


def open_model(spec: "ModelSpec", ctx: "RunContext", stage: str = "load", lean: bool = False) -> "LoadedModel":
    """`lean`: the job walks the model block by block, so its weights may stay home (core/offload.py)."""
    from ..model import load_model

    ctx.emitter.stage(stage, "start")
    loaded = load_model(spec, lean=lean)
    where = "" if loaded.offload == "none" else f", weights in {loaded.offload} as {loaded.stored_dtype}"
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
