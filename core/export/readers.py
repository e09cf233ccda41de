"""Which programs read an export, with the exact call, and what each does with this file.

`reader_verdicts(fmt, settings, ...)` is pure (the plan's per-layer settings, no tensors): the
window and `export_warnings` say before anything is written when a reader will refuse the
file or silently misread it; the model card prints the same table with the export's paths.

Verdicts: "loads" (perplexity within 0.5% of Bitsmith's), "refuses" (an error at load),
"misreads" (loads without error, computes with wrong weights), "not tried" (documented by the
reader, not run on this project's machines). `evidence` says where each verdict was seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import LayerSetting

LOADS, REFUSES, MISREADS, NOT_TRIED = "loads", "refuses", "misreads", "not tried"
PACKED, INT8 = "pack-quantized", "int-quantized"    # compressed-tensors formats (compressed.py writes them)

TESTS_CT = "tests/export/test_readers.py (transformers 5.25, compressed-tensors 0.20.1)"
TESTS_GGUF = "tests/export/test_gguf.py (transformers 5.25, gguf 0.19)"
ISSUE_23 = "measured on a GPU machine (issue 23); GPTQModel needs torch >= 2.14.1 and is not installed here"

TRANSFORMERS = "transformers"
CALL_HF = 'AutoModelForCausalLM.from_pretrained("{out}")'
CALL_HF_DEQUANT = ('AutoModelForCausalLM.from_pretrained("{out}", '
                   'quantization_config=CompressedTensorsConfig(dequantize=True))')
CALL_HF_GGUF = 'AutoModelForCausalLM.from_pretrained("{out}", gguf_file="{gguf_file}")'
CALL_GPTQMODEL = 'GPTQModel.load("{out}")'
CALL_CT_LIBRARY = "BaseCompressor.get_value_from_registry(scheme.format).decompress(layer_state, scheme)"
CALL_LLAMA = 'llama-perplexity -m {out}/{gguf_file} -f TEXT -c 512  # or llama-cli -m {out}/{gguf_file} -p "Hello"'
CALL_VLLM = "vllm serve {out}"
CALL_NATIVE = "bitsmith eval {out}"
GPTQ_NEEDS = ("gptqmodel", "optimum")
CT_NEEDS = ("compressed_tensors",)


@dataclass(frozen=True)
class ReaderVerdict:
    reader: str          # the program: transformers, GPTQModel, vLLM, llama.cpp, ...
    verdict: str         # LOADS | REFUSES | MISREADS | NOT_TRIED
    call: str            # the exact call; {out} and {gguf_file} are filled in by the card
    why: str = ""        # what happens, and why
    evidence: str = ""   # where the verdict was seen
    needs: tuple[str, ...] = ()   # Python modules the call imports (for `bitsmith verify`)

    def line(self, **paths: str) -> str:
        call = self.call.format(**paths) if paths else self.call
        text = f"{self.reader} {self.verdict}: `{call}`"
        return text + (f" — {self.why}" if self.why else "")


def _quantized(settings: dict[str, LayerSetting]) -> list[LayerSetting]:
    return [s for s in settings.values() if s.quantized]


def ct_setting(s: LayerSetting, layout: str) -> tuple[int, int, bool, str]:
    """(bits, group size, sym, format) a quantized layer is written with in compressed-tensors
    (compressed.ct_layer: under "sym" an asymmetric b-bit layer takes b + 1 bits, 8-bit int8)."""
    if s.sym or layout == "asym":
        return (s.bits, s.group_size, s.sym, PACKED)
    if s.bits < 8:
        return (s.bits + 1, s.group_size, True, PACKED)
    return (8, s.group_size, False, INT8)


def predicted_ct_groups(settings: dict[str, LayerSetting], layout: str) -> set[tuple]:
    """The config groups a compressed-tensors export of these layers will have."""
    return {ct_setting(s, layout) for s in _quantized(settings)}


def _gptq(settings: dict[str, LayerSetting], options: dict) -> list[ReaderVerdict]:
    keys = {s.key() for s in settings.values()}
    gptqmodel = ReaderVerdict("GPTQModel", LOADS, CALL_GPTQMODEL,
                              "reads the per-layer `dynamic` overrides" if len(keys) > 1 else "",
                              ISSUE_23 + ("; mixed plan: 92.076 against Bitsmith's 92.078" if len(keys) > 1 else ""),
                              needs=("gptqmodel",))
    serve = ReaderVerdict("vLLM / SGLang", NOT_TRIED, CALL_VLLM,
                          "both read GPTQModel's `dynamic` block" if len(keys) > 1 else "",
                          "documented by GPTQModel; no GPU here")
    if len(keys) > 1:
        hf = ReaderVerdict(TRANSFORMERS, REFUSES, CALL_HF,
                           "its GPTQConfig has no `dynamic`: every layer gets the default bits and the load "
                           "stops with `RuntimeError ... qweight | MISMATCH`; use GPTQModel.load",
                           ISSUE_23, GPTQ_NEEDS)
    else:
        hf = ReaderVerdict(TRANSFORMERS, LOADS, CALL_HF, "with gptqmodel and optimum installed",
                           ISSUE_23 + "; within 0.02% of Bitsmith", GPTQ_NEEDS)
    return [gptqmodel, hf, serve]


def _dequantize_verdict(groups: set[tuple]) -> ReaderVerdict:
    """transformers' `dequantize=True` decompresses every layer with the first config group's
    scheme (CompressedTensorsDequantize, get_dense_scheme): right with one group; with more,
    silently wrong when every group stores the same tensors (same symmetry and format), and a
    conversion error when some layer lacks a tensor the first scheme reads."""
    if len(groups) <= 1:
        return ReaderVerdict(TRANSFORMERS, LOADS, CALL_HF_DEQUANT, "one config group", TESTS_CT, CT_NEEDS)
    first = f"the first of the {len(groups)} config groups' schemes"
    if len({(key[2], key[3]) for key in groups}) == 1:
        return ReaderVerdict(TRANSFORMERS, MISREADS, CALL_HF_DEQUANT,
                             f"with dequantize=True every layer is decompressed with {first}: no error, wrong "
                             "weights; load without dequantize", TESTS_CT, CT_NEEDS)
    return ReaderVerdict(TRANSFORMERS, REFUSES, CALL_HF_DEQUANT,
                         f"with dequantize=True every layer is decompressed with {first}, and layers of the other "
                         "groups lack its tensors: a weight-conversion error; load without dequantize",
                         TESTS_CT, CT_NEEDS)


def _compressed(settings: dict[str, LayerSetting], options: dict) -> list[ReaderVerdict]:
    layout = options.get("ct_layout", "sym")
    groups = {tuple(g) for g in options["groups"]} if options.get("groups") else predicted_ct_groups(settings, layout)
    out = []
    if any(not sym and fmt == "pack-quantized" for _, _, sym, fmt in groups):
        out.append(ReaderVerdict(TRANSFORMERS, REFUSES, CALL_HF,
                                 "asymmetric pack-quantized layers stop the load with a weight_zero_point size "
                                 "mismatch (compressed-tensors 0.20.1 compresses the empty model without packing "
                                 "the zero point); export with --ct-layout sym", TESTS_CT, CT_NEEDS))
    else:
        int8 = any(fmt != "pack-quantized" for *_, fmt in groups)
        why = "no asymmetric pack-quantized layer" + ("; asymmetric 8-bit layers are int-quantized" if int8 else "")
        out.append(ReaderVerdict(TRANSFORMERS, LOADS, CALL_HF, why, TESTS_CT, CT_NEEDS))
    out.append(_dequantize_verdict(groups))
    out.append(ReaderVerdict("compressed-tensors", LOADS, CALL_CT_LIBRARY,
                             "the library's own decompression, layer by layer", TESTS_CT, CT_NEEDS))
    odd = sorted({key[0] for key in groups} - {4, 8})
    if odd:
        out.append(ReaderVerdict("vLLM", REFUSES, CALL_VLLM,
                                 f"layers stored at {odd} bits: its compressed-tensors WNA16 scheme takes 4 and 8 "
                                 "bits only", "vLLM's source (WNA16_SUPPORTED_BITS); not run here"))
    else:
        out.append(ReaderVerdict("vLLM", NOT_TRIED, CALL_VLLM, "", "no GPU here"))
    return out


def _gguf(settings: dict[str, LayerSetting], options: dict) -> list[ReaderVerdict]:
    return [ReaderVerdict("llama.cpp", LOADS, CALL_LLAMA, "", "bitsmith verify with llama-perplexity: Bitsmith's README.md, tests/export/test_readers.py "
                          "(when it is on PATH)"),
            ReaderVerdict(TRANSFORMERS, LOADS, CALL_HF_GGUF, "dequantizes every tensor to float", TESTS_GGUF,
                          ("gguf",))]


def _native(settings: dict[str, LayerSetting], options: dict) -> list[ReaderVerdict]:
    return [ReaderVerdict("Bitsmith", LOADS, CALL_NATIVE, "", "tests/export/test_export.py")]


VERDICTS = {"gptq": _gptq, "compressed-tensors": _compressed, "gguf": _gguf, "native": _native}


def reader_verdicts(fmt: str, settings: dict[str, LayerSetting], options: dict | None = None) -> list[ReaderVerdict]:
    """Every reader we know of for `fmt`, and what it does with an export of these layers.
    options: the export's (`ct_layout`), plus `groups` [(bits, group size, sym, format)] once the
    file's config groups are known."""
    return VERDICTS[fmt](settings, dict(options or {}))


def reader_warnings(verdicts: list[ReaderVerdict]) -> list[str]:
    """One warning per reader that will refuse or misread the file."""
    return [v.line(out="EXPORT", gguf_file="MODEL.gguf") for v in verdicts if v.verdict in (REFUSES, MISREADS)]
