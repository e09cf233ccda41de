"""GPTQ (Frantar et al., 2022) for one linear layer, as ALGORITHMS.md gives it.

Pure functions: accumulate a Hessian from a layer's inputs, quantize weights against it,
measure the relative output error. One sweep quantizes every layer that reads the same input
at every level at once (`gptq_sweep`; the quantizer's `gptq_quantize` is one layer at one
level, the variant database's `gptq_multi` all of them). The block-by-block orchestration
is core/pipeline.py.

    H = (2/N) sum_n x_n x_nᵀ                        [d_in, d_in], fp32 running mean
    dead inputs (H_ii = 0): H_ii = 1, W[:, i] = 0
    act-order: columns by descending diag(H); groups' grids fixed up front ("static")
    H += λ I, λ = damp · mean(diag H); Cholesky fails -> λ x 10, retry
    U = cholesky(cholesky_inverse(cholesky(H)), upper=True)        so H⁻¹ = Uᵀ U
    per block of columns: q_i = Q(w_i), err = (w_i - q_i) / U_ii, W[:, i:] -= err · U[i, i:]
    after a block: W[:, later] -= Err_block @ U[block, later]   (one matmul)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .grid import ClipConfig, as_clip, check_bits, fit_grid
from .tensor import QuantizedWeight

MAX_DAMP = 10.0   # give up when λ would exceed 10 · mean(diag H)


class HessianAccumulator:
    """H = (2/N) Σ x xᵀ over every input row seen so far, as a running mean in fp32; the
    input covariance C = X Xᵀ / N = H / 2 (EoRA's) is the same sum."""

    def __init__(self, d_in: int, device: torch.device | str = "cpu") -> None:
        self.H = torch.zeros(d_in, d_in, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """x [..., d_in]: a batch of layer inputs (any leading shape)."""
        x = x.detach().reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        n_new = x.shape[0]
        if n_new == 0:
            return
        self.H.mul_(self.n / (self.n + n_new))
        self.n += n_new
        x = x * math.sqrt(2.0 / self.n)
        self.H.addmm_(x.t(), x)

    @property
    def C(self) -> torch.Tensor:
        """C = X Xᵀ / N [d_in, d_in] = H / 2 (exact: a power of two)."""
        return self.H / 2


class SharedInputHessians:
    """H of each layer, fed `add(name, x)` with the inputs the layers receive, in call order.

    A layer whose input is the very tensor the call before it received (q/k/v read one normed
    hidden state, gate/up another) shares that layer's accumulator, so H is accumulated once
    for all of them; a layer's first call decides whom it shares with."""

    def __init__(self) -> None:
        self.acc: dict[str, HessianAccumulator] = {}     # owner -> its accumulator
        self.owner: dict[str, str] = {}                  # layer -> the layer whose H it shares
        self._last: tuple[object, str | None] = (None, None)

    def add(self, name: str, x: torch.Tensor) -> None:
        """x [..., d_in]: one call's input of layer `name`."""
        last_x, last_name = self._last
        if name not in self.owner:
            self.owner[name] = self.owner[last_name] if x is last_x and last_name is not None else name
        self._last = (x, name)
        if self.owner[name] == name:
            if name not in self.acc:
                self.acc[name] = HessianAccumulator(x.shape[-1], x.device)
            self.acc[name].add(x)

    def hessians(self, names) -> dict[str, torch.Tensor]:
        """{layer: H [d_in, d_in]} of `names` (a shared H is the same tensor)."""
        return {n: self.acc[self.owner[n]].H for n in names}


def output_error(E: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    """tr(E H Eᵀ) / tr(W H Wᵀ) = ‖E X‖² / ‖W X‖² for an error E [d_out, d_in] of the weight W
    and H ∝ X Xᵀ of the layer's inputs X (the factor cancels: a Hessian or a covariance)."""
    num = ((E @ H) * E).sum()
    den = ((W @ H) * W).sum()
    return float(num / den) if float(den) > 0 else float(num > 0)


def rel_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) = ‖(W − Ŵ) X‖² / ‖W X‖² for X the calibration inputs."""
    W = W.to(H.device, torch.float32)
    return output_error(W - W_hat.to(H.device, torch.float32), W, H)


@dataclass
class GPTQInfo:
    damp: float            # the relative dampening that worked (damp · 10^retries)
    retries: int           # Cholesky failures before it worked
    dead_inputs: int       # columns with H_ii = 0
    act_order: bool
    static_groups: bool

    def to_dict(self) -> dict:
        return {"damp": self.damp, "damp_retries": self.retries, "dead_inputs": self.dead_inputs,
                "act_order": self.act_order, "static_groups": self.static_groups}


def _inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float, int]:
    """Upper U with H⁻¹ = Uᵀ U after dampening, raising λ tenfold while Cholesky fails."""
    mean_diag = torch.mean(torch.diag(H)).item()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    tries, rel = 0, damp
    while rel <= MAX_DAMP:
        L, info = torch.linalg.cholesky_ex(H + rel * mean_diag * eye)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0 and torch.isfinite(U).all():
                return U, rel, tries
        tries, rel = tries + 1, rel * 10
    raise ValueError(f"the Hessian is not positive definite even with dampening {rel}")


def _block_size(block_size: int, group_size: int) -> int:
    """Lazy-update block of whole groups, so a group never straddles two blocks."""
    return group_size * max(1, block_size // group_size) if group_size <= block_size else group_size


def _fit_rows(W: torch.Tensor, row_slices: list[tuple[slice, int]], sym: bool, clip: ClipConfig | None,
              importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [R] of the group W [R, g], each row slice with its own bits."""
    scale = torch.empty(W.shape[0], device=W.device)
    zero = torch.empty(W.shape[0], device=W.device)
    for rows, bits in row_slices:
        scale[rows], zero[rows] = fit_grid(W[rows], bits, sym, clip, importance)
    return scale, zero


@torch.no_grad()
def gptq_sweep(weights: Sequence[torch.Tensor], H: torch.Tensor, levels: Sequence[int], group_size: int,
               sym: bool = False, act_order: bool = False, static_groups: bool = False, damp: float = 0.01,
               block_size: int = 128, clip: bool | ClipConfig | None = None
               ) -> tuple[list[list[QuantizedWeight]], GPTQInfo]:
    """([layer][level] QuantizedWeight, GPTQInfo) for `weights` (each [d_out_k, d_in]) sharing H.

    GPTQ treats the rows of W independently given H: the update after quantizing column i is
    W[r, i:] −= err_r · U[i, i:] for each row r, with the same U. So every layer that reads
    this input, at every level, is stacked row-wise, [Σ levels·layers·d_out, d_in], and swept
    once; each row keeps its own grid and its own maximum code 2^bits − 1.

    Without act-order each group's grid is fitted when the sweep reaches the group, from the
    weights as updated so far. With act-order the grids are fixed up front from the original
    weights (static groups), so the codes keep the plain group layout and need no `g_idx` at
    inference; act-order therefore always uses static groups.
    """
    for bits in levels:
        check_bits(bits)
    d_in = H.shape[0]
    if d_in % group_size:
        raise ValueError(f"group size {group_size} does not divide d_in {d_in}")
    device = H.device
    H = H.to(torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    # rows: level-major blocks of every layer's rows
    blocks, row_slices, start = [], [], 0
    for bits in levels:
        for W in weights:
            blocks.append(W.detach().to(device, torch.float32))
            row_slices.append((slice(start, start + W.shape[0]), bits))
            start += W.shape[0]
    W = torch.cat(blocks).clone()                       # [R, d_in]
    W[:, dead] = 0.0
    maxq = torch.cat([torch.full((s.stop - s.start,), 2.0 ** b - 1, device=device) for s, b in row_slices])
    n_groups = d_in // group_size
    clip_cfg = as_clip(clip)
    static = static_groups or act_order
    scales = torch.zeros(W.shape[0], n_groups, device=device)
    zeros = torch.zeros(W.shape[0], n_groups, device=device)
    diag = torch.diag(H)
    if static:     # every group's grid from the original (dead-zeroed) weights
        for g in range(n_groups):
            cols = slice(g * group_size, (g + 1) * group_size)
            scales[:, g], zeros[:, g] = _fit_rows(W[:, cols], row_slices, sym, clip_cfg, diag[cols])
    perm = torch.argsort(diag, descending=True) if act_order else torch.arange(d_in, device=device)
    W, H = W[:, perm], H[perm][:, perm]
    group_of = (perm // group_size).tolist()      # original group of the column at each position
    U, used_damp, retries = _inverse_cholesky(H, damp)
    diag_perm = torch.diag(H)

    codes = torch.zeros(W.shape, dtype=torch.uint8, device=device)
    blk = _block_size(block_size, group_size)
    for i1 in range(0, d_in, blk):
        i2 = min(i1 + blk, d_in)
        W1 = W[:, i1:i2].clone()                  # [R, count], updated column by column
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of[col]
            if not static and col % group_size == 0:      # grid from the updated weights
                scales[:, g], zeros[:, g] = _fit_rows(W1[:, i: i + group_size], row_slices, sym, clip_cfg,
                                                      diag_perm[col: col + group_size])
            w, s, z = W1[:, i], scales[:, g], zeros[:, g]
            q = torch.clamp(torch.round(w / s) + z, torch.zeros_like(maxq), maxq)
            codes[:, col] = q.to(torch.uint8)
            err = (w - s * (q - z)) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            Err1[:, i] = err
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)

    codes = codes[:, torch.argsort(perm)]
    out: list[list[QuantizedWeight]] = [[None] * len(levels) for _ in weights]  # type: ignore[list-item]
    k = 0
    for li, bits in enumerate(levels):
        for wi in range(len(weights)):
            rows = row_slices[k][0]
            out[wi][li] = QuantizedWeight(codes=codes[rows].contiguous(), scales=scales[rows].contiguous(),
                                          zeros=zeros[rows].contiguous(), bits=bits, group_size=group_size,
                                          sym=sym)
            k += 1
    return out, GPTQInfo(damp=used_damp, retries=retries, dead_inputs=int(dead.sum()), act_order=act_order,
                         static_groups=static)


def gptq_multi(weights: Sequence[torch.Tensor], H: torch.Tensor, levels: Sequence[int], group_size: int,
               sym: bool = False, act_order: bool = False, static_groups: bool = True, damp: float = 0.01,
               block_size: int = 128, clip: bool | ClipConfig | None = None) -> list[list[QuantizedWeight]]:
    """[layer][level] QuantizedWeight of every layer reading the input of H, at every level
    (the variant database's sweep; `gptq_sweep`)."""
    return gptq_sweep(weights, H, levels, group_size, sym, act_order, static_groups, damp, block_size, clip)[0]


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, sym: bool = False,
                  act_order: bool = False, static_groups: bool = False, damp: float = 0.01,
                  block_size: int = 128, clip: bool | ClipConfig | None = None) -> tuple[QuantizedWeight, GPTQInfo]:
    """Quantize W [d_out, d_in] against the Hessian H [d_in, d_in] of its inputs: the sweep
    of one layer at one level."""
    [[qw]], info = gptq_sweep([W], H, [bits], group_size, sym, act_order, static_groups, damp, block_size, clip)
    return qw, info
