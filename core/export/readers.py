"""Which programs read an export, with the exact call, and what each does with this file.

Each format's file (formats/NAME.py) gives its verdicts from the plan's per-layer settings
alone (no tensors), through `registry.reader_verdicts(fmt, settings, ...)`: the window and
`export_warnings` say before anything is written when a reader will refuse the file or
silently misread it; the model card prints the same table with the export's paths. This file
holds the verdict type and the reader programs' calls, which `bitsmith verify` runs.

Verdicts: "loads" (perplexity within 0.5% of Bitsmith's), "refuses" (an error at load),
"misreads" (loads without error, computes with wrong weights), "not tried" (documented by the
reader, not run on this project's machines). `evidence` says where each verdict was seen.
"""

from __future__ import annotations

from dataclasses import dataclass

LOADS, REFUSES, MISREADS, NOT_TRIED = "loads", "refuses", "misreads", "not tried"

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


def reader_warnings(verdicts: list[ReaderVerdict]) -> list[str]:
    """One warning per reader that will refuse or misread the file."""
    return [v.line(out="EXPORT", gguf_file="MODEL.gguf") for v in verdicts if v.verdict in (REFUSES, MISREADS)]
