"""The README.md model card every export carries: plan summary, bits, perplexity, how to load."""

from __future__ import annotations

from collections import Counter

from .source import ExportSource

LOAD_SNIPPETS = {
    "gptq": """```python
# GPTQModel (or transformers with gptqmodel installed) reads this folder; vLLM serves it:
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{out}", device_map="auto")
# vllm serve {out}
```""",
    "compressed-tensors": """```python
# vLLM serves it (`vllm serve {out}`); transformers loads it with compressed-tensors installed:
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{out}")
```""",
    "gguf": """```sh
llama-cli -m {out}/{gguf_file} -p "Hello"
```
```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{out}", gguf_file="{gguf_file}")  # dequantizes
```""",
    "native": """```sh
bitsmith eval {out} --data builtin-eval
```
```python
from bitsmith.core.model import load_model
loaded = load_model("{out}")
```""",
}


FORMAT_NOTES = {
    "gptq": "Layout: qweight/qzeros int32 packed along the input/output dimension (3-bit as 32 values in "
            "3 words), fp16 scales, g_idx in order (desc_act false: no act-order permutation is written). "
            "Mixed bit-widths are in the `dynamic` block; `-:` patterns mark layers kept at 16-bit.",
    "compressed-tensors": "Format pack-quantized, one config group per (bits, group size, symmetry); layers kept "
                          "at 16-bit are in `ignore`. vLLM serves 2/3-bit layers only when symmetric, and the "
                          "projections it fuses (q/k/v, gate/up) must share one scheme.",
    "gguf": "Block types: Q4_0 where codes minus zero fit [-8, 7] (symmetric 4-bit, every 2/3-bit layer with "
            "integer zero points), Q4_1 for other 4-bit (and fractional zero points), Q8_0 for 5-8 bits when "
            "exact, F16 for kept layers; each group's scale is repeated over its 32-weight blocks.",
    "native": "A copy of the Bitsmith checkpoint with its plan, the run's report and provenance.json.",
}


def bits_summary(source: ExportSource) -> dict:
    """Average bits per weight of the linear layers: codes alone and with scale/zero overhead."""
    code = over = params = 0
    for qw in source.layers.values():
        n = qw.codes.numel()
        code, over, params = code + qw.bits * n, over + 32 * qw.scales.numel(), params + n
    for name in source.kept:
        w = source.dense.get(f"{name}.weight")
        if w is not None:
            code, params = code + (8 if source.kept[name] == "fp8" else 16) * w.numel(), params + w.numel()
    return {"avg_code_bits": code / params if params else 0.0,
            "effective_bits": (code + over) / params if params else 0.0, "linear_params": params}


def plan_summary(source: ExportSource) -> list[str]:
    counts = Counter(f"{qw.bits}-bit g{qw.group_size}{' sym' if qw.sym else ''}" for qw in source.layers.values())
    counts.update(f"kept ({k})" for k in source.kept.values())
    return [f"- {label}: {n} layer{'s' if n != 1 else ''}" for label, n in sorted(counts.items())]


def model_card(source: ExportSource, fmt: str, out: str, format_report: dict, warnings: list[str]) -> str:
    bits = bits_summary(source)
    ppl = source.measured_ppl()
    base = source.manifest.get("base_model") or {}
    title = base.get("source") or source.config.get("_name_or_path") or source.model_type or "model"
    if title == "default":
        title = "SmolLM2-135M-Instruct (Bitsmith's default model)"
    lines = [f"# {title} — Bitsmith {fmt} export", "",
             f"Quantized with Bitsmith; exported as **{fmt}**.", "", "## Plan", ""]
    lines += plan_summary(source)
    lines += ["", f"Average bits per weight of the linear layers: **{bits['avg_code_bits']:.3f}** in codes, "
                  f"**{bits['effective_bits']:.3f}** with 16-bit scales and zeros "
                  f"({bits['linear_params']:,} weights)."]
    if fmt == "gguf" and "quantized_bits_per_weight" in format_report:
        lines.append(f"In this GGUF file the quantized layers take {format_report['quantized_bits_per_weight']:.3f} "
                     f"bits per weight (the plan's {format_report['plan_bits_per_weight']:.3f}); "
                     f"block types: {format_report['types']}.")
    lines += ["", "## Quality", ""]
    if ppl:
        where = ", ".join(f"{k} {v}" for k, v in ppl.items() if k != "ppl")
        lines.append(f"Perplexity measured by the run: **{ppl['ppl']:.4g}**" + (f" ({where})." if where else "."))
    else:
        lines.append("The run that made this checkpoint measured no perplexity.")
    lines += ["", "## Format", "", FORMAT_NOTES[fmt]]
    if warnings:
        lines += ["", "## Notes and warnings", ""] + [f"- {w}" for w in warnings]
    lines += ["", "## How to load", "", LOAD_SNIPPETS[fmt].format(out=out, gguf_file=format_report.get("gguf_file", "model.gguf")), ""]
    return "\n".join(lines)
