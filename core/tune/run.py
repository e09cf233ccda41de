"""Running a tuning job in its run directory: teacher cache, the step loop with evaluation,
best-state keeping and resumable checkpoints, and the tuned checkpoint at the end.

    RUN_DIR/teacher.safetensors   teacher targets for calibration and eval windows, the
                                  windows themselves and the dense weights (fp16) of the
                                  quantized layers (for per-layer errors); written once
    RUN_DIR/checkpoint/state.pt   step, tuned tensors, both optimizers, best state, history, RNG
    RUN_DIR/quantized/            the tuned model, in the source checkpoint's format
"""

from __future__ import annotations

import gc
import math
import resource
import time
from typing import Any

import torch

from .. import atomic
from ..errors import BadInput
from ..events import Progress
from ..jobkinds.common import sampling_hooks
from ..jobs import RunContext
from .config import TuneSpec
from .distill import TeacherCache, build_teacher_cache, open_teacher_cache
from .student import Student, dense_weights, open_student, open_teacher, save_student, teacher_source
from .trainer import Tuner, evaluate_model, load_tuned_state, tuned_state

STATE_FILE = "state.pt"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated on CUDA; the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024   # Linux reports KiB


def autocast_dtype(spec: TuneSpec, device: torch.device) -> torch.dtype | None:
    """bf16 (or fp16) compute on CUDA with fp32 master parameters; plain fp32 on the CPU."""
    from ..model import resolve_dtype

    dtype = resolve_dtype(spec.model.dtype, device)
    return dtype if device.type == "cuda" and dtype != torch.float32 else None


# --- the teacher cache ---------------------------------------------------------------------------

