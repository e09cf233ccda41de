"""The tuning loop shared by PV-Tuning, STE and continuous-only: one step, one evaluation,
and the state a checkpoint needs to resume exactly.

One optimizer step over `batch` calibration windows:
  1. forward/backward per micro-batch (bf16 autocast on CUDA; fp32 master parameters),
     loss = mean KL(teacher ‖ student) per token against the cached teacher targets;
  2. P step: Adam (betas 0.9, 0.95) on scales, zero points, norms (embeddings, head);
  3. V step (pv, ste): Adam on the straight-through buffers, then top-τ re-rounding.

The data order is a function of the step alone (a seeded permutation per epoch), so a
resumed run sees exactly the windows an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TuneSpec
from .distill import TeacherCache, kl_loss
from .qlinear import TunableQuantLinear
from .vstep import CodeAdam, VStepConfig, revert_codes, v_step


# --- what is trained ------------------------------------------------------------------------

def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("Norm", "RMSNorm"))


def trainable_groups(model: nn.Module, layers: dict[str, TunableQuantLinear], spec: TuneSpec) -> dict[str, list[nn.Parameter]]:
    """{group: parameters} for the P step, in a fixed order; freezes everything else."""
    for p in model.parameters():
        p.requires_grad_(False)
    groups: dict[str, list[nn.Parameter]] = {"grid": [], "norms": [], "embeddings": []}
    seen: set[int] = set()

    def add(group: str, p: nn.Parameter | None) -> None:
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            p.requires_grad_(True)
            groups[group].append(p)

    for layer in layers.values():
        add("grid", layer.scales)
        if spec.train_zeros:
            add("grid", layer.zeros)
    if spec.train_norms:
        for module in model.modules():
            if _is_norm(module):
                for p in module.parameters(recurse=False):
                    add("norms", p)
        for layer in layers.values():
            add("norms", layer.bias)
    if spec.train_embeddings:
        add("embeddings", model.get_input_embeddings().weight)
    if spec.train_head and model.get_output_embeddings() is not None:
        add("embeddings", model.get_output_embeddings().weight)
    return {k: v for k, v in groups.items() if v}


def tuned_state(model: nn.Module, layers: dict[str, TunableQuantLinear]) -> dict[str, torch.Tensor]:
    """Everything tuning changes: trainable parameters and the codes; {state-dict name: copy}."""
    state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    for name, layer in layers.items():
        state[f"{name}.codes"] = layer.codes.detach().clone()
    return state


@torch.no_grad()
def load_tuned_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for name, value in state.items():
        target = params.get(name, buffers.get(name))
        if target is None:
            raise KeyError(f"checkpoint tensor {name} matches nothing in the model")
        target.copy_(value)


# --- data order ------------------------------------------------------------------------------

def batch_rows(step: int, batch: int, n: int, seed: int) -> list[int]:
    """Window indices of optimizer step `step` (0-based): epochs of seeded permutations."""
    rows = []
    for pos in range(step * batch, (step + 1) * batch):
        epoch, i = divmod(pos, n)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        rows.append(int(torch.randperm(n, generator=gen)[i]))
    return rows


def code_change_helps(diff: torch.Tensor, z: float) -> bool:
    """Whether per-token loss changes `diff` [n] (new − old, same tokens) show a decrease:
    mean + z · standard error < 0. z = 0: any decrease of the mean."""
    diff = diff.double()
    se = diff.std() / math.sqrt(diff.numel()) if diff.numel() > 1 else torch.tensor(0.0)
    return bool(diff.mean() + z * se < 0)


# --- the loop ----------------------------------------------------------------------------------

@dataclass
class StepResult:
    loss: float
    codes_changed: int                  # over all layers
    codes_total: int
    changed_per_layer: dict[str, int] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.codes_changed / max(self.codes_total, 1)


class Tuner:
    def __init__(self, model: nn.Module, layers: dict[str, TunableQuantLinear], cache: TeacherCache,
                 spec: TuneSpec, device: torch.device, autocast_dtype: torch.dtype | None = None) -> None:
        self.model, self.layers, self.cache, self.spec = model, layers, cache, spec
        self.device, self.autocast_dtype = device, autocast_dtype
        self.calib = cache.windows("calib")                       # [n, L] tokens
        self.groups = trainable_groups(model, layers, spec)
        params = [p for ps in self.groups.values() for p in ps]
        self.p_opt = torch.optim.Adam(params, lr=spec.lr, betas=(0.9, 0.95)) if params else None
        self.v_opt = None
        if spec.has_v_step:
            self.v_opt = CodeAdam(layers, VStepConfig(lr=spec.code_lr, beta1=spec.code_beta1, tau=spec.effective_tau,
                                                      delta_decay=spec.delta_decay,
                                                      precondition=spec.code_precondition,
                                                      in_grid_steps=spec.code_lr_in_grid_steps))
        for layer in layers.values():
            layer.capture_grad = self.v_opt is not None
            layer.capture_inputs = self.v_opt is not None and spec.code_precondition
        self.codes_total = sum(layer.codes.numel() for layer in layers.values())
        self.step = 0                      # optimizer steps done
        # Called between forward passes (micro-batches, the V step's check, evaluation) and
        # may raise Cancelled: a step of a real model takes tens of seconds on a CPU. A step
        # cut short is never saved, so a resume starts from the last checkpoint, exactly.
        self.check: Callable[[], None] = lambda: None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self) -> StepResult:
        spec = self.spec
        rows = batch_rows(self.step, spec.batch, len(self.calib), spec.seed)
        micro = spec.micro_batch or spec.batch
        self.model.train()
        if self.p_opt is not None:
            self.p_opt.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, len(rows), micro):
            self.check()
            part = rows[start: start + micro]
            with self._autocast():
                loss = self._token_kl(part).mean() * (len(part) / len(rows))   # mean over all tokens
            loss.backward()
            total += float(loss.detach())
        self.check()
        if self.p_opt is not None:
            self.p_opt.step()
        changed: dict[str, int] = {}
        if self.v_opt is not None:
            if spec.check_codes:     # judged on the next step's windows: data the V step has not seen
                changed = self._checked_v_step(batch_rows(self.step + 1, spec.batch, len(self.calib), spec.seed), micro)
            else:
                changed = v_step(self.layers, self.v_opt)
        self.step += 1
        return StepResult(total, sum(changed.values()), self.codes_total, changed)

    def _token_kl(self, rows: list[int]) -> torch.Tensor:
        """KL(teacher ‖ model) per token [len(rows), L] over calibration windows `rows`."""
        ids = self.calib[rows].to(self.device)
        target = {k: v.to(self.device) for k, v in self.cache.batch("calib", rows).items()}
        logits = self.model(input_ids=ids, use_cache=False).logits
        return kl_loss(logits, target)

    @torch.no_grad()
    def _token_losses(self, rows: list[int], micro: int) -> torch.Tensor:
        """KL(teacher ‖ model) of every token of windows `rows`, flattened [len(rows) · L]."""
        parts = []
        for start in range(0, len(rows), micro):
            self.check()
            with self._autocast():
                parts.append(self._token_kl(rows[start: start + micro]).reshape(-1))
        return torch.cat(parts)

    def _checked_v_step(self, rows: list[int], micro: int) -> dict[str, int]:
        """The V step, kept only if the new codes lower the loss on windows `rows` (at the P
        step's new scales) by more than `check_z` standard errors of the per-token change;
        otherwise every code goes back (the straight-through buffers keep their progress, so
        the same moves are proposed again once the evidence for them grows).

        On a 1k-token batch the codes a V step picks fit that batch's noise: checked on the
        batch that produced them, they pass and still raise the held-out KL; checked on the
        next batch, only moves that generalise are kept."""
        before = self._codes()
        changed = v_step(self.layers, self.v_opt)
        if not sum(changed.values()):
            return changed                  # nothing moved: nothing to judge
        after = self._codes()
        self.model.eval()
        loss_new = self._token_losses(rows, micro)
        self._set_codes(before)
        loss_old = self._token_losses(rows, micro)
        self._set_codes(after)
        self.model.train()
        if not code_change_helps(loss_new - loss_old, self.spec.check_z):
            revert_codes(self.layers, self.v_opt, before)
            changed = {name: 0 for name in changed}
        return changed

    def _codes(self) -> dict[str, torch.Tensor]:
        return {name: layer.codes.clone() for name, layer in self.layers.items()}

    def _set_codes(self, codes: dict[str, torch.Tensor]) -> None:
        for name, layer in self.layers.items():
            layer.codes.copy_(codes[name])

    def evaluate(self) -> dict[str, Any]:
        """Held-out KL and perplexity, and each layer's output error on the first eval window."""
        record = evaluate_model(self.model, self.layers, self.cache, self.spec.micro_batch or self.spec.batch,
                                self.device, self._autocast, check=self.check)
        return {"step": self.step, **record}

    # --- checkpoint state ---
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "model": tuned_state(self.model, self.layers),
                "p_opt": None if self.p_opt is None else self.p_opt.state_dict(),
                "v_opt": None if self.v_opt is None else self.v_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        load_tuned_state(self.model, state["model"])
        if self.p_opt is not None and state["p_opt"] is not None:
            self.p_opt.load_state_dict(state["p_opt"])
        if self.v_opt is not None and state["v_opt"] is not None:
            self.v_opt.load_state_dict(state["v_opt"])


@torch.no_grad()
def evaluate_model(model: nn.Module, layers: dict[str, TunableQuantLinear], cache: TeacherCache, micro: int,
                   device: torch.device, autocast: Any = contextlib.nullcontext,
                   check: Callable[[], None] | None = None) -> dict[str, Any]:
    """{"kl", "ppl", "layers": {name: rel_error}} on the cache's "eval" windows.

    KL is KL(teacher ‖ model) per token (top-k + tail, or full, as cached); perplexity is
    exp of the mean next-token NLL. rel_error = ‖(W − W_hat) X‖² / ‖W X‖² with X the
    layer's inputs on the first eval window and W the dense weight kept in the cache.
    """
    model.eval()
    windows = cache.windows("eval")
    inputs: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(_first_input_hook(inputs, name)) for name, layer in layers.items()]
    kl_sum = nll_sum = 0.0
    n_kl = n_nll = 0
    try:
        for start in range(0, len(windows), micro):
            if check is not None:
                check()
            rows = list(range(start, min(start + micro, len(windows))))
            ids = windows[rows].to(device)
            with autocast():
                logits = model(input_ids=ids, use_cache=False).logits.float()     # [b, L, V]
            target = {k: v.to(device) for k, v in cache.batch("eval", rows).items()}
            kl = kl_loss(logits, target)
            kl_sum += float(kl.double().sum())
            n_kl += kl.numel()
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                  reduction="sum")
            nll_sum += float(nll.double())
            n_nll += ids[:, 1:].numel()
    finally:
        for hook in hooks:
            hook.remove()
    errors = {}
    for name, layer in layers.items():
        w = cache.dense(name)
        if w is None or name not in inputs:
            continue
        x = inputs[name].float()                                    # [L, d_in]
        w = w.to(x.device, torch.float32)
        ref = x @ w.t()
        err = x @ (w - layer.dequantize()).t()
        errors[name] = float(err.pow(2).sum() / ref.pow(2).sum().clamp(min=1e-30))
    return {"kl": kl_sum / max(n_kl, 1), "ppl": math.exp(nll_sum / max(n_nll, 1)), "layers": errors}


def _first_input_hook(store: dict[str, torch.Tensor], name: str):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if name not in store:
            store[name] = args[0][0].detach()      # the first window's inputs [L, d_in]
    return hook
