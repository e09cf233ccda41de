"""What a format can and cannot represent, decided from the plan alone (before any work).

`export_warnings(plan_or_manifest, format)` is pure: the window calls it to show, before an
export runs, which layers a format stores approximately, at a size cost, or not at all.
The exporters add data-dependent findings (fractional zero points, fp16 rounding) to their
reports after the fact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

FORMATS = ("gptq", "compressed-tensors", "gguf", "native")
GGUF_BLOCK = 32                       # Q4_0 / Q4_1 / Q8_0 blocks hold 32 weights
GGUF_ARCHES = ("llama", "mistral")    # written as llama.cpp's `llama` architecture
KERNEL_GROUPS = (32, 64, 128)         # group sizes GPTQ / vLLM fast kernels take


@dataclass(frozen=True)
class LayerSetting:
    bits: int               # 2..8, or 16 when kept
    group_size: int         # 0 when kept
    sym: bool
    keep: str | None        # None | "16" | "fp8"
    adapter: bool = False   # carries an EoRA low-rank adapter

    @property
    def quantized(self) -> bool:
        return self.keep is None

    def key(self) -> tuple:
        return (self.bits, self.group_size, self.sym, self.keep)


def layer_settings(obj: Any) -> dict[str, LayerSetting]:
    """Per-layer settings from a Plan, a plan.json / manifest dict, or an ExportSource."""
    import sys

    from ..plan import Plan

    # An ExportSource can only exist once source.py (which imports torch) is imported; the
    # window passes manifests and must not pull torch in.
    source = sys.modules.get(f"{__package__}.source")
    if source is not None and isinstance(obj, source.ExportSource):
        out = {n: LayerSetting(qw.bits, qw.group_size, bool(qw.sym), None, n in obj.adapters)
               for n, qw in obj.layers.items()}
        out.update({n: LayerSetting(16, 0, False, k, n in obj.adapters) for n, k in obj.kept.items()})
        return out
    if isinstance(obj, Plan):
        entries: Any = {n: vars(e) for n, e in obj.entries.items()}
    elif isinstance(obj, dict):
        entries = obj.get("layers") or (obj.get("plan") or {}).get("layers") or {}
    else:
        raise TypeError(f"export_warnings takes a plan, a manifest or an ExportSource, not {type(obj).__name__}")
    out = {}
    for name, e in entries.items():
        if isinstance(e, int):
            e = {"bits": e, "keep": "16" if e == 16 else None}
        keep = e.get("keep")
        bits = int(e.get("bits", 16))
        adapter = bool(e.get("adapter", False))
        if keep or bits >= 16:
            out[name] = LayerSetting(16, 0, False, str(keep or "16"), adapter)
        else:
            out[name] = LayerSetting(bits, int(e.get("group_size") or 0), bool(e.get("sym", False)), None, adapter)
    return out


def _split_fused(settings: dict[str, LayerSetting], scheme) -> dict[str, list[str]]:
    """{'qkv' | 'gate/up': ['block: role=setting, …', …]} for the fused groups (core/serve.py)
    whose layers `scheme(name)` tells apart; vLLM and SGLang serve such a group as one module."""
    from ..serve import fused_groups

    split: dict[str, list[str]] = {}
    for group in fused_groups(list(settings)):
        if len({scheme(n) for n in group}) > 1:
            kind = "qkv" if group[0].endswith(("q_proj", "k_proj", "v_proj")) else "gate/up"
            detail = ", ".join(f"{n.rsplit('.', 1)[1]}={_describe(settings[n])}" for n in group)
            split.setdefault(kind, []).append(f"{group[0].rsplit('.', 1)[0]}: {detail}")
    return split


def _fused_warning(split: dict[str, list[str]], fmt: str) -> list[str]:
    out = []
    for kind, cases in split.items():
        more = f" (and {len(cases) - 1} more)" if len(cases) > 1 else ""
        out.append(f"{len(cases)} {'block' if len(cases) == 1 else 'blocks'} mix schemes in the projections vLLM "
                   f"and SGLang fuse ({kind}), which need one scheme, so they refuse this {fmt} file: "
                   f"{cases[0]}{more}; plan with --serve vllm to give each fused group one setting")
    return out


def _describe(s: LayerSetting) -> str:
    if s.keep:
        return f"kept ({s.keep})"
    return f"{s.bits}-bit g{s.group_size} {'sym' if s.sym else 'asym'}"


def _count(layers: list[str]) -> str:
    return f"{len(layers)} layer{'s' if len(layers) != 1 else ''} (e.g. {layers[0]})"


def _common(settings: dict[str, LayerSetting], fmt: str) -> list[str]:
    out = []
    fp8 = [n for n, s in settings.items() if s.keep == "fp8"]
    if fp8 and fmt != "native":
        out.append(f"{_count(fp8)} kept in fp8 are written dequantized at 16-bit ({fmt} has no fp8 weight-only entry here)")
    adapted = [n for n, s in settings.items() if s.adapter]
    if adapted and fmt != "native":
        out.append(f"{_count(adapted)} carry EoRA low-rank adapters, which {fmt} cannot hold: they are left out, "
                   "so the export matches the checkpoint without its adapters (export native to keep them)")
    return out


def _gptq(settings: dict[str, LayerSetting]) -> list[str]:
    out = []
    odd = [n for n, s in settings.items() if s.quantized and s.bits not in (2, 3, 4, 8)]
    if odd:
        out.append(f"{_count(odd)} at 5/6/7 bits: the GPTQ layout holds them, but GPTQModel and vLLM kernels "
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
    out += _fused_warning(_split_fused(settings, lambda n: settings[n].key()), "GPTQ")
    return out


def _compressed(settings: dict[str, LayerSetting], layout: str) -> list[str]:
    from .readers import ct_setting

    out = []
    stored = {n: ct_setting(s, layout) for n, s in settings.items() if s.quantized}
    widened = [n for n, s in settings.items() if s.quantized and stored[n][0] != s.bits]
    if widened:
        out.append(f"{_count(widened)} are asymmetric: written as symmetric codes q - z with one more bit "
                   "(the same weights, one more bit per weight) so that transformers loads the file; "
                   "--ct-layout asym keeps the plan's bits, and transformers then refuses the file")
    int8 = [n for n, key in stored.items() if key[3] == "int-quantized"]
    if int8:
        out.append(f"{_count(int8)} are asymmetric 8-bit: written int-quantized (one int8 per weight and its "
                   "zero point), which transformers reads")
    unserved = [n for n, key in stored.items() if key[0] not in (4, 8)]
    if unserved:
        bits = sorted({stored[n][0] for n in unserved})
        out.append(f"{_count(unserved)} are stored at {bits} bits: vLLM's compressed-tensors WNA16 scheme takes "
                   "4 and 8 bits only (WNA16_SUPPORTED_BITS in its source; not tried here)")
    out += _fused_warning(_split_fused(settings, lambda n: stored.get(n) or settings[n].keep), "compressed-tensors")
    return out


def _gguf(settings: dict[str, LayerSetting], lowbit: str, arch: str | None) -> list[str]:
    out = []
    if arch is not None and arch not in GGUF_ARCHES:
        out.append(f"GGUF export writes Llama-architecture models only; this model is {arch!r} (cannot export)")
    low = [n for n, s in settings.items() if s.quantized and s.bits in (2, 3)]
    if low and lowbit == "lossless":
        out.append(f"{_count(low)} at 2/3 bits are stored losslessly in a 4-bit block type (Q4_0, 4.5 bits per "
                   "weight, with integer zero points; Q4_1, 5 bits, with fractional ones): exact, but larger than "
                   "the plan's size; choose --lowbit kquant for Q2_K/Q3_K")
    elif low:
        out.append(f"{_count(low)} at 2/3 bits are re-encoded to K-quants (Q2_K / Q3_K): smaller, with an added "
                   "error reported per layer")
    unaligned = [n for n, s in settings.items() if s.quantized and s.group_size % GGUF_BLOCK]
    if unaligned:
        out.append(f"{_count(unaligned)} have a group size that is not a multiple of {GGUF_BLOCK}: no GGUF block "
                   "type holds them exactly; stored as F16 (the dequantized weights, fp16-rounded)")
    mid = [n for n, s in settings.items() if s.quantized and 5 <= s.bits <= 7 and s.group_size % GGUF_BLOCK == 0]
    if mid:
        out.append(f"{_count(mid)} at 5-7 bits are stored exactly as Q8_0 (8.5 bits per weight)")
    eight = [n for n, s in settings.items() if s.quantized and s.bits == 8 and not s.sym]
    if eight:
        out.append(f"{_count(eight)} are asymmetric 8-bit: Q8_0 holds them exactly only where codes minus zero "
                   "fit in int8; other layers are stored as F16")
    return out


def _embedding(embed_bits: int) -> list[str]:
    if embed_bits == 8:
        return ["the token embedding and the output head are stored as Q8_0 (8.5 bits per weight instead of 16; "
                "the report gives the measured error); --embed-bits 16 keeps them F16"]
    return []


def asks_act_order(*docs: dict | None) -> bool:
    """True when a manifest, plan or job asked for GPTQ act-order (desc_act)."""
    def walk(obj: Any) -> bool:
        if isinstance(obj, dict):
            if obj.get("method") == "rtn":          # act-order is a GPTQ option; RTN ignores it
                return False
            for key, value in obj.items():
                if key in ("act_order", "desc_act") and value is True:
                    return True
                if walk(value):
                    return True
        elif isinstance(obj, list):
            return any(walk(v) for v in obj)
        return False
    return any(walk(doc) for doc in docs if doc)


def export_warnings(plan_or_manifest: Any, format: str, lowbit: str = "lossless",
                    arch: str | None = None, act_order: bool = False, ct_layout: str = "sym",
                    embed_bits: int = 8) -> list[str]:
    """Human-readable warnings for exporting this plan to `format` (pure, no tensors read):
    what the format stores approximately or larger, and which readers refuse or misread it."""
    from .readers import reader_verdicts, reader_warnings

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    settings = layer_settings(plan_or_manifest)
    if isinstance(plan_or_manifest, dict):        # a bitsmith-quant.json manifest or a plan.json
        arch = arch or (plan_or_manifest.get("config") or plan_or_manifest.get("base_model") or {}).get("model_type")
        act_order = act_order or asks_act_order(plan_or_manifest)
    out = _common(settings, format)
    if act_order and format in ("gptq", "compressed-tensors"):
        out.append("the plan used act-order: the export writes no permutation (desc_act false, g_idx in order); "
                   "the weights are the same, only the column order used while quantizing differed")
    if format == "gptq":
        out += _gptq(settings)
    elif format == "compressed-tensors":
        out += _compressed(settings, ct_layout)
    elif format == "gguf":
        out += _gguf(settings, lowbit, arch) + _embedding(embed_bits)
    return out + reader_warnings(reader_verdicts(format, settings, {"ct_layout": ct_layout}))
