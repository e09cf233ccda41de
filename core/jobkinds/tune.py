"""`tune`: PV-Tuning (or the STE / continuous-only baselines) of a quantized checkpoint,
or EoRA low-rank compensation; writes a new checkpoint to RUN_DIR/quantized/.

The orchestration: stages, events, the step loop with its evaluations, best-state keeping
and resumable checkpoints. The pieces it runs take plain arguments (core/tune/run.py,
trainer.py, distill.py, eora.py).

Events: `metric` loss and codes_changed every step (split train); kl and ppl at each
evaluation (split eval), with a `layer` event per layer (bits, rel_error, step); a warning
`log` (code diverged) when an evaluation is far worse than the best; EoRA: kl/ppl without
(step 0) and with (step 1) its adapters and a `layer` event per layer.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import BadInput
from ..jobs import RunContext, register_job
from ..tune.config import TuneSpec

if TYPE_CHECKING:   # torch stays out of the window process, which imports job specs
    from ..tune.distill import TeacherCache
    from ..tune.student import Student
    from ..tune.trainer import Tuner


@register_job("tune", TuneSpec, "fine-tune a quantized checkpoint (pv | ste | continuous) or add EoRA adapters")
def run_tune(spec: TuneSpec, ctx: RunContext) -> dict:
    if spec.method == "eora":
        return run_eora(spec, ctx)
    return run_training(spec, ctx)


# --- the teacher targets -------------------------------------------------------------------------

def teacher_cache(spec: TuneSpec, ctx: RunContext, student: "Student", splits: tuple[str, ...]) -> "TeacherCache":
    """Reuse the cache of a resumed run; otherwise run the teacher once and write it."""
    from ..events import Progress
    from ..tune.distill import build_teacher_cache, open_teacher_cache
    from ..tune.run import dense_extra, free_memory, open_checked_teacher, teacher_windows
    from ..tune.student import teacher_source
    from .common import sampling_hooks

    cache = open_teacher_cache(ctx.run_dir.path) if ctx.resume else None
    if cache is not None:
        ctx.emitter.log("reusing the teacher targets already in the run directory")
        return cache
    source = teacher_source(spec.teacher, student.manifest)
    ctx.emitter.stage("teacher", "start")
    teacher = open_checked_teacher(source, spec, student)
    windows = teacher_windows(spec, student, teacher.model, splits, **sampling_hooks(ctx))
    dense = dense_extra(teacher.model, student)
    micro = spec.micro_batch or spec.batch
    progress = Progress(ctx.emitter, "teacher", sum(-(-len(w) // micro) for w in windows.values()))
    cache = build_teacher_cache(ctx.run_dir.path, teacher.model, windows, spec.teacher_topk, micro,
                                check=ctx.cancel.check, on_batch=progress.advance, extra=dense)
    del teacher
    free_memory()
    ctx.emitter.stage("teacher", "end")
    return cache


def _open_student(spec: TuneSpec, ctx: RunContext) -> "Student":
    from ..tune.student import open_student

    ctx.emitter.stage("load", "start")
    student = open_student(spec.model, spec.train_zeros)
    ctx.emitter.stage("load", "end")
    return student


# --- training --------------------------------------------------------------------------------------

def _emit_eval(ctx: RunContext, record: dict, student: "Student") -> None:
    ctx.emitter.metric("kl", record["kl"], step=record["step"], split="eval")
    ctx.emitter.metric("ppl", record["ppl"], step=record["step"], split="eval")
    for name, rel in record["layers"].items():
        ctx.emitter.layer(name, bits=student.layers[name].bits, rel_error=rel, step=record["step"])


def _evaluate(ctx: RunContext, tuner: "Tuner", student: "Student", best: dict | None, history: list[dict]) -> dict:
    """Evaluate on the held-out windows, append to `history`; the best state so far. An
    evaluation far worse than the best is flagged (a warning event): the best state is what
    the run saves at the end, whatever happens after it."""
    from ..tune.run import divergence, summary
    from ..tune.trainer import tuned_state

    record = tuner.evaluate()
    _emit_eval(ctx, record, student)
    why = divergence(record, history)
    entry = summary(record)
    if why is not None and best is not None:
        entry["diverged"] = True
        ctx.emitter.log(f"tuning is diverging at step {record['step']}: {why}. The best state (step "
                        f"{best['step']}) is kept and is what this run saves; lower lr / code_lr, or "
                        "calibrate on selfgen", level="warning", code="diverged", step=record["step"],
                        best_step=best["step"])
    history.append(entry)
    metric = record[tuner.spec.select_by]
    if best is None or metric < best["metric"]:
        best = {"metric": metric, "step": record["step"], "state": tuned_state(student.model, student.layers)}
    return best


def _start(ctx: RunContext, tuner: "Tuner", student: "Student") -> tuple[dict, list[dict], dict]:
    """(best, history, totals): from the run's checkpoint, or a fresh evaluation at step 0."""
    from ..tune.run import load_checkpoint

    state = load_checkpoint(ctx.run_dir.checkpoint_dir) if ctx.resume else None
    if state is None:
        history: list[dict] = []
        return _evaluate(ctx, tuner, student, None, history), history, {"codes_changed": 0}
    tuner.load_state_dict(state["tuner"])
    ctx.emitter.log(f"resumed from the checkpoint at step {tuner.step}")
    return state["best"], state["history"], state["totals"]


