"""Candidate models: swap per-layer variants into one model, no requantizing.

The model object is reused for every candidate; each linear layer's weight tensor is
replaced by the dequantized variant of its level (or the original, dense weight for the
kept level 16). The original tensors are held here, so the dense model can be restored.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..inventory import LayerInfo
from .database import KEPT, VariantDatabase
from .genome import Genome, SearchSpace


class Assembler:
    """Puts genome levels into `model`'s layers (`space.levels[level]` bits each)."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[LayerInfo], space: SearchSpace,
                 database: VariantDatabase | None) -> None:
        modules = dict(model.named_modules())
        self.modules = [modules[l.name] for l in layers]
        self.layers = list(layers)
        self.space = space
        self.database = database
        self.dense = [m.weight.data for m in self.modules]   # stored orientation (Conv1D: [d_in, d_out])
        self.current: list[int | None] = [None] * len(self.modules)   # level held; None = dense

    def set_layer(self, i: int, level: int) -> None:
        """Layer i at level index `level`; a no-op when it already holds that level."""
        if self.current[i] == level:
            return
        self.current[i] = level
        bits = self.space.levels[level]
        module = self.modules[i]
        if bits == KEPT:
            module.weight.data = self.dense[i]
            return
        if self.database is None:
            raise ValueError("a quantized level needs the variant database")
        if bits in self.database.levels:
            W = self.database.weight(self.layers[i].name, bits).to(self.dense[i].dtype)   # [d_out, d_in]
        else:
            W = self._rtn(i, bits)
        module.weight.data = W.t() if self.layers[i].transposed else W

    def _rtn(self, i: int, bits: int) -> torch.Tensor:
        """A level the database does not hold (a spike-kept layer at 8 bits): round-to-nearest
        on the database's grid settings. At 8 bits, g64, RTN and GPTQ differ by noise (RTN
        8-bit of the whole default model: WikiText 36.04 against 36.08 dense)."""
        from ..plan import resolve_group_size
        from ..quant.grid import quantize_rtn

        dense = self.dense[i].t() if self.layers[i].transposed else self.dense[i]      # [d_out, d_in]
        settings = self.database.meta["settings"]
        g = resolve_group_size(dense.shape[1], settings["group_size"])
        qw = quantize_rtn(dense, bits, g, bool(settings["sym"]))
        return qw.dequantize(torch.float32).to(dense.dtype)

    def assemble(self, genome: Genome) -> None:
        for i, level in enumerate(genome):
            self.set_layer(i, level)

    def restore(self) -> None:
        for module, W in zip(self.modules, self.dense):
            module.weight.data = W
        self.current = [None] * len(self.modules)


__all__ = ["Assembler"]
