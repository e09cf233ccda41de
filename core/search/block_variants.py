"""One block's variants: its layer groups (layers sharing one Hessian) GPTQ-quantized at
every level, and who does it — this process as each block is handed over (`LocalBlocks`),
or Ray tasks, one per (block, level) (core/search/cluster_database.py).

Both call `quantize_groups`, so a level quantized alone gives the very codes, scales and
errors it gets in the all-levels sweep: GPTQ's rows are independent given H (quant/gptq.gptq_sweep),
and the stacked update adds each row's own products. The files written are the same
either way (tests/search/test_cluster_database.py checks them byte for byte).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch

from ..inventory import LayerInfo
from ..plan import resolve_group_size
from ..quant.gptq import gptq_multi, rel_error
from ..quant.tensor import QuantizedWeight

if TYPE_CHECKING:
    from .db_settings import DatabaseSettings

Variants = dict[str, dict[int, QuantizedWeight]]     # layer -> bits -> variant
Errors = dict[str, dict[int, float]]                 # layer -> bits -> relative output error
# done(block, variants, errors, seconds): a finished block, saved by the database
BlockDone = Callable[[int, Variants, Errors, float], None]


@dataclass
class LayerGroup:
    """Layers of one block that read the same input (q/k/v, gate/up): one Hessian, one sweep."""

    names: list[str]
    weights: list[torch.Tensor]    # each [d_out, d_in] float32
    H: torch.Tensor                # [d_in, d_in]
    group_size: int                # the requested group size resolved for d_in


def block_groups(in_block: Sequence[LayerInfo], owner: dict[str, str], hessians: dict[str, torch.Tensor],
                 weight_of: Callable[[LayerInfo], torch.Tensor], group_size: int) -> list[LayerGroup]:
    """The block's layers grouped by the layer whose input (and Hessian) they share, in order."""
    groups = []
    for head in [l for l in in_block if owner[l.name] == l.name]:
        members = [l for l in in_block if owner[l.name] == head.name]
        groups.append(LayerGroup([l.name for l in members], [weight_of(l).detach().float() for l in members],
                                 hessians[head.name], resolve_group_size(head.d_in, group_size)))
    return groups


def quantize_groups(groups: Sequence[LayerGroup], levels: Sequence[int], settings: "DatabaseSettings",
                    check: Callable[[], None] | None = None) -> tuple[Variants, Errors]:
    """Every layer of `groups` at every level of `levels`, with its relative output error;
    `check` (a cancel) between groups."""
    variants: Variants = {}
    errors: Errors = {}
    for group in groups:
        if check is not None:
            check()
        per_layer = gptq_multi(group.weights, group.H, list(levels), group.group_size, settings.sym,
                               settings.act_order, settings.static_groups, settings.damp, clip=settings.clip)
        for name, W, per_level in zip(group.names, group.weights, per_layer):
            variants[name] = dict(zip(levels, per_level))
            errors[name] = {bits: rel_error(W, qw.dequantize(), group.H) for bits, qw in variants[name].items()}
    return variants, errors


class BlockQuantizer(Protocol):
    """Takes a block's groups; calls `done` when its variants exist (at once, or later)."""

    def submit(self, block: int, groups: list[LayerGroup], done: BlockDone) -> None: ...

    def finish(self) -> None:
        """Return once every submitted block is done (and saved)."""


class LocalBlocks:
    """Quantizes each block in this process, as it is handed over (the default)."""

    def __init__(self, settings: "DatabaseSettings", levels: Sequence[int],
                 check: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.levels = list(levels)
        self.check = check

    def submit(self, block: int, groups: list[LayerGroup], done: BlockDone) -> None:
        started = time.time()
        variants, errors = quantize_groups(groups, self.levels, self.settings, self.check)
        done(block, variants, errors, time.time() - started)

    def finish(self) -> None:
        pass


__all__ = ["LayerGroup", "block_groups", "quantize_groups", "BlockQuantizer", "LocalBlocks", "Variants", "Errors",
           "BlockDone"]