def _train(ctx: RunContext, tuner: "Tuner", student: "Student", best: dict, history: list[dict],
           totals: dict) -> dict:
    """Steps until spec.steps: events every step, evaluations and checkpoints on schedule; the best state."""
    from ..events import Progress
    from ..tune.run import save_checkpoint

    spec = tuner.spec
    ctx.emitter.stage("tune", "start")
    progress = Progress(ctx.emitter, "tune", spec.steps, done=tuner.step)
    while tuner.step < spec.steps:
        ctx.cancel.check()
        result = tuner.train_step()
        step = tuner.step
        totals["codes_changed"] += result.codes_changed
        ctx.emitter.metric("loss", result.loss, step=step, split="train")
        ctx.emitter.metric("codes_changed", result.fraction, step=step, split="train")
        progress.advance()
        if step == spec.steps or (spec.eval_every and step % spec.eval_every == 0):
            best = _evaluate(ctx, tuner, student, best, history)
        if spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < spec.steps:
            save_checkpoint(ctx.run_dir.checkpoint_dir, tuner, best, history, totals)
    ctx.emitter.stage("tune", "end")
    return best


def run_training(spec: TuneSpec, ctx: RunContext) -> dict:
    """pv | ste | continuous: the tuning loop, then RUN_DIR/quantized/."""
    from ..tune.run import open_tuner, peak_memory_bytes, provenance
    from ..tune.student import save_student
    from ..tune.trainer import load_tuned_state

    started = time.time()
    student = _open_student(spec, ctx)
    if student.adapters:
        raise BadInput(f"{spec.model.source} carries low-rank adapters; tuning would invalidate them",
                       "tune the checkpoint without adapters, then run --method eora on the result")
    tuner = open_tuner(spec, student, teacher_cache(spec, ctx, student, ("calib", "eval")), ctx.cancel.check)
    best, history, totals = _start(ctx, tuner, student)
    best = _train(ctx, tuner, student, best, history, totals)

    load_tuned_state(student.model, best["state"])
    ctx.emitter.stage("save", "start")
    save_student(ctx.run_dir.quantized_dir, student, provenance(spec, best["step"]))
    ctx.emitter.stage("save", "end")
    device = student.loaded.device
    return {"method": spec.method, "source": spec.model.source, "quantized": str(ctx.run_dir.quantized_dir),
            "steps": spec.steps, "best_step": best["step"], "select_by": spec.select_by,
            "before": history[0], "best": next(h for h in history if h["step"] == best["step"]), "last": history[-1],
            "history": history, "codes_changed_total": totals["codes_changed"],
            "diverged_steps": [h["step"] for h in history if h.get("diverged")],
            "codes_total": tuner.codes_total, "device": str(device),
            "peak_memory_bytes": peak_memory_bytes(device), "train_seconds": round(time.time() - started, 1)}


# --- EoRA --------------------------------------------------------------------------------------------

