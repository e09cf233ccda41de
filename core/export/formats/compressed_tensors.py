"""compressed-tensors: what llm-compressor writes, transformers loads and vLLM serves (4/8-bit).
The layout rule is ../ct_policy.py; the writer is ../compressed.py."""

from __future__ import annotations

import math
from pathlib import Path

from ..checks import act_order_warning, count_layers, fused_warning, split_fused
from ..ct_policy import CT_LAYOUTS, INT8, PACKED, ct_setting, predicted_ct_groups
from ..readers import (CALL_CT_LIBRARY, CALL_HF, CALL_HF_DEQUANT, CALL_VLLM, LOADS, MISREADS, NOT_TRIED, REFUSES,
                       TRANSFORMERS, ReaderVerdict)
from ..registry import ExportFormat, FormatOption, LayerShape, PlanCheck, Settings, register_format
from ..settings import LayerSetting

TESTS = "tests/export/test_readers.py (transformers 5.25, compressed-tensors 0.20.1)"
NEEDS = ("compressed_tensors",)

CT_LAYOUT = FormatOption("ct_layout", CT_LAYOUTS, "sym", "unknown --ct-layout {value!r}",
                         f"use one of: {', '.join(CT_LAYOUTS)}")


def write(source, folder: Path, options: dict) -> dict:
    from ..compressed import export_compressed

    return export_compressed(source, folder, options)


def plan_warnings(settings: Settings, check: PlanCheck) -> list[str]:
    out = act_order_warning(check)
    stored = {n: ct_setting(s, check.ct_layout) for n, s in settings.items() if s.quantized}
    widened = [n for n, s in settings.items() if s.quantized and stored[n][0] != s.bits]
    if widened:
        out.append(f"{count_layers(widened)} are asymmetric: written as symmetric codes q - z with one more bit "
                   "(the same weights, one more bit per weight) so that transformers loads the file; "
                   "--ct-layout asym keeps the plan's bits, and transformers then refuses the file")
    int8 = [n for n, key in stored.items() if key[3] == INT8]
    if int8:
        out.append(f"{count_layers(int8)} are asymmetric 8-bit: written int-quantized (one int8 per weight and its "
                   "zero point), which transformers reads")
    unserved = [n for n, key in stored.items() if key[0] not in (4, 8)]
    if unserved:
        bits = sorted({stored[n][0] for n in unserved})
        out.append(f"{count_layers(unserved)} are stored at {bits} bits: vLLM's compressed-tensors WNA16 scheme "
                   "takes 4 and 8 bits only (WNA16_SUPPORTED_BITS in its source; not tried here)")
    return out + fused_warning(split_fused(settings, lambda n: stored.get(n) or settings[n].keep), "compressed-tensors")


def _dequantize_verdict(groups: set[tuple]) -> ReaderVerdict:
    """transformers' `dequantize=True` decompresses every layer with the first config group's
    scheme (CompressedTensorsDequantize, get_dense_scheme): right with one group; with more,
    silently wrong when every group stores the same tensors (same symmetry and format), and a
    conversion error when some layer lacks a tensor the first scheme reads."""
    if len(groups) <= 1:
        return ReaderVerdict(TRANSFORMERS, LOADS, CALL_HF_DEQUANT, "one config group", TESTS, NEEDS)
    first = f"the first of the {len(groups)} config groups' schemes"
    if len({(key[2], key[3]) for key in groups}) == 1:
        return ReaderVerdict(TRANSFORMERS, MISREADS, CALL_HF_DEQUANT,
                             f"with dequantize=True every layer is decompressed with {first}: no error, wrong "
                             "weights; load without dequantize", TESTS, NEEDS)
    return ReaderVerdict(TRANSFORMERS, REFUSES, CALL_HF_DEQUANT,
                         f"with dequantize=True every layer is decompressed with {first}, and layers of the other "
                         "groups lack its tensors: a weight-conversion error; load without dequantize",
                         TESTS, NEEDS)