def ensure_teacher_cache(spec: TuneSpec, ctx: RunContext, student: Student, splits: tuple[str, ...]) -> TeacherCache:
    """Reuse the cache of a resumed run; otherwise run the teacher once and write it."""
    from ..data import eval_windows
    from ..pipeline import draw_calibration

    cache = open_teacher_cache(ctx.run_dir.path) if ctx.resume else None
    if cache is not None:
        ctx.emitter.log("reusing the teacher targets already in the run directory")
        return cache
    source = teacher_source(spec.teacher, student.manifest)
    ctx.emitter.stage("teacher", "start")
    teacher = open_teacher(source, spec.model)
    vocab_t = teacher.model.get_output_embeddings().weight.shape[0]
    vocab_s = student.model.get_output_embeddings().weight.shape[0]
    if vocab_t != vocab_s:
        raise BadInput(f"the teacher {source} has a vocabulary of {vocab_t}, the student {vocab_s}",
                       "pass the dense model this checkpoint was made from as --teacher")
    tokenizer = student.loaded.tokenizer
    windows = {}
    if "calib" in splits:
        # selfgen samples the dense teacher; "a+b" mixes sources, as in quantize and search
        windows["calib"] = draw_calibration(spec.calib, tokenizer, spec.windows, spec.seqlen, spec.seed,
                                            model=teacher.model, **sampling_hooks(ctx))
    windows["eval"] = eval_windows(spec.eval_data, tokenizer, spec.eval_seqlen or spec.seqlen, spec.eval_windows)
    dense = {f"dense.{n}": w.to(torch.float16) for n, w in dense_weights(teacher.model, list(student.layers)).items()}
    micro = spec.micro_batch or spec.batch
    progress = Progress(ctx.emitter, "teacher", sum(-(-len(w) // micro) for w in windows.values()))
    cache = build_teacher_cache(ctx.run_dir.path, teacher.model, windows, spec.teacher_topk, micro,
                                check=ctx.cancel.check, on_batch=progress.advance, extra=dense)
    del teacher
    _free_memory()
    ctx.emitter.stage("teacher", "end")
    return cache


def enable_block_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder block in the backward pass instead of keeping its activations."""
    enable = getattr(model, "activation_checkpointing_enable", None)   # transformers >= 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- checkpoints ----------------------------------------------------------------------------------

def save_checkpoint(ctx: RunContext, tuner: Tuner, best: dict | None, history: list[dict], totals: dict) -> None:
    state = {"tuner": tuner.state_dict(), "best": best, "history": history, "totals": totals,
             "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    with atomic.staged_dir(ctx.run_dir.checkpoint_dir) as tmp:
        torch.save(state, tmp / STATE_FILE)
        atomic.write_json(tmp / "meta.json", {"step": tuner.step, "steps": tuner.spec.steps,
                                              "method": tuner.spec.method})


def load_checkpoint(ctx: RunContext) -> dict | None:
    file = ctx.run_dir.checkpoint_dir / STATE_FILE
    if not (ctx.resume and file.is_file()):
        return None
    state = torch.load(file, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["rng"])
    if torch.cuda.is_available() and state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


# --- training --------------------------------------------------------------------------------------

def _emit_eval(ctx: RunContext, record: dict, student: Student) -> None:
    ctx.emitter.metric("kl", record["kl"], step=record["step"], split="eval")
    ctx.emitter.metric("ppl", record["ppl"], step=record["step"], split="eval")
    for name, rel in record["layers"].items():
        ctx.emitter.layer(name, bits=student.layers[name].bits, rel_error=rel, step=record["step"])


def _summary(record: dict) -> dict:
    return {"step": record["step"], "kl": record["kl"], "ppl": record["ppl"],
            "mean_rel_error": (sum(record["layers"].values()) / len(record["layers"])) if record["layers"] else None}


def _open_tuner(spec: TuneSpec, ctx: RunContext, student: Student) -> Tuner:
    """The teacher targets (computed or reused) and a Tuner over the student, memory settings on."""
    device = student.loaded.device
    cache = ensure_teacher_cache(spec, ctx, student, ("calib", "eval"))
    tuner = Tuner(student.model, student.layers, cache, spec, device, autocast_dtype(spec, device))
    tuner.check = ctx.cancel.check
    use_ckpt = spec.grad_checkpointing if spec.grad_checkpointing is not None else device.type == "cuda"
    if use_ckpt:
        enable_block_checkpointing(student.model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return tuner


# An evaluation this much worse than the best one before it is flagged as diverging: on
# SmolLM2 a PV run on `builtin` data went from perplexity 20.5 to 349 in two steps, while
# the noise between evaluations of healthy runs stays within a few percent.
DIVERGED_PPL_RATIO = 1.5
DIVERGED_KL_RATIO = 2.0


def divergence(record: dict, history: list[dict]) -> str | None:
    """Why `record` (an evaluation) counts as diverged from the best of `history`, or None."""
    ppl, kl = record["ppl"], record["kl"]
    if not (math.isfinite(ppl) and math.isfinite(kl)):
        return f"held-out perplexity {ppl} / KL {kl} is not finite"
    if not history:
        return None
    best_ppl = min(h["ppl"] for h in history)
    best_kl = min(h["kl"] for h in history)
    if ppl > DIVERGED_PPL_RATIO * best_ppl:
        return f"held-out perplexity {ppl:.4g} is {ppl / best_ppl:.1f}× the best so far ({best_ppl:.4g})"
    if kl > DIVERGED_KL_RATIO * best_kl + 1e-3:
        return f"held-out KL {kl:.4g} is {kl / max(best_kl, 1e-12):.1f}× the best so far ({best_kl:.4g})"
    return None


def _evaluate(ctx: RunContext, tuner: Tuner, student: Student, best: dict | None, history: list[dict]) -> dict:
    """Evaluate on the held-out windows, append to `history`; the best state so far. An
    evaluation far worse than the best is flagged (a warning event): the best state is what
    the run saves at the end, whatever happens after it."""
    record = tuner.evaluate()
    _emit_eval(ctx, record, student)
    why = divergence(record, history)
    summary = _summary(record)
    if why is not None and best is not None:
        summary["diverged"] = True
        ctx.emitter.log(f"tuning is diverging at step {record['step']}: {why}. The best state (step "
                        f"{best['step']}) is kept and is what this run saves; lower lr / code_lr, or "
                        "calibrate on selfgen", level="warning", code="diverged", step=record["step"],
                        best_step=best["step"])
    history.append(summary)
    metric = record[tuner.spec.select_by]
    if best is None or metric < best["metric"]:
        best = {"metric": metric, "step": record["step"], "state": tuned_state(student.model, student.layers)}
    return best


def _start(ctx: RunContext, tuner: Tuner, student: Student) -> tuple[dict, list[dict], dict]:
    """(best, history, totals): from the run's checkpoint, or a fresh evaluation at step 0."""
    state = load_checkpoint(ctx)
    if state is None:
        history: list[dict] = []
        return _evaluate(ctx, tuner, student, None, history), history, {"codes_changed": 0}
    tuner.load_state_dict(state["tuner"])
    ctx.emitter.log(f"resumed from the checkpoint at step {tuner.step}")
    return state["best"], state["history"], state["totals"]


def _train(ctx: RunContext, tuner: Tuner, student: Student, best: dict, history: list[dict], totals: dict) -> dict:
    """Steps until spec.steps: events every step, evaluations and checkpoints on schedule; the best state."""
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
            save_checkpoint(ctx, tuner, best, history, totals)
    ctx.emitter.stage("tune", "end")
    return best


def _provenance(spec: TuneSpec, best_step: int) -> dict:
    """The tuning settings written into the checkpoint's manifest."""
    return {"method": spec.method, "steps": spec.steps, "best_step": best_step, "lr": spec.lr,
            "code_lr": spec.code_lr, "code_beta1": spec.code_beta1,
            "code_precondition": spec.code_precondition, "code_lr_in_grid_steps": spec.code_lr_in_grid_steps,
            "check_codes": spec.check_codes,
            "check_z": spec.check_z, "tau": spec.effective_tau, "delta_decay": spec.delta_decay,
            "calib": spec.calib, "windows": spec.windows, "seqlen": spec.seqlen, "seed": spec.seed}


def run_training(spec: TuneSpec, ctx: RunContext) -> dict:
    """pv | ste | continuous: the tuning loop, then RUN_DIR/quantized/."""
    started = time.time()
    ctx.emitter.stage("load", "start")
    student = open_student(spec.model, spec.train_zeros)
    ctx.emitter.stage("load", "end")
    if student.adapters:
        raise BadInput(f"{spec.model.source} carries low-rank adapters; tuning would invalidate them",
                       "tune the checkpoint without adapters, then run --method eora on the result")
    tuner = _open_tuner(spec, ctx, student)
    best, history, totals = _start(ctx, tuner, student)
    best = _train(ctx, tuner, student, best, history, totals)

    load_tuned_state(student.model, best["state"])
    ctx.emitter.stage("save", "start")
    save_student(ctx.run_dir.quantized_dir, student, _provenance(spec, best["step"]))
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

@torch.no_grad()
def capture_covariances(student: Student, windows: torch.Tensor, micro: int, ctx: RunContext,
                        autocast: Any) -> dict[str, Any]:
    """{layer: CovarianceAccumulator} of every quantized layer's inputs over `windows` [n, L]."""
    from .eora import CovarianceAccumulator

    device = student.loaded.device
    accs = {name: CovarianceAccumulator(layer.in_features, device) for name, layer in student.layers.items()}

    def hook_for(name: str):
        return lambda module, args, output: accs[name].add(args[0])

    hooks = [layer.register_forward_hook(hook_for(name)) for name, layer in student.layers.items()]
    progress = Progress(ctx.emitter, "covariance", -(-len(windows) // micro))
    student.model.eval()
    try:
        for start in range(0, len(windows), micro):
            ctx.cancel.check()
            with autocast():
                student.model(input_ids=windows[start: start + micro].to(device), use_cache=False)
            progress.advance()
    finally:
        for hook in hooks:
            hook.remove()
    return accs


def _evaluate_stage(ctx: RunContext, student: Student, cache: TeacherCache, micro: int, autocast: Any,
                    adapters: bool) -> dict[str, Any]:
    """Held-out KL and perplexity, emitted as step 0 (without adapters) or 1 (with them)."""
    ctx.emitter.stage("evaluate", "start")
    record = evaluate_model(student.model, student.layers, cache, micro, student.loaded.device, autocast,
                            check=ctx.cancel.check)
    for metric in ("kl", "ppl"):
        ctx.emitter.metric(metric, record[metric], step=int(adapters), split="eval", adapters=adapters)
    ctx.emitter.stage("evaluate", "end")
    return record


def _covariance_windows(spec: TuneSpec, ctx: RunContext, student: Student) -> torch.Tensor:
    """EoRA's calibration windows [n, L]; selfgen samples the dense teacher, as for training."""
    from ..pipeline import draw_calibration

    sampler = None
    if "selfgen" in spec.calib:
        sampler = open_teacher(teacher_source(spec.teacher, student.manifest), spec.model).model
    windows = draw_calibration(spec.calib, student.loaded.tokenizer, spec.windows, spec.seqlen, spec.seed,
                               model=sampler, **sampling_hooks(ctx))
    del sampler
    _free_memory()
    return windows


def _fit_adapters(spec: TuneSpec, ctx: RunContext, student: Student, cache: TeacherCache,
                  accs: dict[str, Any]) -> tuple[dict, dict]:
    """Rank-r adapters of every layer, set on the layers; ({name: (A, B) on the CPU},
    {name: (relative output error before, after)})."""
    from ..quant.gptq import output_error
    from .eora import eora_adapters

    device = student.loaded.device
    progress = Progress(ctx.emitter, "eora", len(student.layers))
    adapters, errors = {}, {}
    for name, layer in student.layers.items():
        ctx.cancel.check()
        t0 = time.time()
        W = cache.dense(name).to(device, torch.float32)
        C = accs.pop(name).C
        dW = W - layer.dequantize()
        B, A = eora_adapters(dW, C, spec.rank)                  # [d_out, r], [r, d_in]
        before, after = output_error(dW, W, C), output_error(dW - B @ A, W, C)
        layer.eora_A, layer.eora_B = A.to(device), B.to(device)
        adapters[name] = (A.cpu(), B.cpu())
        errors[name] = (before, after)
        ctx.emitter.layer(name, bits=layer.bits, rel_error=after, rel_error_before=before, rank=A.shape[0],
                          seconds=round(time.time() - t0, 3))
        progress.advance()
    return adapters, errors


def run_eora(spec: TuneSpec, ctx: RunContext) -> dict:
    """Training-free low-rank compensation; RUN_DIR/quantized/ holds the adapters."""
    import contextlib

    started = time.time()
    ctx.emitter.stage("load", "start")
    student = open_student(spec.model, spec.train_zeros)
    ctx.emitter.stage("load", "end")
    device = student.loaded.device
    cache = ensure_teacher_cache(spec, ctx, student, ("eval",))
    dtype = autocast_dtype(spec, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    micro = spec.micro_batch or spec.batch

    without = _evaluate_stage(ctx, student, cache, micro, autocast, adapters=False)
    windows = _covariance_windows(spec, ctx, student)
    ctx.emitter.stage("covariance", "start")
    accs = capture_covariances(student, windows, micro, ctx, autocast)
    ctx.emitter.stage("covariance", "end")
    ctx.emitter.stage("eora", "start")
    adapters, errors = _fit_adapters(spec, ctx, student, cache, accs)
    ctx.emitter.stage("eora", "end")
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