def _evaluate_stage(ctx: RunContext, student: "Student", cache: "TeacherCache", micro: int, autocast: Any,
                    adapters: bool) -> dict[str, Any]:
    """Held-out KL and perplexity, emitted as step 0 (without adapters) or 1 (with them)."""
    from ..tune.trainer import evaluate_model

    ctx.emitter.stage("evaluate", "start")
    record = evaluate_model(student.model, student.layers, cache, micro, student.loaded.device, autocast,
                            check=ctx.cancel.check)
    for metric in ("kl", "ppl"):
        ctx.emitter.metric(metric, record[metric], step=int(adapters), split="eval", adapters=adapters)
    ctx.emitter.stage("evaluate", "end")
    return record


def _covariance_windows(spec: TuneSpec, ctx: RunContext, student: "Student"):
    """EoRA's calibration windows [n, L]; selfgen samples the dense teacher, as for training."""
    from ..pipeline import draw_calibration
    from ..tune.run import free_memory
    from ..tune.student import open_teacher, teacher_source
    from .common import sampling_hooks

    sampler = None
    if "selfgen" in spec.calib:
        sampler = open_teacher(teacher_source(spec.teacher, student.manifest), spec.model).model
    windows = draw_calibration(spec.calib, student.loaded.tokenizer, spec.windows, spec.seqlen, spec.seed,
                               model=sampler, **sampling_hooks(ctx))
    del sampler
    free_memory()
    return windows


def _adapters(spec: TuneSpec, ctx: RunContext, student: "Student", cache: "TeacherCache", windows,
              micro: int, autocast: Any) -> tuple[dict, dict]:
    """Covariances of every quantized layer's inputs, then its rank-r adapters, with events."""
    from ..events import Progress
    from ..tune.run import capture_covariances, fit_adapters

    ctx.emitter.stage("covariance", "start")
    progress = Progress(ctx.emitter, "covariance", -(-len(windows) // micro))
    accs = capture_covariances(student, windows, micro, autocast, ctx.cancel.check, progress.advance)
    ctx.emitter.stage("covariance", "end")
    ctx.emitter.stage("eora", "start")
    progress = Progress(ctx.emitter, "eora", len(student.layers))

    def on_layer(name: str, layer, before: float, after: float, rank: int, seconds: float) -> None:
        ctx.emitter.layer(name, bits=layer.bits, rel_error=after, rel_error_before=before, rank=rank,
                          seconds=round(seconds, 3))
        progress.advance()

    adapters, errors = fit_adapters(student, cache, accs, spec.rank, ctx.cancel.check, on_layer)
    ctx.emitter.stage("eora", "end")
    return adapters, errors


def run_eora(spec: TuneSpec, ctx: RunContext) -> dict:
    """Training-free low-rank compensation; RUN_DIR/quantized/ holds the adapters."""
    import contextlib

    import torch

    from ..tune.run import autocast_dtype, peak_memory_bytes
    from ..tune.student import save_student

    started = time.time()
    student = _open_student(spec, ctx)
    device = student.loaded.device
    cache = teacher_cache(spec, ctx, student, ("eval",))
    dtype = autocast_dtype(spec, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    micro = spec.micro_batch or spec.batch

    without = _evaluate_stage(ctx, student, cache, micro, autocast, adapters=False)
    windows = _covariance_windows(spec, ctx, student)
    adapters, errors = _adapters(spec, ctx, student, cache, windows, micro, autocast)
    with_adapters = _evaluate_stage(ctx, student, cache, micro, autocast, adapters=True)

    ctx.emitter.stage("save", "start")
    provenance = {"method": "eora", "rank": spec.rank, "calib": spec.calib, "windows": spec.windows,
                  "seqlen": spec.seqlen, "seed": spec.seed}
    save_student(ctx.run_dir.quantized_dir, student, provenance, adapters=adapters)
    ctx.emitter.stage("save", "end")
    n = len(errors)
    adapter_params = sum(a.numel() + b.numel() for a, b in adapters.values())
    return {"method": "eora", "source": spec.model.source, "quantized": str(ctx.run_dir.quantized_dir),
            "rank": spec.rank, "without": {"kl": without["kl"], "ppl": without["ppl"]},
            "with": {"kl": with_adapters["kl"], "ppl": with_adapters["ppl"]},
            "mean_rel_error_before": sum(b for b, _ in errors.values()) / n,
            "mean_rel_error_after": sum(a for _, a in errors.values()) / n,
            "adapter_params": adapter_params, "device": str(device),
            "peak_memory_bytes": peak_memory_bytes(device), "seconds_eora": round(time.time() - started, 1)}
