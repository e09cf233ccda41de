"""A variant database whose Hessians see quantized inputs, as the quantize job's do.

The reference database (core/search/database.py) quantizes every layer against Hessians of
the dense model. The quantize job does not: it runs block by block, each block's inputs
coming from the blocks before it already quantized ("error propagation", true-sequential
inside a block). On the default model that alone moves uniform 3-bit from 77.8 (the
database's variants) to 67.6 (the pipeline), so a search scored on dense-Hessian variants
optimises a model other than the one `quantize --plan` then makes.

Here the database is built by that same pass. The model is quantized uniformly at one level
(the propagation level, the smallest level at or above the search target): for each layer,
at the moment the pipeline has its Hessian (inputs from the quantized blocks and groups
before it), every level is GPTQ-quantized against that Hessian and stored; the
propagation-level variant goes into the model so the next layers see it. At that level the
database then holds exactly what `quantize` makes of a uniform plan; the other levels are
what it makes of a layer whose neighbours are near the target.

The model's dense weights are put back after each block has produced its outputs, so the
search that follows works on the dense model. A killed build resumes: finished blocks are
re-applied from their files (propagation-level variants) to recreate the inputs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

from ..capture import BlockInputs, iterate_blocks
from ..inventory import LayerInfo, find_blocks, linear_weight
from ..pipeline import BlockQuantizer, QuantizeOptions, write_weight
from ..plan import plan_from_bits
from ..quant.gptq import gptq_multi, rel_error
from ..quant.grid import ClipConfig
from ..quant.tensor import QuantizedWeight

if TYPE_CHECKING:
    from .db_settings import DatabaseSettings

# save_block(block, {layer: {bits: variant}}, {layer: {bits: rel_error}}, seconds)
SaveBlock = Callable[[int, dict[str, dict[int, QuantizedWeight]], dict[str, dict[int, float]], float], None]


def propagation_level(levels: Sequence[int], target_bits: float) -> int:
    """The level the inputs propagate through: the smallest level >= the target."""
    above = [b for b in sorted(levels) if b >= target_bits - 1e-9]
    return above[0] if above else max(levels)


class VariantBlockQuantizer(BlockQuantizer):
    """The pipeline's block quantizer, storing every level of each layer it meets.

    `variants[name][bits]` and `errors[name][bits]` fill as blocks are processed; the layer
    itself receives the propagation-level variant, as a uniform plan would put there."""

    def __init__(self, prefix: str, settings: "DatabaseSettings", levels: Sequence[int], layers: Sequence[LayerInfo],
                 done_blocks: dict[int, dict[str, QuantizedWeight]], check: Callable[[], None] | None) -> None:
        bits = settings.propagate_bits
        plan = plan_from_bits(layers, {l.name: bits for l in layers}, settings.group_size, settings.sym)
        options = QuantizeOptions(method="gptq", damp=settings.damp, act_order=settings.act_order,
                                  static_groups=settings.static_groups,
                                  clip=ClipConfig(enabled=True) if settings.clip else None)
        super().__init__(prefix, plan, options, calibrated=True, on_layer=None, on_block_done=None, check=check)
        self.settings, self.levels = settings, list(levels)
        self.done_blocks = done_blocks          # {block: {name: propagation-level variant}} already built
        self.variants: dict[str, dict[int, QuantizedWeight]] = {}
        self.errors: dict[str, dict[int, float]] = {}
        self.dense: dict[str, torch.Tensor] = {}    # this block's dense weights, put back afterwards

    def __call__(self, index: int, block: nn.Module, inputs: BlockInputs) -> None:
        self.dense = {n: linear_weight(m).detach().clone() for n, m in block.named_modules()
                      if f"{self.prefix}.{index}.{n}" in self.plan.entries}
        if index in self.done_blocks:           # resume: recreate this block's quantized outputs
            for name, qw in self.done_blocks[index].items():
                write_weight(block.get_submodule(name[len(f"{self.prefix}.{index}."):]), qw.dequantize())
            return
        super().__call__(index, block, inputs)

    def restore(self, block: nn.Module) -> None:
        """Put the block's dense weights back (after it produced the next block's inputs)."""
        for sub, W in self.dense.items():
            write_weight(block.get_submodule(sub), W)
        self.dense = {}

    def _quantize_one(self, name: str, index: int, module: nn.Module, H: torch.Tensor | None) -> QuantizedWeight:
        s = self.settings
        W = linear_weight(module).detach().float().clone()           # [d_out, d_in]
        group = self.plan.entries[name].group_size
        per_level = gptq_multi([W], H, self.levels, group, s.sym, s.act_order, s.static_groups, s.damp,
                               clip=s.clip)[0]
        self.variants[name] = dict(zip(self.levels, per_level))
        self.errors[name] = {b: rel_error(W, qw.dequantize(), H) for b, qw in self.variants[name].items()}
        chosen = self.variants[name][s.propagate_bits]
        write_weight(module, chosen.dequantize())
        return chosen


@torch.no_grad()
def build_propagated(model: nn.Module, settings: "DatabaseSettings", levels: Sequence[int],
                     layers: Sequence[LayerInfo], windows: torch.Tensor,
                     done_blocks: dict[int, dict[str, QuantizedWeight]],
                     save_block: SaveBlock,
                     check: Callable[[], None] | None = None) -> None:
    """One pipeline pass over `model` (left dense at the end); `save_block(block, variants,
    errors, seconds)` is called as each unfinished block is done."""
    prefix, blocks = find_blocks(model)
    quantizer = VariantBlockQuantizer(prefix, settings, levels, layers, done_blocks, check)
    started = {"t": time.time()}

    def on_outputs(index: int, _outputs: BlockInputs) -> None:
        quantizer.restore(blocks[index])
        if index not in done_blocks:
            save_block(index, quantizer.variants, quantizer.errors, time.time() - started["t"])
            quantizer.variants, quantizer.errors = {}, {}
        started["t"] = time.time()

    iterate_blocks(model, windows, quantizer, batch_size=quantizer.options.batch_size, check=check,
                   on_outputs=on_outputs)
