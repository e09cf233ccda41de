"""`bitsmith bench export`: quantize the default model with a mixed plan, export it to every
format, and verify each export with every installed reader (`export.verify`).

    bitsmith bench export [--checkpoint RUN_DIR/quantized] [--method rtn|gptq] [--formats ...]
                          [--data file:PATH] [--windows 16] [--seqlen 512] [--work DIR] [--json]

Without --checkpoint it first quantizes the default model (SmolLM2-135M) with MIXED_RULES:
2, 3, 4 and 8 bits plus two layers kept at 16-bit. Prints, per format, the export's size
(and the source model's), and each reader's perplexity beside Bitsmith's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

MIXED_RULES = [
    {"pattern": r"layers\.(1|29)\.mlp\.down_proj$", "keep": "16"},        # the spike layers
    {"pattern": r"layers\.0\.", "bits": 8},
    {"pattern": r"layers\.(1[0-9])\.mlp\.(gate|up)_proj$", "bits": 2, "sym": True},
    {"pattern": r"self_attn\.(q|k)_proj$", "bits": 3},
]


def quantize_default(work: Path, method: str, rules: list[dict], bits: int, calib_windows: int) -> Path:
    from ..cli import run_job_inline
    from ..jobs import make_job
    from ..plan import PlanSpec, Rule

    plan = PlanSpec(rules=[Rule(**r) for r in rules], bits=bits, group_size=64)
    job = make_job("quantize", method=method, plan=plan, calib="builtin",
                   calib_windows=calib_windows if method == "gptq" else 0)
    code, report = run_job_inline(job, argparse.Namespace(out=str(work / "quantize"), events=False, resume=False))
    if code != 0:
        raise SystemExit(f"quantize failed (exit {code})")
    return Path(report["quantized_dir"])


def main(argv: list[str] | None = None) -> int:
    from . import export_checkpoint
    from .verify import verify_export

    parser = argparse.ArgumentParser(prog="bitsmith bench export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a quantized checkpoint (default: quantize the default model)")
    parser.add_argument("--plan", default="mixed", choices=["mixed", "uniform"],
                        help="mixed: MIXED_RULES at 4 bits elsewhere; uniform: every layer at --bits")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--method", default="rtn", choices=["rtn", "gptq"])
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--formats", default="gguf,compressed-tensors,gptq")
    parser.add_argument("--ct-layout", default="sym", choices=["sym", "asym"])
    parser.add_argument("--embed-bits", type=int, default=8, choices=[8, 16])
    parser.add_argument("--data", default="builtin-eval")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--all", action="store_true", help="also run the readers expected to refuse or misread")
    parser.add_argument("--work", help="folder for the run and the exports (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = Path(args.work or tempfile.mkdtemp(prefix="bitsmith-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rules = MIXED_RULES if args.plan == "mixed" else []
    ckpt = Path(args.checkpoint) if args.checkpoint else quantize_default(work, args.method, rules, args.bits,
                                                                        args.calib_windows)
    result = {"checkpoint": str(ckpt), "quantize_seconds": round(time.time() - t0, 1), "formats": {}}
    for fmt in args.formats.split(","):
        t = time.time()
        report = export_checkpoint(ckpt, fmt, work / f"export-{fmt}",
                                   {"ct_layout": args.ct_layout, "embed_bits": args.embed_bits})
        export_s = time.time() - t
        verified = verify_export(report["out"], data=args.data, seqlen=args.seqlen, windows=args.windows,
                                 run_all=args.all)
        result["formats"][fmt] = {"bytes": report["bytes"], "source_model": report["source_model"],
                                  "export_seconds": round(export_s, 1), "types": report.get("types"),
                                  "config_groups": report.get("config_groups"), "embeddings": report.get("embeddings"),
                                  "ours": verified["ours"], "readers": verified["readers"], "pass": verified["pass"]}
        result.setdefault("avg_code_bits", report["avg_code_bits"])
    result["pass"] = all(f["pass"] for f in result["formats"].values())
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0 if result["pass"] else 1


def _table(result: dict) -> str:
    lines = [f"checkpoint {result['checkpoint']}"]
    for fmt, f in result["formats"].items():
        src = f["source_model"]
        lines.append(f"{fmt}: {f['bytes'] / 1e6:.1f} MB" + (f" (source {src['bytes'] / 1e6:.1f} MB)" if src else "")
                     + f", Bitsmith {f['ours']['ppl']:.4f}")
        for r in f["readers"]:
            got = f"{r['ppl']:.4f} vs {r['ours_ppl']:.4f}" if r["ppl"] is not None and r["ours_ppl"] else r["status"]
            lines.append(f"  {r['reader']} [{r['verdict']}]: {got}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
