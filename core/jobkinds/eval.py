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
        report["sample"] = {"prompt": spec.prompt,
                            "text": generate_text(loaded.model, loaded.tokenizer, spec.prompt, spec.max_new_tokens)}
    return report
