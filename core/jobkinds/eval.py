"""`eval`: perplexity of a model on a text source (and optionally KL to a reference)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import BadInput
from ..jobs import ModelSpec, RunContext, register_job


@dataclass
class EvalSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: str = "builtin-eval"        # a text source (core/data.py)
    seqlen: int = 512
    windows: int | None = 16          # first N windows; null = all of them
    reference: str | None = None      # a model source: also report KL(reference ‖ model)
    prompt: str | None = None         # also generate a continuation of this prompt
    max_new_tokens: int = 48

    def validate(self) -> None:
        if self.seqlen < 2:
            raise BadInput(f"seqlen {self.seqlen} is too short", "use a seqlen of at least 2 (512 is standard)")
        if self.windows is not None and self.windows < 1:
            raise BadInput(f"windows {self.windows} must be at least 1", "use --windows 1 or more")


@register_job("eval", EvalSpec, "perplexity on a text source, KL to a reference, a sample")
def run_eval(spec: EvalSpec, ctx: RunContext) -> dict:
    from ..evaluate import generate_text, kl_divergence
    from ..inventory import inventory_summary, layer_inventory
    from ..model import load_model
    from .common import eval_windows_for, measure_perplexity, open_model, preflight

    estimate = preflight("eval", spec, ctx)          # refuses an evaluation that cannot fit
    loaded = open_model(spec.model, ctx, lean=True)
    windows = eval_windows_for(loaded, spec.data, spec.seqlen, spec.windows)
    ppl = measure_perplexity(loaded, windows, ctx)
    report = {"model": loaded.summary(), "inventory": inventory_summary(layer_inventory(loaded.model)),
              "data": spec.data, "seqlen": spec.seqlen, "windows": len(windows),
              "tokens": int(windows.numel()), "ppl": ppl, "nll": math.log(ppl), "estimate": estimate}
    if spec.reference:
        reference = load_model(ModelSpec(spec.reference, spec.model.device, spec.model.dtype,
                                         spec.model.trust_remote_code, spec.model.offload), lean=True)
        report["kl"] = kl_divergence(reference.model, loaded.model, windows, check=ctx.cancel.check)
        ctx.emitter.metric("kl", report["kl"], split="eval")
    if spec.prompt:
        report["sample"] = _generate(spec, ctx, loaded, generate_text)
    return report


def _generate(spec: EvalSpec, ctx: RunContext, loaded, generate_text) -> dict:
    """The continuation of `spec.prompt`, streamed: a `progress` event per new token for the
    stage "generate", carrying the text so far; cancellation between tokens."""
    import time

    from transformers.generation.streamers import BaseStreamer

    class Stream(BaseStreamer):
        def __init__(self) -> None:
            self.ids: list[int] = []
            self.prompt_seen = False
            self.started = time.monotonic()

        def put(self, value) -> None:
            if not self.prompt_seen:           # generate() hands the prompt over first
                self.prompt_seen, self.started = True, time.monotonic()
                return
            ctx.cancel.check()
            self.ids.extend(int(i) for i in value.reshape(-1).tolist())
            elapsed = time.monotonic() - self.started
            done = len(self.ids)
            eta = elapsed / done * (spec.max_new_tokens - done)
            ctx.emitter.emit("progress", stage="generate", done=done, total=spec.max_new_tokens,
                             eta_s=round(eta, 1), text=loaded.tokenizer.decode(self.ids, skip_special_tokens=True),
                             tokens_per_s=round(done / max(elapsed, 1e-9), 2))

        def end(self) -> None:
            pass

    ctx.emitter.stage("generate", "start")
    stream = Stream()
    text = generate_text(loaded.model, loaded.tokenizer, spec.prompt, spec.max_new_tokens, streamer=stream)
    seconds = time.monotonic() - stream.started
    ctx.emitter.stage("generate", "end")
    return {"prompt": spec.prompt, "text": text, "new_tokens": len(stream.ids), "seconds": round(seconds, 3),
            "tokens_per_s": round(len(stream.ids) / max(seconds, 1e-9), 2)}
