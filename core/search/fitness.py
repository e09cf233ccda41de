"""Fitness of candidate models: KL(dense ‖ candidate) per token, with shared prefixes.

The dense model's log-probabilities on a pool of calibration windows are computed once
(`dense_targets`), in full or as a top-k sparse summary for large vocabularies. A stage of
the search scores many candidates on the same windows; candidates that give the same
levels to the layers of their first blocks get identical hidden states there, so the
scorer walks the candidates as a trie over blocks: each distinct prefix of block levels is
run once, its output reused by every candidate below it.

Token accounting: `candidate_tokens` counts tokens × candidates (what scoring each
candidate separately would cost); `forward_tokens` counts what was actually computed, in
full-model equivalents (one block over T tokens = T / n_blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..capture import BlockInputs
from ..evaluate import kl_per_token
from .blocks import BlockRunner
from .genome import Genome

LOGIT_BYTES = 256 * 2**20   # fp32 logits made at once (SmolLM2's 49k vocabulary: 1365 positions)


# --- dense targets -----------------------------------------------------------------------

@dataclass
class DenseTargets:
    """The dense model's next-token distributions on the pool windows [n, L].

    Full: `logp` [n, L, V]. Sparse (top-k): `top_logp`, `top_idx` [n, L, k]; the KL is then
    taken between the distributions coarsened to (top-k tokens, everything else) — a lower
    bound of the full KL that is exact as the tail mass goes to 0.
    """

    windows: torch.Tensor
    logp: torch.Tensor | None = None
    top_logp: torch.Tensor | None = None
    top_idx: torch.Tensor | None = None

    @property
    def topk(self) -> int | None:
        return None if self.top_idx is None else int(self.top_idx.shape[-1])

    def kl(self, logits: torch.Tensor, rows: torch.Tensor, start: int = 0) -> torch.Tensor:
        """KL per token of the candidate's logits on pool windows `rows` [B]: logits [B, L, V]
        for every position, or [R, V] for the R positions from `start` of the batch's
        positions flattened (a chunk: large vocabularies)."""
        V = logits.shape[-1]
        logits = logits.reshape(-1, V)
        rows = rows.to(self.windows.device)
        span = slice(start, start + logits.shape[0])
        if self.logp is not None:     # targets live on the CPU; the scoring runs on the model's device
            return kl_per_token(self.logp[rows].reshape(-1, V)[span].to(logits.device), logits)
        top_logp = self.top_logp[rows].reshape(-1, self.topk)[span].to(logits.device)
        top_idx = self.top_idx[rows].reshape(-1, self.topk)[span].to(logits.device).long()
        out = []
        for s in range(0, logits.shape[0], 128):       # chunks: fp32 log-softmax of [128, V]
            log_q = F.log_softmax(logits[s: s + 128].float(), dim=-1).gather(1, top_idx[s: s + 128])
            log_p = top_logp[s: s + 128]
            p = log_p.exp()
            head = (p * (log_p - log_q)).sum(-1)
            p_tail = (1 - p.sum(-1)).clamp_min(1e-12)
            q_tail = (1 - log_q.exp().sum(-1)).clamp_min(1e-12)
            out.append(head + p_tail * (p_tail.log() - q_tail.log()))
        return torch.cat(out)


@torch.no_grad()
def logit_rows(runner: BlockRunner, budget: int = LOGIT_BYTES) -> int:
    """Positions whose fp32 logits fit in `budget` bytes: [rows, V] at a time."""
    vocab = runner.head.weight.shape[0]
    return max(1, budget // (4 * vocab))


@torch.no_grad()
def dense_targets(runner: BlockRunner, windows: torch.Tensor, topk: int | None = None, batch_size: int = 4,
                  check: Callable[[], None] | None = None,
                  on_batch: Callable[[int, int], None] | None = None) -> DenseTargets:
    """Run the (dense) model over the pool once and keep its log-probabilities, made a
    chunk of positions at a time (a 256k vocabulary's log-softmax is not held for a whole
    batch)."""
    full, top_lp, top_ix = [], [], []
    for start in range(0, len(windows), batch_size):
        if check is not None:
            check()
        batch = windows[start: start + batch_size]
        hidden = runner.final(batch)                                   # [B, L, d]
        flat = hidden.reshape(-1, hidden.shape[-1])
        rows = logit_rows(runner)
        parts: list[tuple[torch.Tensor, ...]] = []
        for s in range(0, flat.shape[0], rows):                        # [rows, V] at a time
            logp = F.log_softmax(runner.logits(flat[s: s + rows]).float(), dim=-1).cpu()
            if topk is None or topk >= logp.shape[-1]:
                parts.append((logp,))
            else:
                values, index = logp.topk(topk, dim=-1)
                parts.append((values, index.to(torch.int32)))
        shape = tuple(batch.shape)                                     # (B, L)
        if len(parts[0]) == 1:
            full.append(torch.cat([p[0] for p in parts]).reshape(*shape, -1))
        else:
            top_lp.append(torch.cat([p[0] for p in parts]).reshape(*shape, -1))
            top_ix.append(torch.cat([p[1] for p in parts]).reshape(*shape, -1))
        if on_batch is not None:
            on_batch(min(start + batch_size, len(windows)), len(windows))
    if full:
        return DenseTargets(windows, logp=torch.cat(full))
    return DenseTargets(windows, top_logp=torch.cat(top_lp), top_idx=torch.cat(top_ix))


# --- scoring candidates --------------------------------------------------------------------

class CandidateScorer:
    """Mean KL per token of each candidate genome on chosen pool windows.

    `set_layer(i, level)` puts layer i's variant at level index `level` into the model
    (Assembler.set_layer, which swaps only what changes).
    """

    def __init__(self, runner: BlockRunner, layer_blocks: Sequence[int], set_layer: Callable[[int, int], None],
                 targets: DenseTargets, batch_size: int = 4, share_prefixes: bool = True) -> None:
        self.runner = runner
        self.set_layer = set_layer
        self.targets = targets
        self.batch_size = batch_size
        self.share_prefixes = share_prefixes
        self.block_layers = [[i for i, b in enumerate(layer_blocks) if b == block] for block in range(runner.n_blocks)]
        self.forward_tokens = 0.0
        self.candidate_tokens = 0

    def _apply(self, block: int, key: tuple[int, ...]) -> None:
        for i, level in zip(self.block_layers[block], key):
            self.set_layer(i, level)

    def _key(self, genome: Genome, block: int) -> tuple[int, ...]:
        return tuple(genome[i] for i in self.block_layers[block])

    def _descend(self, block: int, hidden: torch.Tensor, inputs: BlockInputs, members: list[int],
                 genomes: Sequence[Genome], rows: torch.Tensor, totals: list[float],
                 check: Callable[[], None] | None = None) -> None:
        tokens = hidden.shape[0] * hidden.shape[1]
        if block == self.runner.n_blocks:
            flat = hidden.reshape(-1, hidden.shape[-1])               # [B·L, d], a chunk of positions at a time
            step = logit_rows(self.runner)
            kl = sum(float(self.targets.kl(self.runner.logits(flat[s: s + step]), rows, start=s).double().sum())
                     for s in range(0, flat.shape[0], step))
            for m in members:
                totals[m] += kl
            return
        groups: dict[tuple[int, ...], list[int]] = {}
        for m in members:
            groups.setdefault(self._key(genomes[m], block), []).append(m)
        for key in sorted(groups):
            if check is not None:          # between candidates (and shared prefixes)
                check()
            self._apply(block, key)
            out = self.runner.block(block, hidden, inputs)
            self.forward_tokens += tokens / self.runner.n_blocks
            self._descend(block + 1, out, inputs, groups[key], genomes, rows, totals, check)

    @torch.no_grad()
    def totals(self, genomes: Sequence[Genome], window_rows: Sequence[int],
               check: Callable[[], None] | None = None) -> tuple[list[list[float]], list[int]]:
        """Summed KL of each genome on each batch of the pool windows `window_rows` (sorted,
        `batch_size` at a time): (kl[batch][genome], tokens[batch]). A genome's batch sums
        do not depend on the other genomes scored with it (core/search/cluster.py relies on it)."""
        rows_all = torch.as_tensor(sorted(window_rows), dtype=torch.long)
        kl: list[list[float]] = []
        tokens: list[int] = []
        for start in range(0, len(rows_all), self.batch_size):
            if check is not None:
                check()
            rows = rows_all[start: start + self.batch_size]
            hidden, inputs = self.runner.embed(self.targets.windows[rows])
            tokens.append(hidden.shape[0] * hidden.shape[1])
            kl.append([0.0] * len(genomes))
            if self.share_prefixes:
                self._descend(0, hidden, inputs, list(range(len(genomes))), genomes, rows, kl[-1], check)
            else:
                for m in range(len(genomes)):
                    self._descend(0, hidden, inputs, [m], genomes, rows, kl[-1], check)
        self.candidate_tokens += sum(tokens) * len(genomes)
        return kl, tokens

    def score(self, genomes: Sequence[Genome], window_rows: Sequence[int],
              check: Callable[[], None] | None = None) -> list[float]:
        """Mean KL per token of each genome over the pool windows `window_rows`."""
        kl, tokens = self.totals(genomes, window_rows, check)
        return mean_kl(kl, tokens)


def mean_kl(kl: Sequence[Sequence[float]], tokens: Sequence[int]) -> list[float]:
    """Per-batch KL sums [batch][genome] and token counts → mean KL per token of each genome.
    The sums are added in batch order, from 0.0: the same float operations wherever each
    batch was computed."""
    means = []
    for m in range(len(kl[0]) if kl else 0):
        total = 0.0
        for batch in kl:
            total += batch[m]
        means.append(total / sum(tokens))
    return means


__all__ = ["DenseTargets", "dense_targets", "CandidateScorer", "mean_kl"]
