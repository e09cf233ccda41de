"""GPTQ of several weights and bit-widths against one Hessian: the sweep lives in
core/quant/gptq.py (`gptq_sweep`); the variant database imports it from here."""

from ..quant.gptq import gptq_multi

__all__ = ["gptq_multi"]
