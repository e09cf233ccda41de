"""The pieces of a tuning run, on plain arguments and callbacks: the teacher targets, the
Tuner with its memory settings, checkpoints, divergence, EoRA's covariances and adapters.
The `tune` job's orchestration (events, stages, resume) is core/jobkinds/tune.py.

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
from pathlib import Path
from typing import Any, Callable

import torch

from .. import atomic
from ..errors import BadInput
from .config import TuneSpec
from .student import Student, dense_weights, open_teacher
from .trainer import Tuner

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


# --- the teacher ---------------------------------------------------------------------------------

def open_checked_teacher(source: str, spec: TuneSpec, student: Student) -> Any:
    """The dense teacher `source` (core/tune/student.teacher_source), refused when its
    vocabulary is not the student's."""
    teacher = open_teacher(source, spec.model)
    vocab_t = teacher.model.get_output_embeddings().weight.shape[0]
    vocab_s = student.model.get_output_embeddings().weight.shape[0]
    if vocab_t != vocab_s:
        raise BadInput(f"the teacher {source} has a vocabulary of {vocab_t}, the student {vocab_s}",
                       "pass the dense model this checkpoint was made from as --teacher")
    return teacher


def teacher_windows(spec: TuneSpec, student: Student, teacher: torch.nn.Module, splits: tuple[str, ...],
                    on_step: Callable[[int, int], None] | None = None,
                    check: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """{split: windows [n, L]}: "calib" (when asked) and "eval". selfgen samples the dense
    teacher (`on_step` / `check`: its progress and cancellation); "a+b" mixes sources, as in
    quantize and search."""
    from ..data import eval_windows
    from ..pipeline import draw_calibration

    tokenizer = student.loaded.tokenizer
    windows = {}
    if "calib" in splits:
        windows["calib"] = draw_calibration(spec.calib, tokenizer, spec.windows, spec.seqlen, spec.seed,
                                            model=teacher, on_step=on_step, check=check)
    windows["eval"] = eval_windows(spec.eval_data, tokenizer, spec.eval_seqlen or spec.seqlen, spec.eval_windows)
    return windows


def dense_extra(teacher: torch.nn.Module, student: Student) -> dict[str, torch.Tensor]:
    """The dense weights (fp16) of the student's quantized layers, stored with the targets."""
    return {f"dense.{n}": w.to(torch.float16) for n, w in dense_weights(teacher, list(student.layers)).items()}


def enable_block_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder block in the backward pass instead of keeping its activations."""
    enable = getattr(model, "activation_checkpointing_enable", None)   # transformers >= 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- checkpoints ----------------------------------------------------------------------------------

def save_checkpoint(folder: Path, tuner: Tuner, best: dict | None, history: list[dict], totals: dict) -> None:
    """Step, tuned tensors, optimizers, best state, history and RNG into `folder` (atomically)."""
    state = {"tuner": tuner.state_dict(), "best": best, "history": history, "totals": totals,
             "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    with atomic.staged_dir(folder) as tmp:
        torch.save(state, tmp / STATE_FILE)
        atomic.write_json(tmp / "meta.json", {"step": tuner.step, "steps": tuner.spec.steps,
                                              "method": tuner.spec.method})


def load_checkpoint(folder: Path) -> dict | None:
    """The state `save_checkpoint` wrote (RNG restored), or None when there is none."""
    file = folder / STATE_FILE
    if not file.is_file():
        return None
    state = torch.load(file, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["rng"])
    if torch.cuda.is_available() and state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


# --- training --------------------------------------------------------------------------------------

def open_tuner(spec: TuneSpec, student: Student, cache: Any, check: Callable[[], None]) -> Tuner:
    """A Tuner over the student and the teacher targets, memory settings on."""
    device = student.loaded.device
    tuner = Tuner(student.model, student.layers, cache, spec, device, autocast_dtype(spec, device))
    tuner.check = check
    use_ckpt = spec.grad_checkpointing if spec.grad_checkpointing is not None else device.type == "cuda"
    if use_ckpt:
        enable_block_checkpointing(student.model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return tuner


def summary(record: dict) -> dict:
    """An evaluation as the history keeps it: step, KL, perplexity, mean layer error."""
    return {"step": record["step"], "kl": record["kl"], "ppl": record["ppl"],
            "mean_rel_error": (sum(record["layers"].values()) / len(record["layers"])) if record["layers"] else None}


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


def provenance(spec: TuneSpec, best_step: int) -> dict:
    """The tuning settings written into the checkpoint's manifest."""
    return {"method": spec.method, "steps": spec.steps, "best_step": best_step, "lr": spec.lr,
            "code_lr": spec.code_lr, "code_beta1": spec.code_beta1,
            "code_precondition": spec.code_precondition, "code_lr_in_grid_steps": spec.code_lr_in_grid_steps,
            "check_codes": spec.check_codes,
            "check_z": spec.check_z, "tau": spec.effective_tau, "delta_decay": spec.delta_decay,
            "calib": spec.calib, "windows": spec.windows, "seqlen": spec.seqlen, "seed": spec.seed}


# --- EoRA --------------------------------------------------------------------------------------------

@torch.no_grad()
def capture_covariances(student: Student, windows: torch.Tensor, micro: int, autocast: Any,
                        check: Callable[[], None], on_batch: Callable[[], Any]) -> dict[str, Any]:
    """{layer: its input accumulator (`.C` = X Xᵀ / N)} of every quantized layer over `windows`
    [n, L], `micro` windows per forward; `on_batch` after each."""
    from ..quant.gptq import HessianAccumulator

    device = student.loaded.device
    accs = {name: HessianAccumulator(layer.in_features, device) for name, layer in student.layers.items()}

    def hook_for(name: str):
        return lambda module, args, output: accs[name].add(args[0])

    hooks = [layer.register_forward_hook(hook_for(name)) for name, layer in student.layers.items()]
    student.model.eval()
    try:
        for start in range(0, len(windows), micro):
            check()
            with autocast():
                student.model(input_ids=windows[start: start + micro].to(device), use_cache=False)
            on_batch()
    finally:
        for hook in hooks:
            hook.remove()
    return accs


def fit_adapters(student: Student, cache: Any, accs: dict[str, Any], rank: int, check: Callable[[], None],
                 on_layer: Callable[..., None]) -> tuple[dict, dict]:
    """Rank-r adapters of every layer, set on the layers; ({name: (A, B) on the CPU},
    {name: (relative output error before, after)}). `on_layer(name, layer, before, after,
    rank, seconds)` after each layer."""
    from ..quant.gptq import output_error
    from .eora import eora_adapters

    device = student.loaded.device
    adapters, errors = {}, {}
    for name, layer in student.layers.items():
        check()
        t0 = time.time()
        W = cache.dense(name).to(device, torch.float32)
        C = accs.pop(name).C
        dW = W - layer.dequantize()
        B, A = eora_adapters(dW, C, rank)                        # [d_out, r], [r, d_in]
        before, after = output_error(dW, W, C), output_error(dW - B @ A, W, C)
        layer.eora_A, layer.eora_B = A.to(device), B.to(device)
        adapters[name] = (A.cpu(), B.cpu())
        errors[name] = (before, after)
        on_layer(name, layer, before, after, A.shape[0], time.time() - t0)
    return adapters, errors
