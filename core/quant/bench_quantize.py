"""`bitsmith bench quantize [--json]`: RTN and GPTQ on the default model, measured.

For each bit-width: RTN (no data), GPTQ with each calibration source, and GPTQ with the
`quantize` job's own defaults. Each run is a real `quantize` job in its own worker process
(wall time and peak memory are that process's), followed by `eval` jobs on WikiText-2 test
and on `builtin-eval` (the held-out part of the `builtin` calibration text), 16 × 512 by
default — the protocol of issue 3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..client import worker_command
from ..files import WIKITEXT_TEST
from ..jobs import make_job
from ..rundir import RunDir



def _run_worker(run_dir: Path, job_doc: dict) -> tuple[int, float, dict | None, str]:
    run = RunDir.create(run_dir, job_doc)
    start = time.monotonic()
    proc = subprocess.run(worker_command(run.path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    errors = [json.loads(l)["message"] for l in proc.stdout.splitlines() if '"type":"error"' in l]
    return proc.returncode, wall, run.read_report(), "; ".join(errors)


def _ppl(model: str, data: str, windows: int, folder: Path, tag: str) -> float | None:
    job = make_job("eval", model={"source": model}, data=data, seqlen=512, windows=windows).to_dict()
    code, _, report, _ = _run_worker(folder / f"eval-{tag}", job)
    return report["ppl"] if code == 0 and report else None


def _rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for bits in args.bits:
        if "rtn" in args.methods:
            rows.append({"method": "rtn", "bits": bits, "calib": None, "fields": {"calib_windows": 0}})
        if "gptq" in args.methods:
            for calib in args.calib:
                rows.append({"method": "gptq", "bits": bits, "calib": calib,
                             "fields": {"calib": calib, "calib_windows": args.calib_windows, "seqlen": args.seqlen}})
        if "defaults" in args.methods:
            rows.append({"method": "gptq", "bits": bits, "calib": "defaults", "fields": {}})
    return rows


def run_benchmark(args: argparse.Namespace) -> dict:
    folder = Path(args.out or tempfile.mkdtemp(prefix="bitsmith-bench-"))
    wiki = f"file:{args.wikitext}"
    result: dict = {"benchmark": "quantize", "model": args.model, "group_size": args.group_size,
                    "eval": {"wikitext2": wiki, "builtin_eval": "builtin-eval", "seqlen": 512,
                             "windows": args.eval_windows}, "rows": []}
    if not args.no_dense:
        result["dense"] = {"wikitext2": _ppl(args.model, wiki, args.eval_windows, folder, "dense-wiki"),
                           "builtin_eval": _ppl(args.model, "builtin-eval", args.eval_windows, folder, "dense-builtin")}
    for i, row in enumerate(_rows(args)):
        tag = f"{i:02d}-{row['method']}-{row['bits']}bit-{row['calib'] or 'nocalib'}".replace("+", "_")
        job = make_job("quantize", model={"source": args.model}, method=row["method"],
                       plan={"bits": row["bits"], "group_size": args.group_size, "sym": False},
                       **row["fields"]).to_dict()
        code, wall, report, error = _run_worker(folder / tag, job)
        entry = {"method": row["method"], "bits": row["bits"], "calibration": row["calib"],
                 "job": {k: v for k, v in job.items() if k not in ("version", "kind", "model")},
                 "wall_s": round(wall, 1), "exit_code": code}
        if code == 0 and report:
            quantized = report["quantized_dir"]
            entry.update({"quantize_s": report["quantize_seconds"], "peak_memory_mb": report["peak_memory_mb"],
                          "avg_code_bits": report["avg_code_bits"], "effective_bits": report["effective_bits"],
                          "mean_rel_error": report["mean_rel_error"],
                          "ppl_wikitext2": _ppl(quantized, wiki, args.eval_windows, folder, tag + "-wiki"),
                          "ppl_builtin_eval": _ppl(quantized, "builtin-eval", args.eval_windows, folder,
                                                   tag + "-builtin")})
        else:
            entry["error"] = error
        result["rows"].append(entry)
        if not args.json:
            print(_line(entry), flush=True)
    result["runs_folder"] = str(folder)
    return result


def _line(e: dict) -> str:
    if "error" in e:
        return f"{e['method']:>5} {e['bits']}-bit {str(e['calibration']):>16}: failed ({e['error']})"
    return (f"{e['method']:>5} {e['bits']}-bit {str(e['calibration']):>16}: WikiText-2 {e['ppl_wikitext2']:.2f}, "
            f"builtin-eval {e['ppl_builtin_eval']:.2f}, {e['wall_s']:.0f} s, "
            f"peak {e['peak_memory_mb']['cpu_rss']:.0f} MiB")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitsmith bench quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--quick", action="store_true", help="4-bit only, 16 calibration and 4 eval windows")
    parser.add_argument("--model", default="default")
    parser.add_argument("--bits", type=_ints, default=[8, 4, 3, 2], help="comma list (default 8,4,3,2)")
    parser.add_argument("--methods", default="rtn,gptq,defaults",
                        help="comma list of rtn, gptq (one row per --calib), defaults (the job's defaults)")
    parser.add_argument("--calib", default="builtin,selfgen", help="comma list of calibration sources")
    parser.add_argument("--calib-windows", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--wikitext", default=str(WIKITEXT_TEST), help="WikiText-2 test file")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense reference evaluation")
    parser.add_argument("--out", help="folder for the runs (default: a temporary folder, kept)")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.calib = [c for c in args.calib.split(",") if c]
    if args.quick:
        args.bits, args.calib_windows, args.eval_windows = [4], 16, 4
    result = run_benchmark(args)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
