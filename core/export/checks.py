"""What a format can and cannot represent, decided from the plan alone (before any work).

`export_warnings(plan_or_manifest, format)` is pure: the window calls it to show, before an
export runs, which layers a format stores approximately, at a size cost, or not at all.
Each format's own warnings come from its file in formats/ (ExportFormat.plan_warnings);
this file holds what they share. The exporters add data-dependent findings (fractional zero
points, fp16 rounding) to their reports after the fact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import LayerSetting, layer_settings

if TYPE_CHECKING:
    from .registry import ExportFormat, PlanCheck


def split_fused(settings: dict[str, LayerSetting], scheme) -> dict[str, list[str]]:
    """{'qkv' | 'gate/up': ['block: role=setting, …', …]} for the fused groups (core/serve.py)
    whose layers `scheme(name)` tells apart; vLLM and SGLang serve such a group as one module."""
    from ..serve import fused_groups

    split: dict[str, list[str]] = {}
    for group in fused_groups(list(settings)):
        if len({scheme(n) for n in group}) > 1:
            kind = "qkv" if group[0].endswith(("q_proj", "k_proj", "v_proj")) else "gate/up"
            detail = ", ".join(f"{n.rsplit('.', 1)[1]}={describe(settings[n])}" for n in group)
            split.setdefault(kind, []).append(f"{group[0].rsplit('.', 1)[0]}: {detail}")
    return split


def fused_warning(split: dict[str, list[str]], fmt: str) -> list[str]:
    out = []
    for kind, cases in split.items():
        more = f" (and {len(cases) - 1} more)" if len(cases) > 1 else ""
        out.append(f"{len(cases)} {'block' if len(cases) == 1 else 'blocks'} mix schemes in the projections vLLM "
                   f"and SGLang fuse ({kind}), which need one scheme, so they refuse this {fmt} file: "
                   f"{cases[0]}{more}; plan with --serve vllm to give each fused group one setting")
    return out


def describe(s: LayerSetting) -> str:
    if s.keep:
        return f"kept ({s.keep})"
    return f"{s.bits}-bit g{s.group_size} {'sym' if s.sym else 'asym'}"


def count_layers(layers: list[str]) -> str:
    return f"{len(layers)} layer{'s' if len(layers) != 1 else ''} (e.g. {layers[0]})"


def _common(settings: dict[str, LayerSetting], fmt: ExportFormat) -> list[str]:
    """What every format that is not a copy of the checkpoint loses: fp8 layers, adapters."""
    if fmt.holds_checkpoint:
        return []
    out = []
    fp8 = [n for n, s in settings.items() if s.keep == "fp8"]
    if fp8:
        out.append(f"{count_layers(fp8)} kept in fp8 are written dequantized at 16-bit ({fmt.name} has no fp8 weight-only entry here)")
    adapted = [n for n, s in settings.items() if s.adapter]
    if adapted:
        out.append(f"{count_layers(adapted)} carry EoRA low-rank adapters, which {fmt.name} cannot hold: they are left out, "
                   "so the export matches the checkpoint without its adapters (export native to keep them)")
    return out


def act_order_warning(check: PlanCheck) -> list[str]:
    """For the formats that would carry a GPTQ act-order permutation (g_idx) and write none."""
    if not check.act_order:
        return []
    return ["the plan used act-order: the export writes no permutation (desc_act false, g_idx in order); "
            "the weights are the same, only the column order used while quantizing differed"]


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
    from .readers import reader_warnings
    from .registry import PlanCheck, export_formats

    formats = export_formats()
    if format not in formats:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(formats)}")
    fmt = formats[format]
    settings = layer_settings(plan_or_manifest)
    if isinstance(plan_or_manifest, dict):        # a bitsmith-quant.json manifest or a plan.json
        arch = arch or (plan_or_manifest.get("config") or plan_or_manifest.get("base_model") or {}).get("model_type")
        act_order = act_order or asks_act_order(plan_or_manifest)
    check = PlanCheck(lowbit=lowbit, ct_layout=ct_layout, embed_bits=embed_bits, arch=arch, act_order=act_order)
    out = _common(settings, fmt) + fmt.plan_warnings(settings, check)
    return out + reader_warnings(fmt.readers(settings, {"ct_layout": ct_layout}))


__all__ = ["LayerSetting", "act_order_warning", "asks_act_order", "count_layers", "describe", "export_warnings",
           "fused_warning", "layer_settings", "split_fused"]
