"""Round-trip verification: export a quantized model to every format, read each back with a
reader we did not write, and compare WikiText-2 perplexity with our own quantized model.

    python -m bitsmith.core.export.verify [--checkpoint RUN_DIR/quantized] [--method rtn|gptq]
                                          [--windows 16] [--seqlen 512] [--json] [--work DIR]

Without --checkpoint it first quantizes the default model (SmolLM2-135M) with a mixed plan:
2, 3, 4 and 8 bits plus two layers kept at 16-bit (MIXED_RULES). Readers:
- gguf: transformers' GGUF loader (gguf-py's dequantizer, transformers' un-permutation);
- compressed-tensors: the compressed-tensors library's PackedQuantizationCompressor.decompress,
  layer by layer, into the model built from the export's config.json;
- gptq: `reference_gptq_weights` below, a numpy reading of the documented bit stream that
  shares nothing with the exporter (GPTQModel needs torch >= 2.14 and does not install here).
Each must match our perplexity within 0.5%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WIKITEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
MIXED_RULES = [
    {"pattern": r"layers\.(1|29)\.mlp\.down_proj$", "keep": "16"},        # the spike layers
    {"pattern": r"layers\.0\.", "bits": 8},
    {"pattern": r"layers\.(1[0-9])\.mlp\.(gate|up)_proj$", "bits": 2, "sym": True},
    {"pattern": r"self_attn\.(q|k)_proj$", "bits": 3},
]
TOLERANCE = 0.005


# --- independent readers -------------------------------------------------------------------

def _unpack_stream(packed: np.ndarray, bits: int, n: int, axis: int) -> np.ndarray:
    """GPTQ's documented packing: int32 words along `axis` form a little-endian bit stream;
    value i is stream bits [i*bits, (i+1)*bits)."""
    words = np.ascontiguousarray(np.moveaxis(packed, axis, -1)).astype("<i4")
    stream = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    values = stream[..., : n * bits].reshape(*stream.shape[:-1], n, bits)
    return np.moveaxis((values * (1 << np.arange(bits))).sum(-1), -1, axis)


def reference_gptq_weights(tensors: dict, name: str, bits: int, v1: bool) -> torch.Tensor:
    """W [N, K] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]) (v1 stores z - 1)."""
    scales = tensors[f"{name}.scales"].float().numpy()                     # [G, N]
    g_idx = tensors[f"{name}.g_idx"].numpy()                               # [K]
    q = _unpack_stream(tensors[f"{name}.qweight"].numpy(), bits, len(g_idx), axis=0)
    z = _unpack_stream(tensors[f"{name}.qzeros"].numpy(), bits, scales.shape[1], axis=1) + (1 if v1 else 0)
    return torch.from_numpy((scales[g_idx] * (q - z[g_idx])).T.astype(np.float32))


def _model_from_config(folder: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    doc = json.loads((folder / "config.json").read_text())
    doc.pop("quantization_config", None)
    config = AutoConfig.for_model(**{k: v for k, v in doc.items() if k != "model_type"}, model_type=doc["model_type"])
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _load_dense(model, tensors: dict, weights: dict) -> None:
    state = {k: v.float() for k, v in tensors.items() if k in model.state_dict()}
    state.update({f"{n}.weight": w for n, w in weights.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"reader left {missing[:3]} missing, {unexpected[:3]} unexpected")
    if model.config.tie_word_embeddings:
        model.tie_weights()


def read_gptq(folder: Path):
    from safetensors.torch import load_file

    qc = json.loads((folder / "quantize_config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    model = _model_from_config(folder)
    weights = {}
    for key in [k for k in tensors if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        bits = _dynamic_bits(qc, name)
        weights[name] = reference_gptq_weights(tensors, name, bits, qc["checkpoint_format"] == "gptq")
    _load_dense(model, {k: v for k, v in tensors.items() if k.endswith((".weight", ".bias"))}, weights)
    return model


def _dynamic_bits(qc: dict, name: str) -> int:
    import re

    for pattern, overrides in (qc.get("dynamic") or {}).items():
        regex = pattern[2:] if pattern.startswith(("-:", "+:")) else pattern
        if re.match(regex, name):
            return int(overrides.get("bits", qc["bits"]))
    return int(qc["bits"])


def read_compressed(folder: Path):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    doc = json.loads((folder / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(doc)
    tensors = load_file(str(folder / "model.safetensors"))
    model = _model_from_config(folder)
    weights = {}
    for scheme in config.config_groups.values():
        for name in scheme.targets:
            local = {k[len(name) + 1:]: v for k, v in tensors.items()
                     if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
            weights[name] = PackedQuantizationCompressor.decompress(local, scheme)["weight"].float()
    _load_dense(model, {k: v for k, v in tensors.items() if k.endswith((".weight", ".bias"))}, weights)
    return model


def read_gguf(folder: Path, file_name: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=file_name, dtype=torch.float32).eval()


# --- the run -----------------------------------------------------------------------------

def quantize_default(work: Path, method: str, calib_windows: int) -> Path:
    from ..cli import run_job_inline
    from ..jobs import make_job
    from ..plan import PlanSpec, Rule

    plan = PlanSpec(rules=[Rule(**r) for r in MIXED_RULES], bits=4, group_size=64)
    job = make_job("quantize", method=method, plan=plan, calib="builtin",
                   calib_windows=calib_windows if method == "gptq" else 0)
    code, report = run_job_inline(job, argparse.Namespace(out=str(work / "quantize"), events=False, resume=False))
    if code != 0:
        raise SystemExit(f"quantize failed (exit {code})")
    return Path(report["quantized_dir"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitsmith.core.export.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a quantized checkpoint (default: quantize the default model)")
    parser.add_argument("--method", default="rtn", choices=["rtn", "gptq"],
                        help="how to quantize the default model (rtn: minutes; gptq: much longer on a CPU)")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--data", default=f"file:{WIKITEXT}")
    parser.add_argument("--formats", default="gguf,compressed-tensors,gptq")
    parser.add_argument("--work", help="folder for the run and the exports (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = Path(args.work or tempfile.mkdtemp(prefix="bitsmith-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    result = run(work, args)
    print(json.dumps(result, indent=2) if args.json else _summary(result))
    return 0 if result["pass"] else 1


def run(work: Path, args: argparse.Namespace) -> dict:
    from ..data import eval_windows
    from ..evaluate import perplexity
    from ..model import load_model
    from . import export_checkpoint

    t0 = time.time()
    ckpt = Path(args.checkpoint) if args.checkpoint else quantize_default(work, args.method, args.calib_windows)
    quantize_s = time.time() - t0
    ours = load_model(str(ckpt))
    windows = eval_windows(args.data, ours.tokenizer, args.seqlen, args.windows)
    t = time.time()
    ours_ppl = perplexity(ours.model, windows)
    result = {"checkpoint": str(ckpt), "quantize_seconds": round(quantize_s, 1), "data": args.data,
              "windows": int(windows.shape[0]), "seqlen": args.seqlen, "ours": {"ppl": ours_ppl,
              "eval_seconds": round(time.time() - t, 1)}, "formats": {}}
    del ours
    readers = {"gguf": None, "compressed-tensors": read_compressed, "gptq": read_gptq}
    for fmt in args.formats.split(","):
        t = time.time()
        out = work / f"export-{fmt}"
        report = export_checkpoint(ckpt, fmt, out)
        export_s = time.time() - t
        t = time.time()
        model = read_gguf(out, report["gguf_file"]) if fmt == "gguf" else readers[fmt](out)
        read_s = time.time() - t
        t = time.time()
        ppl = perplexity(model, windows)
        del model
        rel = abs(ppl - ours_ppl) / ours_ppl
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        entry = {"ppl": ppl, "rel_diff": rel, "pass": rel <= TOLERANCE, "export_seconds": round(export_s, 1),
                 "read_seconds": round(read_s, 1), "eval_seconds": round(time.time() - t, 1),
                 "bytes": size, "warnings": report["warnings"]}
        if fmt == "gguf":
            entry.update(types=report["types"], max_rel_error=report["max_rel_error"],
                         quantized_bits_per_weight=report["quantized_bits_per_weight"],
                         plan_bits_per_weight=report["plan_bits_per_weight"])
        if fmt == "gptq":
            entry["checkpoint_format"] = report["checkpoint_format"]
        result["formats"][fmt] = entry
    result["pass"] = all(e["pass"] for e in result["formats"].values())
    result["avg_code_bits"], result["effective_bits"] = report["avg_code_bits"], report["effective_bits"]
    return result


def _summary(result: dict) -> str:
    lines = [f"ours: perplexity {result['ours']['ppl']:.4f} ({result['windows']} x {result['seqlen']} tokens)"]
    for fmt, e in result["formats"].items():
        lines.append(f"{fmt}: {e['ppl']:.4f} ({100 * e['rel_diff']:.3f}% off) {'PASS' if e['pass'] else 'FAIL'}, "
                     f"{e['bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
