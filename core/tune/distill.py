"""The distillation objective: KL(teacher ‖ student) per token, from cached teacher outputs.

The teacher (the dense model) runs once over every window before tuning; its next-token
distributions are written to the run directory and streamed back batch by batch, so the
teacher never has to stay in memory next to the student.

Two storage modes:
- full: log-probabilities [n, L, V] (float16 on disk) — exact, but V is 49k-150k wide.
- top-k with the tail mass (default k = 128): the k most likely tokens' indices and
  log-probabilities [n, L, k]. The KL is then taken between the two distributions
  coarsened to k + 1 outcomes (those k tokens, and "anything else"):

      KL = Σ_{i ∈ top-k} p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail)

  with p_tail = 1 − Σ p_i and q_tail the student's mass outside the teacher's top-k.
  It is a lower bound of the full KL and equals it when the tail is empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import atomic

TEACHER_FILE = "teacher.safetensors"
TEACHER_META = "teacher.json"


# --- the loss ---------------------------------------------------------------------------

def _log1mexp(log_x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(log_x)) for log_x <= 0, clamped away from log 0."""
    x = log_x.exp().clamp(max=1 - 1e-7)
    return torch.log1p(-x)


def kl_topk(logits: torch.Tensor, t_idx: torch.Tensor, t_logp: torch.Tensor) -> torch.Tensor:
    """KL per token [...] of the coarsened distributions, from student logits [..., V] and
    the teacher's top-k indices [..., k] (int64) and log-probabilities [..., k]."""
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)                        # [..., 1]
    s_top = logits.gather(-1, t_idx) - log_z                                     # log q_i [..., k]
    masked = logits.scatter(-1, t_idx, float("-inf"))
    s_tail = (torch.logsumexp(masked, dim=-1) - log_z[..., 0]).clamp(min=-60.0)  # log q_tail [...]
    p_top = t_logp.exp()
    kl = (p_top * (t_logp - s_top)).sum(-1)
    t_tail = _log1mexp(torch.logsumexp(t_logp, dim=-1))                          # log p_tail
    return kl + t_tail.exp() * (t_tail - s_tail)


def kl_full(logits: torch.Tensor, t_logp: torch.Tensor) -> torch.Tensor:
    """KL per token [...] from student logits [..., V] and teacher log-probs [..., V]."""
    s_logp = F.log_softmax(logits, dim=-1)
    return (t_logp.exp() * (t_logp - s_logp)).sum(-1)


def kl_loss(logits: torch.Tensor, teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """KL per token [b, L] float32 against one teacher batch (top-k or full)."""
    logits = logits.float()
    if "idx" in teacher:
        return kl_topk(logits, teacher["idx"].long(), teacher["logp"].float())
    return kl_full(logits, teacher["logp"].float())


# --- the teacher cache --------------------------------------------------------------------

def teacher_targets(logits: torch.Tensor, topk: int | None) -> dict[str, torch.Tensor]:
    """What the cache keeps of teacher logits [b, L, V]: top-k (idx int32, logp f32) or full (f16)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    if topk is None or topk >= logp.shape[-1]:
        return {"logp": logp.to(torch.float16)}
    values, idx = torch.topk(logp, topk, dim=-1)
    return {"idx": idx.to(torch.int32), "logp": values}


@dataclass
class TeacherCache:
    """The teacher's targets for the calibration ("calib") and held-out ("eval") windows."""

    path: Path                      # RUN_DIR/teacher.safetensors
    topk: int | None

    def batch(self, split: str, rows: list[int]) -> dict[str, torch.Tensor]:
        """Targets of windows `rows` of `split`, read from disk (only those rows)."""
        from safetensors import safe_open

        out = {}
        with safe_open(str(self.path), framework="pt") as f:
            for key in ("idx", "logp"):
                name = f"{split}.{key}"
                if name in f.keys():
                    sl = f.get_slice(name)
                    out[key] = torch.stack([sl[r] for r in rows])
        return out

    def dense(self, name: str) -> torch.Tensor | None:
        """The dense weight [d_out, d_in] of layer `name`, if the cache holds it."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            key = f"dense.{name}"
            return f.get_tensor(key) if key in f.keys() else None

    def windows(self, split: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(f"{split}.windows")


@torch.no_grad()
def build_teacher_cache(run_path: Path, teacher: torch.nn.Module, windows: dict[str, torch.Tensor],
                        topk: int | None, batch_size: int, check: Callable[[], None] | None = None,
                        on_batch: Callable[[], None] | None = None,
                        extra: dict[str, torch.Tensor] | None = None) -> TeacherCache:
    """Run the teacher over `windows` {split: [n, L] tokens} and write its targets atomically.

    `extra` tensors (e.g. the dense weights used for per-layer errors) go in the same file.
    """
    from safetensors.torch import save_file

    device = next(teacher.parameters()).device
    tensors: dict[str, torch.Tensor] = {}
    for split, wins in windows.items():
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(wins), batch_size):
            if check is not None:
                check()
            ids = wins[start: start + batch_size].to(device)
            logits = teacher(input_ids=ids, use_cache=False).logits
            for key, value in teacher_targets(logits, topk).items():
                parts.setdefault(key, []).append(value.cpu())
            if on_batch is not None:
                on_batch()
        for key, chunks in parts.items():
            tensors[f"{split}.{key}"] = torch.cat(chunks).contiguous()
        tensors[f"{split}.windows"] = wins.cpu().clone()       # own storage: safetensors refuses views
    for key, value in (extra or {}).items():
        tensors[key] = value.cpu().clone()
    path = Path(run_path) / TEACHER_FILE
    with atomic.staged_file(path) as tmp:
        save_file(tensors, str(tmp))
    atomic.write_json(Path(run_path) / TEACHER_META, {"topk": topk, "splits": sorted(windows)})
    return TeacherCache(path, topk)


def open_teacher_cache(run_path: Path) -> TeacherCache | None:
    """The cache already in the run directory (a resumed run), or None."""
    path, meta = Path(run_path) / TEACHER_FILE, Path(run_path) / TEACHER_META
    if not (path.is_file() and meta.is_file()):
        return None
    return TeacherCache(path, json.loads(meta.read_text())["topk"])
