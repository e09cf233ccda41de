"""The `tune` job spec: which checkpoint, which method, and the reference hyperparameters.

Methods share one code path (core/tune/trainer.py):
    pv          P step (Adam on scales, zero points, norms) + V step (top-τ re-rounding)
    ste         the same with τ = 1: every weight re-rounded from R every step
    continuous  P step only: codes never change
    eora        no training: low-rank adapters from the input covariance (core/tune/eora.py)

One default departs from the reference: `check_codes`. On this machine's batches (4 windows
of 256 tokens) the reference V step (code lr 1e-2, β1 0, τ 0.01) re-rounds codes that fit
the batch's noise: on SmolLM2 3-bit its held-out KL went 0.40 → 0.36 at step 4 and 1.67 at
step 8, while continuous-only went to 0.28 and 0.25. With the check, a V step stays only if
it lowers the loss of the next step's windows. `--no-check-codes` is the reference.

Calibration defaults to `selfgen` (text sampled from the dense teacher, as `quantize` and
`search` calibrate): tuning on one domain fits that domain. On the default model, WikiText-2
after 30 steps with `builtin` against `selfgen`: 2-bit continuous 224.7 → 183.6, PV
243.0 → 187.2, STE 223.4 → 184.5, EoRA rank 64 170.9 → 151.7; 3-bit continuous 53.25 → 52.93.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import setting
from ..errors import BadInput
from ..jobs import ModelSpec

Method = Literal["pv", "ste", "continuous", "eora"]


@dataclass
class TuneSpec:
    model: ModelSpec = field(default_factory=ModelSpec)  # source: a native quantized checkpoint folder
    teacher: str | None = setting(None, "the dense model (default: the checkpoint's base model)")
    method: Method = "pv"
    steps: int = 100
    lr: float = setting(3e-4, "Adam lr of scales, zero points, norms")   # betas (0.9, 0.95)
    code_lr: float = setting(1e-2, "Adam lr of the straight-through buffers")   # betas (code_beta1, 0.95)
    # > 0 averages noisy small-batch gradients
    code_beta1: float = setting(0.0, "Adam beta1 of the straight-through buffers (reference 0)")
    code_precondition: bool = setting(False, "scale each input column's V step by E[x_j^2]^(-1/2)")  # tune/vstep.py
    code_lr_in_grid_steps: bool = setting(False, "--code-lr in units of each group's scale (grid steps per step)")
    check_codes: bool = setting(True, "keep a V step only if it lowers the loss of the next step's windows")
    check_z: float = setting(0.0, "with --check-codes: the decrease must exceed this many standard errors")
    tau: float = setting(0.01, "fraction of weights re-rounded per step (pv)")
    delta_decay: float = setting(0.0, "0 keeps R across steps, 1 resets it to W_hat each step")
    rank: int = setting(32, "EoRA adapter rank")
    calib: str = setting("selfgen", "calibration text source (default selfgen: sampled from the dense model); "
                         "never the eval text")
    windows: int = setting(64, "calibration windows (tuning data, or EoRA's covariance)")
    seqlen: int = 256
    batch: int = setting(4, "windows per step")
    micro_batch: int | None = setting(None, "windows per forward/backward (default: --batch)")
    eval_every: int = setting(10, "evaluate on held-out windows every k steps (0: start and end only)")
    eval_data: str = "builtin-eval"
    eval_windows: int = 8
    eval_seqlen: int | None = setting(None, "held-out window length (default: --seqlen)")
    select_by: Literal["kl", "ppl"] = setting("kl", "which held-out metric picks the best state")
    checkpoint_every: int = setting(50, "steps between resumable checkpoints (0: never)")
    seed: int = 0
    train_zeros: bool = True
    train_norms: bool = setting(True, "train the norms and the quantized layers' biases")
    train_embeddings: bool = False
    train_head: bool = False
    teacher_topk: int | None = setting(128, "teacher targets kept per token (0 = the full distribution)",
                                       none_as=0)
    grad_checkpointing: bool | None = setting(None, "recompute each block in the backward pass "
                                              "(default: on for CUDA, off on the CPU)")

    @property
    def effective_tau(self) -> float:
        return 1.0 if self.method == "ste" else self.tau

    @property
    def has_v_step(self) -> bool:
        return self.method in ("pv", "ste")

    def validate(self) -> None:
        if self.steps < 0:
            raise BadInput(f"steps {self.steps} must be 0 or more", "use e.g. --steps 100")
        for name in ("lr", "code_lr"):
            if getattr(self, name) <= 0:
                raise BadInput(f"{name} {getattr(self, name)} must be positive", f"use e.g. the default {name}")
        if not 0 <= self.code_beta1 < 1:
            raise BadInput(f"code_beta1 {self.code_beta1} must be in [0, 1)", "use 0 (the reference) or e.g. 0.9")
        if self.check_z < 0:
            raise BadInput(f"check_z {self.check_z} must be 0 or more", "use 0 (any decrease) or e.g. 2")
        if not 0 < self.tau <= 1:
            raise BadInput(f"tau {self.tau} must be in (0, 1]", "use e.g. --tau 0.01")
        if not 0 <= self.delta_decay <= 1:
            raise BadInput(f"delta_decay {self.delta_decay} must be in [0, 1]", "use 0 (keep R) or 1 (reset R)")
        if self.rank < 1:
            raise BadInput(f"rank {self.rank} must be at least 1", "use e.g. --rank 32")
        if self.windows < 1 or self.seqlen < 2:
            raise BadInput(f"need at least 1 window of 2 tokens, got {self.windows} x {self.seqlen}",
                           "raise --windows / --seqlen")
        if self.batch < 1 or (self.micro_batch is not None and self.micro_batch < 1):
            raise BadInput("batch and micro_batch must be at least 1", "use e.g. --batch 4")
        if self.micro_batch is not None and self.batch % self.micro_batch:
            raise BadInput(f"micro_batch {self.micro_batch} does not divide batch {self.batch}",
                           "pick a micro-batch that divides the batch")
        if self.eval_every < 0 or self.checkpoint_every < 0 or self.eval_windows < 1:
            raise BadInput("eval_every and checkpoint_every must be 0 or more, eval_windows at least 1",
                           "fix the schedule")
        if self.teacher_topk is not None and self.teacher_topk < 1:
            raise BadInput(f"teacher_topk {self.teacher_topk} must be at least 1", "use 128, or null for full")
