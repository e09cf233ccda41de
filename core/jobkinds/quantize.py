"""`quantize`: calibrate, quantize per plan with GPTQ or RTN, write RUN_DIR/quantized/.

Events: `plan` (the resolved plan and its budget), `layer` per layer (bits, group size,
relative output error, seconds), `progress` with an ETA. Finished blocks are saved to
RUN_DIR/checkpoint/ as they complete; `--resume` replays them (the calibration windows
are saved too, so the replayed activations are the same) and continues with the next
block. Cancellation is checked between layers; a cancel keeps the layers the current block
finished (checkpoint/partial.safetensors), and a resume goes on from the next layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..errors import BadInput, Cancelled
from ..jobs import ModelSpec, RunContext, register_job
from ..plan import PlanSpec
from ..serve import check_plan_serves, serve_target

if TYPE_CHECKING:   # torch stays out of the window process, which imports job specs
    import torch

# Data-free by default: windows sampled from the model itself. Calibrating on one domain
# (the builtin Python docs) overfits it: 4-bit g64 WikiText-2, with the range search,
# 44.2 with builtin, 43.0 with selfgen.
DEFAULT_CALIB = "selfgen"


@dataclass
class QuantizeSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    method: Literal["gptq", "rtn"] = "gptq"
    plan: PlanSpec | str = field(default_factory=PlanSpec)   # inline rules, or a plan.json path
    calib: str = DEFAULT_CALIB        # text source(s); "a+b" mixes sources in equal parts
    calib_windows: int = 32           # 0: no calibration (RTN only); 32 x 512 = 16k tokens
    seqlen: int = 512
    seed: int = 0
    damp: float = 0.1                 # λ = damp · mean(diag H)
    act_order: bool = True            # columns by descending diag(H), static groups
    static_groups: bool = False       # grids fixed up front also without act-order
    # range-shrink search of each group's grid, weighted by diag(H); None: on for GPTQ (it is
    # what brings 4-bit g64 from 46.3 to 44.2 on WikiText-2), off for RTN (plain rounding)
    clip: bool | None = None
    clip_min_shrink: float = 0.8
    block_size: int = 128
    true_sequential: bool = True
    batch_size: int = 8
    serve: str = "any"                # runtime the plan is for (core/serve.py): vllm/sglang refuse a plan
                                      # that gives one fused group (q/k/v, gate/up) different settings
    # torch CPU threads; null: torch's default (every core). GPTQ's many small operations run
    # several times faster on 1 thread when the machine is busy, but the result depends on the
    # thread count (float sums in another order): default 4-bit WikiText-2 42.72 on 2 threads,
    # 43.06 on 1; so the default does not follow the load
    threads: int | None = None

    @property
    def clips(self) -> bool:
        """Whether the grid's range search runs: `clip`, or by default only for GPTQ."""
        return self.method == "gptq" if self.clip is None else self.clip

    def validate(self) -> None:
        serve_target(self.serve)
        if self.calib_windows < 0:
            raise BadInput(f"calib_windows {self.calib_windows} is negative", "use --calib-windows 1 or more")
        if self.calib_windows == 0 and self.method == "gptq":
            raise BadInput("GPTQ needs calibration windows", "use --calib-windows 1 or more, or --method rtn")
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


@register_job("quantize", QuantizeSpec, "quantize a model per a bit plan with GPTQ or RTN")
def run_quantize(spec: QuantizeSpec, ctx: RunContext) -> dict:
    from ..threads import cpu_threads

    with cpu_threads(spec.threads, follow_load=False) as threads:
        ctx.emitter.log(f"torch CPU threads: {threads}")
        report = _run_quantize(spec, ctx)
    report["threads"] = threads
    return report


