"""`bitsmith bench tune [--json]`: PV-Tuning vs STE vs continuous-only, and EoRA, measured.

For each bit-width (default 3 and 2, group 64): quantize the model with GPTQ (the
`quantize` job), then tune that checkpoint with each method at equal steps and data, and
add EoRA adapters at each rank. Every checkpoint is scored by the `eval` job on WikiText-2
test (16 × 512 by default): before tuning, after each method, and the dense model itself.
Tuning selects its best state on `builtin-eval` (held-out Python documentation), never on
WikiText.

Each job runs in its own worker process (wall time and peak memory are that process's).
The teacher targets are computed once per seed and shared by that seed's tuning runs (they
depend only on the dense model and the windows, which the seed draws). Results are appended
to OUT/bench.json as they arrive, so a benchmark cut short still reports what it measured;
a re-run with the same --out skips the rows already measured.

    python -m bitsmith.core.tune.bench --steps 30 --out /tmp/tune-bench --json

`--checkpoint 3=PATH` tunes an existing checkpoint instead of running GPTQ here;
`--dense-ppl X` skips the dense evaluation (X must come from the same WikiText windows).
`--seeds 0 1 2` trains every method once per seed (the calibration windows and their order);
the summary then compares the methods' mean perplexities and gives each one's spread, so
a difference between methods can be read against the noise of the data order.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..client import worker_command
from ..files import WIKITEXT_TEST
from ..jobs import make_job
from ..rundir import RunDir
from .config import TuneSpec
from .distill import TEACHER_FILE, TEACHER_META



def _worker(run_dir: Path, job_doc: dict, resume: bool = False) -> tuple[int, float, dict | None, str]:
    """Run a job in a worker process; (exit code, wall seconds, report, error messages)."""
    run = RunDir.create(run_dir, job_doc, exist_ok=resume)
    start = time.monotonic()
    proc = subprocess.run(worker_command(run.path, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    errors = [json.loads(l)["message"] for l in proc.stdout.splitlines() if '"type":"error"' in l]
    return proc.returncode, round(wall, 1), run.read_report(), "; ".join(errors)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.file = self.out / "bench.json"
        self.result = json.loads(self.file.read_text()) if self.file.is_file() else {}
        self.result.update({"benchmark": "tune", "model": args.model, "group_size": args.group_size,
                            "eval": {"data": f"file:{args.wikitext}", "seqlen": 512, "windows": args.eval_windows},
                            "tuning": {"steps": args.steps, "windows": args.windows, "seqlen": args.seqlen,
                                       "batch": args.batch, "calib": args.calib, "select_on": "builtin-eval",
                                       "code_lr": args.code_lr, "code_lr_in_grid_steps": args.code_lr_in_grid_steps,
                                       "check_z": args.check_z, "seeds": args.seeds,
                                       "eval_windows": args.tune_eval_windows, "eval_every": args.eval_every}})
        self.result.setdefault("rows", {})
        self.teachers: dict[int, Path] = {}   # seed: the first training run's folder (its teacher targets)

    def save(self) -> None:
        from .. import atomic

        atomic.write_json(self.file, self.result)

    def ppl(self, model: str, tag: str) -> dict:
        job = make_job("eval", model={"source": model}, data=f"file:{self.args.wikitext}", seqlen=512,
                       windows=self.args.eval_windows).to_dict()
        code, wall, report, err = _worker(self.out / f"eval-{tag}", job)
        return {"ppl": report["ppl"] if code == 0 and report else None, "eval_seconds": wall, "error": err or None}

    def row(self, key: str, measure) -> dict:
        """Measure a row once; a re-run with the same --out reuses it."""
        if key in self.result["rows"] and self.result["rows"][key].get("ppl") is not None:
            return self.result["rows"][key]
        print(f"[bench tune] {key} ...", file=sys.stderr, flush=True)
        row = measure()
        self.result["rows"][key] = row
        self.save()
        print(f"[bench tune] {key}: {json.dumps(row)}", file=sys.stderr, flush=True)
        return row

    def dense(self) -> dict:
        return self.row("dense", lambda: self.ppl(self.args.model, "dense"))

    def quantize(self, bits: int) -> dict:
        given = dict(item.split("=", 1) for item in self.args.checkpoint)
        if str(bits) in given:      # an existing checkpoint instead of quantizing here
            path = given[str(bits)]
            return self.row(f"gptq{bits}", lambda: {"checkpoint": path, "given": True,
                                                     **self.ppl(path, f"given{bits}")})

        def measure() -> dict:
            job = make_job("quantize", model={"source": self.args.model}, method="gptq",
                           plan={"bits": bits, "group_size": self.args.group_size},
                           calib_windows=self.args.quant_calib_windows, seqlen=512,
                           **({} if self.args.quant_clip is None else {"clip": self.args.quant_clip})).to_dict()
            code, wall, report, err = _worker(self.out / f"gptq{bits}", job)
            row = {"quantize_seconds": wall, "error": err or None, "checkpoint": str(self.out / f"gptq{bits}" / "quantized")}
            if code == 0:
                row.update(self.ppl(row["checkpoint"], f"gptq{bits}"))
            else:
                row["ppl"] = None
            return row
        return self.row(f"gptq{bits}", measure)

    def tune(self, bits: int, checkpoint: str, method: str, rank: int | None = None, seed: int = 0) -> dict:
        args = self.args
        key = row_key(f"{method}{rank or ''}", bits, seed)
        tag = key.replace("@", "-").replace("#", "-seed")      # for folder names: "pv-seed1-3"

        def measure() -> dict:
            fields = dict(model={"source": checkpoint}, method=method, steps=args.steps, windows=args.windows,
                          calib=args.calib,
                          seqlen=args.seqlen, batch=args.batch, eval_every=args.eval_every,
                          eval_windows=args.tune_eval_windows, checkpoint_every=0, seed=seed)
            if rank:
                fields.update(rank=rank, windows=args.eora_windows)
            if method in ("pv", "ste"):
                fields.update(check_z=args.check_z, code_lr=args.code_lr,
                              code_lr_in_grid_steps=args.code_lr_in_grid_steps)
            job = make_job("tune", **fields).to_dict()
            run_dir = self.out / f"tune-{tag}"
            resume = self._share_teacher(run_dir, job, method, seed)
            code, wall, report, err = _worker(run_dir, job, resume=resume)
            if method != "eora" and seed not in self.teachers and (run_dir / TEACHER_FILE).is_file():
                self.teachers[seed] = run_dir
            row: dict = {"tune_seconds": wall, "error": err or None}
            if code != 0 or report is None:
                row["ppl"] = None
                return row
            row["peak_memory_bytes"] = report.get("peak_memory_bytes")
            if method == "eora":
                row["heldout"] = {"without": report["without"], "with": report["with"]}
                row["rel_error"] = {"before": report["mean_rel_error_before"], "after": report["mean_rel_error_after"]}
            else:
                row["heldout"] = {"before": report["before"], "best": report["best"], "last": report["last"]}
                row["best_step"] = report["best_step"]
                row["codes_changed_total"] = report["codes_changed_total"]
            row.update(self.ppl(report["quantized"], tag))
            return row
        return self.row(key, measure)

    def _share_teacher(self, run_dir: Path, job: dict, method: str, seed: int) -> bool:
        """Hard-link the teacher targets of the seed's first run into a new training run (the
        seed draws the calibration windows, so only runs of one seed share them); the run
        then starts with --resume, which reuses them and finds no checkpoint."""
        teacher = self.teachers.get(seed)
        if method == "eora" or teacher is None or run_dir.exists():
            return run_dir.exists()
        RunDir.create(run_dir, job)
        for name in (TEACHER_FILE, TEACHER_META):
            os.link(teacher / name, run_dir / name)
        return True

    def run(self) -> dict:
        args = self.args
        dense = self.dense()["ppl"] if not args.dense_ppl else args.dense_ppl
        self.result["dense_ppl"] = dense
        for bits in args.bits:
            base = self.quantize(bits)
            if base.get("ppl") is None:
                continue
            for seed in args.seeds:
                for method in args.methods:
                    self.tune(bits, base["checkpoint"], method, seed=seed)
            for rank in args.ranks:
                self.tune(bits, base["checkpoint"], "eora", rank)
            self.result[f"summary@{bits}"] = summarize(self.result["rows"], bits, dense)
            self.save()
        return self.result


def row_key(name: str, bits: int, seed: int = 0) -> str:
    """"pv@3" for seed 0 (the key of a single-seed bench), "pv#1@3" for seed 1."""
    return f"{name}#{seed}@{bits}" if seed else f"{name}@{bits}"


def summarize(rows: dict, bits: int, dense: float | None) -> dict:
    """The rows of one bit-width: each method's perplexity (the mean over its seeds, with
    the seeds' values and standard deviation beside it when there are several), the share
    of the GPTQ-to-dense gap it closes, and the issue's bar on the means."""
    before = rows[f"gptq{bits}"]["ppl"]
    out: dict = {"gptq_ppl": before, "dense_ppl": dense}
    by_method: dict[str, list[float]] = {}
    for key, row in rows.items():
        if key.endswith(f"@{bits}") and row.get("ppl") is not None:
            by_method.setdefault(key.split("@")[0].split("#")[0], []).append(row["ppl"])
    for name, values in by_method.items():
        mean = statistics.fmean(values)
        out[f"{name}_ppl"] = mean
        if len(values) > 1:
            out[f"{name}_ppl_seeds"] = values
            out[f"{name}_ppl_std"] = statistics.stdev(values)
        if dense is not None and before is not None and before > dense:
            out[f"{name}_gap_closed"] = round((before - mean) / (before - dense), 4)
    pv, ste, cont = out.get("pv_ppl"), out.get("ste_ppl"), out.get("continuous_ppl")
    if pv is not None:
        out["bar"] = {"pv_closes_30pct": out.get("pv_gap_closed", 0) >= 0.30,
                      "pv_beats_ste": ste is not None and pv < ste,
                      "pv_beats_continuous": cont is not None and pv < cont}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bitsmith bench tune", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 2])
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--quant-calib-windows", type=int, default=64, help="GPTQ calibration windows of 512 tokens")
    p.add_argument("--quant-clip", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ's grid clipping search (default: the quantize job's default)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="BITS=PATH",
                   help="use this quantized checkpoint for BITS instead of running GPTQ here")
    p.add_argument("--methods", nargs="*", default=["pv", "ste", "continuous"])
    p.add_argument("--ranks", type=int, nargs="*", default=[16, 64], help="EoRA ranks")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="train every method once per seed (calibration windows and order); the summary compares means")
    p.add_argument("--windows", type=int, default=64, help="tuning calibration windows")
    p.add_argument("--eora-windows", type=int, default=32, help="EoRA covariance windows")
    p.add_argument("--calib", default=TuneSpec().calib,
                   help="tuning (and EoRA covariance) text, e.g. selfgen (the tune job's default) or builtin")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--code-lr", type=float, default=1e-2, help="pv/ste: Adam lr of the straight-through buffers")
    p.add_argument("--code-lr-in-grid-steps", action="store_true", help="pv/ste: --code-lr in grid steps")
    p.add_argument("--check-z", type=float, default=0.0, help="pv/ste: a V step is kept only if its gain on the next "
                   "windows exceeds this many standard errors")
    p.add_argument("--tune-eval-windows", type=int, default=4, help="held-out builtin-eval windows for best-state")
    p.add_argument("--eval-windows", type=int, default=16, help="WikiText-2 test windows of 512 tokens")
    p.add_argument("--wikitext", default=str(WIKITEXT_TEST))
    p.add_argument("--dense-ppl", type=float,
                   help="skip measuring the dense model; use this perplexity (same --eval-windows!)")
    p.add_argument("--out", default="bench-tune", help="folder for the runs and bench.json (re-runs resume)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = Bench(args).run()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if key.startswith("summary@"):
                print(key, json.dumps(value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
