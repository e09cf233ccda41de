"""`export`: write a quantized checkpoint as GPTQ, compressed-tensors, GGUF or a native copy.

The window shows `export_warnings(plan, format)` before it starts the job; the job's report
repeats them with what only the tensors can tell (rounded zero points, GGUF layers that are
not stored exactly, fp16 rounding of scales) and lists the layers the format cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import BadInput
from ..export.registry import format_names
from ..jobs import RunContext, register_job

Format = Literal[format_names()]          # every registered export format (core/export/formats/)


@dataclass
class ExportSpec:
    source: str = ""                               # quantized checkpoint folder (RUN_DIR/quantized) or its run dir
    format: Format = "gptq"
    out: str | None = None                         # export folder; null: RUN_DIR/export/FORMAT of this job
    lowbit: Literal["lossless", "kquant"] = "lossless"   # GGUF: 2/3-bit layers exact in Q4_0/Q4_1, or K-quants
    checkpoint_format: Literal["auto", "v2"] = "auto"    # GPTQ: v1 when every zero point allows it, else v2
    ct_layout: Literal["sym", "asym"] = "sym"      # compressed-tensors: all symmetric (transformers reads it) or zero points kept
    embed_bits: Literal[8, 16] = 8                 # GGUF: token embedding and head as Q8_0 (8) or F16 (16)
    max_shard_gb: float = 5.0                      # safetensors shards above this size

    def validate(self) -> None:
        if not self.source:
            raise BadInput("the export job names no source checkpoint", "set \"source\" to a RUN_DIR/quantized folder")
        if self.max_shard_gb <= 0:
            raise BadInput(f"max_shard_gb {self.max_shard_gb} must be positive", "use 5 (the Hugging Face default)")


@register_job("export", ExportSpec, "write a quantized checkpoint as GPTQ, compressed-tensors, GGUF or native")
def run_export(spec: ExportSpec, ctx: RunContext) -> dict:
    from pathlib import Path

    from ..export import export_checkpoint, open_source

    ctx.emitter.stage("load", "start")
    source = open_source(spec.source)
    ctx.emitter.log(f"read {len(source.layers)} quantized and {len(source.kept)} kept layers from {source.path}")
    ctx.emitter.stage("load", "end")
    ctx.cancel.check()
    out = Path(spec.out) if spec.out else ctx.run_dir.export_dir / spec.format
    ctx.emitter.stage("export", "start")
    options = {"lowbit": spec.lowbit, "max_shard_bytes": int(spec.max_shard_gb * 1e9),
               "ct_layout": spec.ct_layout, "embed_bits": spec.embed_bits}
    if spec.checkpoint_format != "auto":
        options["checkpoint_format"] = spec.checkpoint_format
    report = export_checkpoint(source, spec.format, out, options)
    for warning in report["warnings"]:
        ctx.emitter.log(f"warning: {warning}")
    ctx.emitter.stage("export", "end")
    return {"source": str(source.path), **report}