def _run_quantize(spec: QuantizeSpec, ctx: RunContext) -> dict:
    from ..inventory import find_blocks, layer_inventory
    from ..quant.resume import BlockStore

    from ..estimate import current_rss
    from .common import preflight

    rss_at_start = current_rss()                     # the interpreter with torch and transformers
    started = time.monotonic()
    estimate = preflight("quantize", spec, ctx)     # refuses a job that cannot fit, before loading
    loaded = _open_dense(spec, ctx)
    layers = layer_inventory(loaded.model)
    plan = _resolve_plan(spec, ctx, layers)
    store = BlockStore(ctx.run_dir.checkpoint_dir)
    windows, start_block, partial = _calibrate_or_resume(spec, ctx, store, loaded, plan)
    results = dict(store.layer_results)          # {layer name: its `layer` event fields}
    placement = _weights_placement(loaded.model, loaded.device)

    ctx.emitter.stage("quantize", "start")
    quantize_started = time.monotonic()
    _quantize_blocks(spec, ctx, store, loaded.model, plan, layers, windows, results, start_block, partial)
    quantize_seconds = time.monotonic() - quantize_started
    ctx.emitter.stage("quantize", "end")

    ctx.emitter.stage("save", "start")
    from ..quant.checkpoint import save_quantized

    # the codes come back from checkpoint/, one block file at a time: RAM never held them all
    # next to the float model (core/offload.release dropped each block's float weights)
    save_quantized(ctx.run_dir.quantized_dir, loaded.model, loaded.tokenizer,
                   store.codes(plan, find_blocks(loaded.model)[0]), plan,
                   extra={"base_model": {"source": loaded.source, "location": loaded.location},
                          "provenance": _provenance(spec, windows)})
    ctx.emitter.stage("save", "end")
    return _report(spec, ctx, loaded, layers, plan.budget(), windows, results,
                   {"quantize_seconds": round(quantize_seconds, 2),
                    "total_seconds": round(time.monotonic() - started, 2),
                    "peak_memory_mb": {**_peak_memory_mb(loaded.device),
                                       "cpu_rss_at_start": round(rss_at_start / 2**20, 1)},
                    "weights_before_blocks": placement,
                    "estimate": estimate,
                    "resumed_at_block": start_block if ctx.resume else None})


def _open_dense(spec: QuantizeSpec, ctx: RunContext):
    """The model to quantize, its weights home in their stored dtype (CPU RAM, or disk with
    offload disk); one block at a time goes to the work device (core/offload.py)."""
    from .common import open_model

    loaded = open_model(spec.model, ctx, lean=True)
    if loaded.quantized is not None:
        raise BadInput(f"{spec.model.source} is already quantized", "quantize the original model instead")
    return loaded


def _resolve_plan(spec: QuantizeSpec, ctx: RunContext, layers: list):
    """The plan resolved against the model's layers, saved to RUN_DIR/plan.json and emitted."""
    from ..plan import load_plan_file, plan_for_model, save_plan

    source = load_plan_file(spec.plan) if isinstance(spec.plan, str) else spec.plan
    plan = plan_for_model(source, layers)
    check_plan_serves(plan, [layer.name for layer in layers], serve_target(spec.serve))
    budget = plan.budget()
    save_plan(ctx.run_dir.plan_file, plan, plan.spec, layers)
    ctx.emitter.plan(plan.bits_map(), budget=budget.to_dict(),
                     group_sizes={n: e.group_size for n, e in plan.entries.items()})
    ctx.emitter.log(f"plan: {budget.summary()}")
    return plan


def _calibrate_or_resume(spec: QuantizeSpec, ctx: RunContext, store, loaded, plan):
    """(windows [n, seqlen] or None, first block to do, {layer: quantized or None} finished
    in that block before a cancel).

    A resumed run reads back its saved windows; its finished blocks are replayed from their
    files as the pass reaches them (`_quantize_blocks`), so the next block sees the
    activations an uninterrupted run would."""
    from ..quant.resume import load_windows_or_draw
    from .common import sampling_hooks

    windows = None
    if spec.calib_windows > 0:
        ctx.emitter.stage("calibrate", "start")
        windows = load_windows_or_draw(store, ctx.resume, spec, loaded, **sampling_hooks(ctx))
        ctx.emitter.stage("calibrate", "end")
    start_block = store.next_block() if ctx.resume else 0
    partial = store.load_partial(plan, start_block) if ctx.resume else {}
    if not ctx.resume:
        store.reset()
    if start_block:
        store.blocks = list(range(start_block))
    if start_block or partial:
        ctx.emitter.log(f"resuming at block {start_block}"
                        + (f" after its first {len(partial)} layers" if partial else "")
                        + f": {len(store.layer_results)} layers were done")
    return windows, start_block, partial


