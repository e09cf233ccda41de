"""Quantization methods, registered by name (as `register_job` registers job kinds).

A method is one module in core/quant/methods/ that decorates its layer function:

    @register_quantizer("rtn-mse", "RTN, each group's range searched to minimise Σ_j H_jj (w_j − ŵ_j)²",
                        calibrated=True, sequential=True, clip="always")
    def rtn_mse(W, H, layer, options) -> tuple[QuantizedWeight, dict]: ...

with W [d_out, d_in] float32, H [d_in, d_in] = (2/N) Σ x xᵀ of the layer's inputs (None
without calibration), `layer` the plan entry (bits, group_size, sym) and `options` the
pipeline's QuantizeOptions; it returns the codes and the extra fields of the layer's event.
The quantize job's validation, the CLI's --method choices, the window's method menu, the
pipeline and the estimate read this registry: adding a method is adding that one file.

This module and the method modules import no torch at import time (their functions do):
the window process reads the registry for its menus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from ..errors import BadInput
from ..plugins import import_all, used_by as fields_used_by

ClipDefault = Literal["off", "on", "always"]   # the grid's range search: off / on unless --no-clip / always


@dataclass(frozen=True)
class Quantizer:
    """A quantization method's own small spec, and its layer function."""

    name: str
    quantize: Callable[..., tuple[Any, dict]]   # (W, H | None, layer, options) -> (QuantizedWeight, fields)
    description: str
    calibrated: bool            # needs calibration windows: its codes depend on H
    sequential: bool            # "true sequential": a group's H sees the block's earlier groups quantized
    clip: ClipDefault = "off"   # the grid's range search (core/quant/grid.ClipConfig) when --clip is not given
    uses: tuple[str, ...] = ()  # quantize-job fields only some methods read (the window greys them out)
    workspace: int = 0          # d_in × d_in fp32 matrices it holds besides H (the memory estimate)

    @property
    def label(self) -> str:
        """How messages name it: GPTQ, RTN, RTN-MSE."""
        return self.name.upper()


_QUANTIZERS: dict[str, Quantizer] = {}


def register_quantizer(name: str, description: str, *, calibrated: bool, sequential: bool,
                       clip: ClipDefault = "off", uses: tuple[str, ...] = (), workspace: int = 0) -> Callable:
    """Decorator for a layer function `quantize(W, H, layer, options) -> (codes, fields)`."""

    def wrap(fn: Callable) -> Callable:
        _QUANTIZERS[name] = Quantizer(name, fn, description, calibrated, sequential, clip, tuple(uses), workspace)
        return fn

    return wrap


def quantizers() -> dict[str, Quantizer]:
    """Every registered method; imports each module of core/quant/methods/ once."""
    from . import methods

    import_all(methods)
    return dict(_QUANTIZERS)


def quantizer_names() -> list[str]:
    """The --method choices, registration order (gptq first: the default)."""
    return sorted(quantizers(), key=lambda n: (n != "gptq", n))


def quantizer(name: str) -> Quantizer:
    """The method called `name`; an unknown name is bad input naming the known ones."""
    known = quantizers()
    if name not in known:
        raise BadInput(f"unknown quantization method {name!r}", f"use one of: {', '.join(quantizer_names())}")
    return known[name]


def used_by() -> dict[str, tuple[str, ...]]:
    """{job field: the methods that read it} for the fields only some methods read."""
    return fields_used_by(quantizers()[name] for name in quantizer_names())


__all__ = ["Quantizer", "register_quantizer", "quantizers", "quantizer_names", "quantizer", "used_by"]
