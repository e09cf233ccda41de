"""GPTQ: the AutoGPTQ / GPTQModel layout (GPTQModel, vLLM and SGLang read mixed plans through
its `dynamic` block; transformers only uniform ones). The writer is ../gptq.py."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from ..checks import act_order_warning, count_layers, fused_warning, split_fused
from ..readers import CALL_GPTQMODEL, CALL_HF, CALL_VLLM, LOADS, NOT_TRIED, REFUSES, TRANSFORMERS, ReaderVerdict
from ..registry import ExportFormat, FormatOption, LayerShape, PlanCheck, Settings, register_format

KERNEL_GROUPS = (32, 64, 128)         # group sizes GPTQ / vLLM fast kernels take
ISSUE_23 = "measured on a GPU machine (issue 23); GPTQModel needs torch >= 2.14.1 and is not installed here"
NEEDS = ("gptqmodel", "optimum")      # what transformers' GPTQ load imports

CHECKPOINT_FORMAT = FormatOption("checkpoint_format", ("auto", "v2"), "auto",
                                 "unknown --checkpoint-format {value!r}", "use auto or v2")


def write(source, folder: Path, options: dict) -> dict:
    from ..gptq import export_gptq

    return export_gptq(source, folder, options)


def plan_warnings(settings: Settings, check: PlanCheck) -> list[str]:
    out = act_order_warning(check)
    odd = [n for n, s in settings.items() if s.quantized and s.bits not in (2, 3, 4, 8)]
    if odd:
        out.append(f"{count_layers(odd)} at 5/6/7 bits: the GPTQ layout holds them, but GPTQModel and vLLM kernels "
                   "serve only 2, 3, 4 and 8 bits")
    groups = sorted({s.group_size for s in settings.values() if s.quantized and s.group_size not in KERNEL_GROUPS})
    if groups:
        out.append(f"group sizes {groups} are not 32/64/128: Marlin/Exllama kernels refuse them and loaders fall "
                   "back to slower kernels (or refuse)")
    keys = Counter(s.key() for s in settings.values())
    if len(keys) > 1:
        out.append("mixed settings are written as a GPTQModel `dynamic` block (regex -> overrides, `-:` for kept "
                   "layers), which GPTQModel, vLLM and SGLang read; readers without `dynamic` (transformers' "
                   "GPTQConfig, AutoGPTQ) apply the default bits to every layer")
    return out + fused_warning(split_fused(settings, lambda n: settings[n].key()), "GPTQ")


def readers(settings: Settings, options: dict) -> list[ReaderVerdict]:
    mixed = len({s.key() for s in settings.values()}) > 1
    gptqmodel = ReaderVerdict("GPTQModel", LOADS, CALL_GPTQMODEL,
                              "reads the per-layer `dynamic` overrides" if mixed else "",
                              ISSUE_23 + ("; mixed plan: 92.076 against Bitsmith's 92.078" if mixed else ""),
                              needs=("gptqmodel",))
    serve = ReaderVerdict("vLLM / SGLang", NOT_TRIED, CALL_VLLM,
                          "both read GPTQModel's `dynamic` block" if mixed else "",
                          "documented by GPTQModel; no GPU here")
    if mixed:
        hf = ReaderVerdict(TRANSFORMERS, REFUSES, CALL_HF,
                           "its GPTQConfig has no `dynamic`: every layer gets the default bits and the load "
                           "stops with `RuntimeError ... qweight | MISMATCH`; use GPTQModel.load",
                           ISSUE_23, NEEDS)
    else:
        hf = ReaderVerdict(TRANSFORMERS, LOADS, CALL_HF, "with gptqmodel and optimum installed",
                           ISSUE_23 + "; within 0.02% of Bitsmith", NEEDS)
    return [gptqmodel, hf, serve]


def layer_bytes(layer: LayerShape, check: PlanCheck) -> tuple[float, None]:
    """qweight K·b/32 × N int32, qzeros G × N·b/32 int32, fp16 scales G × N, g_idx K int32."""
    d_out, d_in, bits = layer.d_out, layer.d_in, layer.bits
    groups = max(d_in // max(layer.group_size, 1), 1)
    return (4 * math.ceil(d_in * bits / 32) * d_out + 4 * groups * math.ceil(d_out * bits / 32)
            + 2 * groups * d_out + 4 * d_in), None


FORMAT = register_format(ExportFormat(
    name="gptq", rank=10, write=write, readers=readers, plan_warnings=plan_warnings, layer_bytes=layer_bytes,
    options=(CHECKPOINT_FORMAT,),
    stores="GPTQ: codes packed in int32 at their own bit-width, fp16 scales and packed zero points per group; "
           "embeddings, head, norms and kept layers in fp16; mixed plans in GPTQModel's `dynamic` block. "
           "Loads in GPTQModel, vLLM, SGLang; transformers only when every layer has the same setting.",
    card_imports="from gptqmodel import GPTQModel; from transformers import AutoModelForCausalLM",
    card_notes="Layout: qweight/qzeros int32 packed along the input/output dimension (3-bit as 32 values in "
               "3 words), fp16 scales, g_idx in order (desc_act false: no act-order permutation is written). "
               "Mixed bit-widths are in the `dynamic` block; `-:` patterns mark layers kept at 16-bit.",
))