def _quantize_blocks(spec: QuantizeSpec, ctx: RunContext, store, model, plan, layers: list, windows,
                     results: dict, start_block: int, partial: dict) -> None:
    """GPTQ/RTN from `start_block` on: a `layer` event per layer, each finished block saved
    to checkpoint/ (and its float weights dropped from the model), and on a cancel the
    finished layers of the current block."""
    from ..inventory import find_blocks
    from ..pipeline import quantize_model, replay_block

    progress = _progress(ctx, len(layers), len(results))
    prefix, _ = find_blocks(model)

    def on_layer(result) -> None:
        fields = result.event_fields()
        results[result.name] = fields
        ctx.emitter.layer(result.name, **fields)
        progress.advance()

    def on_block_done(index: int, quantized: dict) -> None:
        store.save_block(index, quantized, {n: results[n] for n in results if _in_block(n, layers, index)})

    def on_partial(index: int, quantized: dict, finished: list[str]) -> None:
        store.save_partial(index, quantized, {n: results[n] for n in finished})

    def replay(index: int, block) -> None:
        replay_block(block, f"{prefix}.{index}", plan, store.load_block(index, plan))

    try:
        quantize_model(model, plan, windows, _options(spec), on_layer=on_layer, on_block_done=on_block_done,
                       check=ctx.cancel.check, start_block=start_block, on_partial=on_partial, partial=partial,
                       replay=replay, release=True)
    except Cancelled:
        saved = f"blocks before {store.next_block()}" if store.next_block() else "no whole block yet"
        extra = f", and {len(store.partial['layers'])} layers of block {store.partial['block']}" if store.partial else ""
        raise Cancelled(f"cancelled after {store.layers_done()} of {len(layers)} layers "
                        f"({saved}{extra} are saved in checkpoint/)")


def _report(spec: QuantizeSpec, ctx: RunContext, loaded, layers: list, budget, windows, results: dict,
            timing: dict) -> dict:
    from ..inventory import inventory_summary

    errors = [r["rel_error"] for r in results.values() if r.get("rel_error") is not None and not r.get("keep")]
    return {"model": loaded.summary(), "inventory": inventory_summary(layers), "method": spec.method,
            "avg_code_bits": budget.avg_code_bits, "effective_bits": budget.effective_bits,
            "total_bytes": budget.total_bytes, "bytes_16bit": budget.bytes_16bit, "budget": budget.to_dict(),
            "calibration": {"source": spec.calib, "windows": spec.calib_windows, "seqlen": spec.seqlen,
                            "tokens": int(windows.numel()) if windows is not None else 0},
            "mean_rel_error": sum(errors) / len(errors) if errors else None,
            "max_rel_error": max(errors) if errors else None,
            **timing,
            "quantized_dir": str(ctx.run_dir.quantized_dir), "plan_file": str(ctx.run_dir.plan_file),
            "layers": results}


def _options(spec: QuantizeSpec):
    from ..pipeline import QuantizeOptions
    from ..quant.grid import ClipConfig

    return QuantizeOptions(method=spec.method, damp=spec.damp, act_order=spec.act_order,
                           static_groups=spec.static_groups, block_size=spec.block_size,
                           clip=ClipConfig(enabled=True, min_shrink=spec.clip_min_shrink) if spec.clips else None,
                           true_sequential=spec.true_sequential, batch_size=spec.batch_size)


def _progress(ctx: RunContext, total: int, done: int):
    from ..events import Progress

    return Progress(ctx.emitter, "quantize", total, done)


def _in_block(name: str, layers: list, index: int) -> bool:
    return any(l.name == name and l.block == index for l in layers)


def _provenance(spec: QuantizeSpec, windows: torch.Tensor | None) -> dict:
    from ..config import to_dict

    return {"method": spec.method, "job": to_dict(spec),
            "calibration_tokens": int(windows.numel()) if windows is not None else 0}


def _weights_placement(model: torch.nn.Module, work_device: torch.device) -> dict:
    """Where the model's weights are (devices, dtypes) before the first block goes to the work
    device, and the GPU memory already allocated then."""
    params = list(model.parameters())
    placement: dict = {"parameter_devices": sorted({str(p.device) for p in params}),
                       "parameter_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in params})}
    if work_device.type == "cuda":
        import torch

        placement["cuda_allocated_mb"] = round(torch.cuda.memory_allocated(work_device) / 2**20, 1)
    return placement


def _peak_memory_mb(device: torch.device) -> dict:
    from ..estimate import peak_rss

    peak = {"cpu_rss": round(peak_rss() / 2**20, 1)}
    if device.type == "cuda":
        import torch

        peak["cuda_allocated"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak

