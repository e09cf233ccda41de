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
    """Puts genome levels into `model`'s layers (`space.levels[level]` bits each).

    A layer's weight parameter is swapped for one holding the variant (in the home dtype, on
    the home device: the CPU for a model kept off the work device, whose blocks are
    onloaded per call); level 16 puts the original parameter back."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[LayerInfo], space: SearchSpace,
                 database: VariantDatabase | None) -> None:
        modules = dict(model.named_modules())
        self.model = model
        self.modules = [modules[l.name] for l in layers]
        self.layers = list(layers)
        self.space = space
        self.database = database
        self.dense = [m._parameters["weight"] for m in self.modules]   # stored orientation (Conv1D: [d_in, d_out])
        self.current: list[int | None] = [None] * len(self.modules)   # level held; None = dense

    def _put(self, i: int, weight: torch.nn.Parameter) -> None:
        self.modules[i]._parameters["weight"] = weight

    def set_layer(self, i: int, level: int) -> None:
        """Layer i at level index `level`; a no-op when it already holds that level."""
        if self.current[i] == level:
            return
        self.current[i] = level
        bits = self.space.levels[level]
        if bits == KEPT:
            self._put(i, self.dense[i])
            return
        if self.database is None:
            raise ValueError("a quantized level needs the variant database")
        dense = self.dense[i]
        if bits in self.database.levels:
            W = self.database.weight(self.layers[i].name, bits)    # [d_out, d_in]
        else:
            W = self._rtn(i, bits)
        home = torch.device("cpu") if dense.device.type == "meta" else dense.device
        W = W.to(home, dense.dtype)
        self._put(i, torch.nn.Parameter(W.t() if self.layers[i].transposed else W, requires_grad=False))

    def _rtn(self, i: int, bits: int) -> torch.Tensor:
        """A level the database does not hold (a spike-kept layer at 8 bits): round-to-nearest
        on the database's grid settings. At 8 bits, g64, RTN and GPTQ differ by noise (RTN
        8-bit of the whole default model: WikiText 36.04 against 36.08 dense)."""
        from ..offload import home_tensor
        from ..plan import resolve_group_size
        from ..quant.grid import quantize_rtn

        stored = home_tensor(self.model, f"{self.layers[i].name}.weight", self.dense[i]).detach()
        dense = stored.t() if self.layers[i].transposed else stored      # [d_out, d_in]
        settings = self.database.meta["settings"]
        g = resolve_group_size(dense.shape[1], settings["group_size"])
        qw = quantize_rtn(dense.float(), bits, g, bool(settings["sym"]))
        return qw.dequantize(torch.float32)

    def assemble(self, genome: Genome) -> None:
        for i, level in enumerate(genome):
            self.set_layer(i, level)

    def restore(self) -> None:
        for i in range(len(self.modules)):
            self._put(i, self.dense[i])
        self.current = [None] * len(self.modules)


__all__ = ["Assembler"]
