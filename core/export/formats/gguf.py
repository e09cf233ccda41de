"""GGUF for llama.cpp (and transformers' GGUF loader), Llama architectures. The block-type
policy is ../gguf_policy.py; the writer is ../gguf_file.py (blocks: ../gguf_blocks.py)."""

from __future__ import annotations

from pathlib import Path

from ..checks import count_layers
from ..gguf_policy import BITS_PER_WEIGHT, BLOCK, GGUF_ARCHES, planned_block_type
from ..readers import CALL_HF_GGUF, CALL_LLAMA, LOADS, TRANSFORMERS, ReaderVerdict
from ..registry import ExportFormat, FormatOption, LayerShape, PlanCheck, Settings, register_format

TESTS = "tests/export/test_gguf.py (transformers 5.25, gguf 0.19)"
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")     # GGUF's token_embd and output

LOWBIT = FormatOption("lowbit", ("lossless", "kquant"), "lossless", "unknown --lowbit mode {value!r}",
                      "use lossless or kquant",
                      labels={"lossless": "lossless (2/3-bit stored exactly in Q4 blocks)",
                              "kquant": "kquant (llama.cpp K-quants, approximate)"})
EMBED_BITS = FormatOption("embed_bits", (8, 16), 8, "--embed-bits {value} is not offered",
                          "use 8 (Q8_0) or 16 (F16)", convert=int)


def write(source, folder: Path, options: dict) -> dict:
    from ..gguf_file import export_gguf

    return export_gguf(source, folder, options)


def plan_warnings(settings: Settings, check: PlanCheck) -> list[str]:
    out = []
    if check.arch is not None and check.arch not in GGUF_ARCHES:
        out.append(f"GGUF export writes Llama-architecture models only; this model is {check.arch!r} (cannot export)")
    low = [n for n, s in settings.items() if s.quantized and s.bits in (2, 3)]
    if low and check.lowbit == "lossless":
        out.append(f"{count_layers(low)} at 2/3 bits are stored losslessly in a 4-bit block type (Q4_0, 4.5 bits "
                   "per weight, with integer zero points; Q4_1, 5 bits, with fractional ones): exact, but larger "
                   "than the plan's size; choose --lowbit kquant for Q2_K/Q3_K")
    elif low:
        out.append(f"{count_layers(low)} at 2/3 bits are re-encoded to K-quants (Q2_K / Q3_K): smaller, with an added "
                   "error reported per layer")
    unaligned = [n for n, s in settings.items() if s.quantized and s.group_size % BLOCK]
    if unaligned:
        out.append(f"{count_layers(unaligned)} have a group size that is not a multiple of {BLOCK}: no GGUF block "
                   "type holds them exactly; stored as F16 (the dequantized weights, fp16-rounded)")
    mid = [n for n, s in settings.items() if s.quantized and 5 <= s.bits <= 7 and s.group_size % BLOCK == 0]
    if mid:
        out.append(f"{count_layers(mid)} at 5-7 bits are stored exactly as Q8_0 (8.5 bits per weight)")
    eight = [n for n, s in settings.items() if s.quantized and s.bits == 8 and not s.sym]
    if eight:
        out.append(f"{count_layers(eight)} are asymmetric 8-bit: Q8_0 holds them exactly only where codes minus zero "
                   "fit in int8; other layers are stored as F16")
    if check.embed_bits == 8:
        out.append("the token embedding and the output head are stored as Q8_0 (8.5 bits per weight instead of 16; "
                   "the report gives the measured error); --embed-bits 16 keeps them F16")
    return out


def data_warnings(report: dict) -> list[str]:
    """The layers the file does not hold exactly (F16 fallbacks, K-quant re-encodings)."""
    names = report.get("not_exact")
    if not names:
        return []
    worst = max(names, key=lambda n: report["layers"][n]["rel_error"])
    return [f"{len(names)} layers are not stored exactly in GGUF; the largest added relative weight error "
            f"is {report['layers'][worst]['rel_error']:.3g} in {worst} "
            f"({report['layers'][worst].get('note', '')})"]


def readers(settings: Settings, options: dict) -> list[ReaderVerdict]:
    return [ReaderVerdict("llama.cpp", LOADS, CALL_LLAMA, "", "bitsmith verify with llama-perplexity: Bitsmith's "
                          "README.md, tests/export/test_readers.py (when it is on PATH)"),
            ReaderVerdict(TRANSFORMERS, LOADS, CALL_HF_GGUF, "dequantizes every tensor to float", TESTS, ("gguf",))]


def layer_bytes(layer: LayerShape, check: PlanCheck) -> tuple[float, str]:
    """32-weight blocks (Q4_0 4.5 bits, Q4_1 5, Q8_0 8.5), K-quants (Q2_K 2.625, Q3_K 3.4375)
    or F16, as gguf_policy decides from the plan."""
    kind = planned_block_type(layer.bits, layer.d_in, layer.group_size, layer.sym, layer.integer_zeros, check.lowbit)
    return layer.d_out * layer.d_in * BITS_PER_WEIGHT[kind] / 8, kind


def dense_bytes(name: str, shape: list[int], check: PlanCheck) -> float:
    """Norms F32; the token embedding and the head Q8_0 with embed_bits 8 (when 32 divides
    their width); every other tensor F16."""
    n = 1
    for d in shape:
        n *= d
    if check.embed_bits == 8 and name in EMBEDDINGS and shape[-1] % BLOCK == 0:
        return n * BITS_PER_WEIGHT["Q8_0"] / 8
    return 4 * n if len(shape) == 1 else 2 * n


def card_lines(report: dict) -> list[str]:
    if "quantized_bits_per_weight" not in report:
        return []
    return [f"In this GGUF file the quantized layers take {report['quantized_bits_per_weight']:.3f} "
            f"bits per weight (the plan's {report['plan_bits_per_weight']:.3f}); block types: {report['types']}."]


def summary_lines(report: dict) -> list[str]:
    return [f"GGUF block types {report['types']}, {report['quantized_bits_per_weight']:.3f} bits/weight "
            f"in the file, max relative weight error {report['max_rel_error']:.2e}"]


FORMAT = register_format(ExportFormat(
    name="gguf", rank=30, write=write, readers=readers, plan_warnings=plan_warnings, data_warnings=data_warnings,
    layer_bytes=layer_bytes, dense_bytes=dense_bytes, card_lines=card_lines, summary_lines=summary_lines,
    options=(LOWBIT, EMBED_BITS),
    stores="GGUF for llama.cpp: 32-weight blocks. 2/3-bit layers are stored losslessly in 4-bit blocks (Q4_0/Q4_1) "
           "unless 'kquant' re-encodes them (Q2_K/Q3_K); 5-8 bits as Q8_0; embeddings and head Q8_0, norms F32. "
           "So a GGUF is larger than the plan's bits say.",
    card_imports="from transformers import AutoModelForCausalLM",
    card_notes="Block types: Q4_0 where codes minus zero fit [-8, 7] (symmetric 4-bit, every 2/3-bit layer with "
               "integer zero points), Q4_1 for other 4-bit (and fractional zero points), Q8_0 for 5-8 bits when "
               "exact, F16 for kept layers; each group's scale is repeated over its 32-weight blocks. The token "
               "embedding and the head are Q8_0 with --embed-bits 8 (the default), F16 with 16.",
))