def readers(settings: Settings, options: dict) -> list[ReaderVerdict]:
    layout = options.get("ct_layout", "sym")
    groups = {tuple(g) for g in options["groups"]} if options.get("groups") else predicted_ct_groups(settings, layout)
    out = []
    if any(not sym and fmt == PACKED for _, _, sym, fmt in groups):
        out.append(ReaderVerdict(TRANSFORMERS, REFUSES, CALL_HF,
                                 "asymmetric pack-quantized layers stop the load with a weight_zero_point size "
                                 "mismatch (compressed-tensors 0.20.1 compresses the empty model without packing "
                                 "the zero point); export with --ct-layout sym", TESTS, NEEDS))
    else:
        int8 = any(fmt != PACKED for *_, fmt in groups)
        why = "no asymmetric pack-quantized layer" + ("; asymmetric 8-bit layers are int-quantized" if int8 else "")
        out.append(ReaderVerdict(TRANSFORMERS, LOADS, CALL_HF, why, TESTS, NEEDS))
    out.append(_dequantize_verdict(groups))
    out.append(ReaderVerdict("compressed-tensors", LOADS, CALL_CT_LIBRARY,
                             "the library's own decompression, layer by layer", TESTS, NEEDS))
    odd = sorted({key[0] for key in groups} - {4, 8})
    if odd:
        out.append(ReaderVerdict("vLLM", REFUSES, CALL_VLLM,
                                 f"layers stored at {odd} bits: its compressed-tensors WNA16 scheme takes 4 and 8 "
                                 "bits only", "vLLM's source (WNA16_SUPPORTED_BITS); not run here"))
    else:
        out.append(ReaderVerdict("vLLM", NOT_TRIED, CALL_VLLM, "", "no GPU here"))
    return out


def layer_bytes(layer: LayerShape, check: PlanCheck) -> tuple[float, None]:
    """weight_packed N × ⌈K·b'/32⌉ int32 and fp16 scales N × G, b' the stored bits (ct_policy);
    packed zero points ⌈N·b/32⌉ × G for asymmetric groups; int8 weights and zero points for
    asymmetric 8-bit layers under the "sym" layout."""
    d_out, d_in = layer.d_out, layer.d_in
    groups = max(d_in // max(layer.group_size, 1), 1)
    bits, _, sym, kind = ct_setting(LayerSetting(layer.bits, layer.group_size, layer.sym, None), check.ct_layout)
    if kind == INT8:                    # int8 weights, int8 zero points, fp16 scales
        return d_out * d_in + 3 * d_out * groups, None
    zeros = 0 if sym else 4 * math.ceil(d_out * bits / 32) * groups
    return 4 * d_out * math.ceil(d_in * bits / 32) + 2 * d_out * groups + zeros + 16, None


def card_lines(report: dict) -> list[str]:
    if "stored_code_bits" not in report:
        return []
    return [f"Layout `{report['ct_layout']}`: the file stores {report['stored_code_bits']:.3f} "
            f"code bits per weight; config groups: {report['config_groups']}."]


FORMAT = register_format(ExportFormat(
    name="compressed-tensors", rank=20, write=write, readers=readers, plan_warnings=plan_warnings,
    layer_bytes=layer_bytes, card_lines=card_lines, options=(CT_LAYOUT,),
    stores="compressed-tensors pack-quantized, every layer symmetric: asymmetric layers take one "
           "more bit (8-bit ones int8 with zero points), so transformers loads any plan; fp16 "
           "scales, the rest in fp16. Also the compressed-tensors library; vLLM for 4/8-bit layers.",
    card_imports="from transformers import AutoModelForCausalLM, CompressedTensorsConfig",
    card_notes="Format pack-quantized (int-quantized for asymmetric 8-bit layers under the sym layout), "
               "one config group per (bits, group size, symmetry, format); layers kept at 16-bit are "
               "in `ignore`. Layout `sym` writes asymmetric b-bit layers as symmetric (b+1)-bit codes "
               "q - z (the same weights), which transformers loads; layout `asym` keeps the zero "
               "points at the plan's bits.",
))
