"""`search`: choose per-layer bit-widths with a registered allocator (EvoPress, spike-aware,
the sensitivity knapsack, fisher: core/search/allocators/).

Writes RUN_DIR/plan.json (what `bitsmith quantize --plan` reads) and, with
`then_quantize`, goes straight on to quantize the model per that plan into
RUN_DIR/quantized/ (the quantize job, chained here). The variant database lives in
RUN_DIR/database-<key>/ and can be reused by another search (`database`: that run's
folder). Preset fields left null take the preset's value (core/search/presets.py).

The orchestration: the cluster and CPU threads, the pre-flight estimate, the model, the
report; the steps themselves take plain arguments (core/search/driver.py).
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from ..errors import BadInput
from ..jobs import RunContext, register_job
from ..search.config import ALLOWED_LEVELS, SearchSpec  # noqa: F401 (the job's spec, re-exported)


@register_job("search", SearchSpec, "per-layer bit-widths: EvoPress, spike-aware, or sensitivity (knapsack)")
def run_search(spec: SearchSpec, ctx: RunContext) -> dict:
    from ..search.cluster import open_cluster
    from ..threads import cpu_threads

    # the cluster first: an unreachable one is one error line before any work
    with open_cluster(spec.cluster, ctx.emitter, spec.threads, spec.cluster_actors) as cluster, \
            cpu_threads(spec.threads) as threads:
        ctx.emitter.log(f"torch CPU threads: {threads}")
        report = _run_search(spec, ctx, cluster)
    report["threads"] = threads
    return report


def search_setup(spec: SearchSpec, preset: Any, ctx: RunContext, loaded: Any, layers: list, cluster: Any = None) -> Any:
    """The search's Setup (core/search/setup.py) from this job's run context, as plain values."""
    from ..search.setup import Setup
    from .common import sampling_hooks

    return Setup.create(spec, preset, loaded, layers, events=ctx.emitter, check=ctx.cancel.check,
                        run_path=ctx.run_dir.path, resume=ctx.resume, sampling=lambda: sampling_hooks(ctx),
                        cluster=cluster)


def _run_search(spec: SearchSpec, ctx: RunContext, cluster: Any = None) -> dict:
    from ..inventory import inventory_summary, layer_inventory
    from ..search.driver import allocate, run_sweep
    from ..search.presets import resolved_preset
    from .common import open_model, preflight

    started = time.time()
    preset = resolved_preset(spec)
    estimate = preflight("search", spec, ctx)        # refuses a search that cannot fit, before loading
    loaded = open_model(spec.model, ctx, lean=True)      # blocks onloaded one at a time (core/offload.py)
    if loaded.quantized is not None:
        raise BadInput(f"{spec.model.source} is already quantized", "search on the original model")
    layers = layer_inventory(loaded.model)
    setup = search_setup(spec, preset, ctx, loaded, layers, cluster)
    report: dict[str, Any] = {"model": loaded.summary(), "inventory": inventory_summary(layers),
                              "method": spec.method, "target_bits": spec.target_bits, "preset": spec.preset,
                              "serve": spec.serve, "units": len(setup.tying.units), "budget_kind": spec.budget,
                              "levels": sorted(set(spec.levels)), "estimate": estimate}
    if spec.targets:
        report["sweep"] = run_sweep(setup)
        chosen = next((row for row in report["sweep"] if row["target_bits"] == spec.target_bits), report["sweep"][-1])
        shutil.copyfile(chosen["plan_file"], ctx.run_dir.plan_file)
        report["plan_file"] = str(ctx.run_dir.plan_file)
    else:
        report.update(allocate(setup, ctx.run_dir.plan_file))
        if spec.then_quantize:
            report["quantize"] = then_quantize(spec, ctx)
    report["search_total_seconds"] = round(time.time() - started, 2)
    return report


def then_quantize(spec: SearchSpec, ctx: RunContext) -> dict:
    """Quantize per the plan just written, into RUN_DIR/quantized/ (the quantize job)."""
    from ..quant.config import QuantizeSpec
    from .quantize import run_quantize

    qspec = QuantizeSpec(model=spec.model, plan=str(ctx.run_dir.plan_file), calib=spec.quantize_calib,
                         calib_windows=spec.quantize_windows, seqlen=spec.seqlen, seed=spec.seed, serve=spec.serve)
    ctx.emitter.stage("then_quantize", "start")
    report = run_quantize(qspec, ctx)
    ctx.emitter.stage("then_quantize", "end")
    return {k: v for k, v in report.items() if k != "layers"}
