"""Benchmark of the allocators: `bitsmith bench search [options]` (or
`python -m bitsmith.core.search.bench`) prints JSON.

Default model, group 64, WikiText-2 test 16 × 512, targets 2.5 / 3.0 / 3.5 average code
bits: perplexity of the uniform plan (integer targets), the sensitivity (knapsack),
spike-aware and EvoPress plans, each with its search wall time and forward tokens. Every
plan is measured the same way — its GPTQ variants from one database assembled into the
model — so the numbers compare allocations, not quantization runs. Each method runs as a
real `search` job in OUT/<method>-<target>/ (the first one builds the database, the rest
reuse it); the bar from issue 5 is checked at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..files import WIKITEXT_TEST

REFERENCE_SECONDS = 941 + 3019      # the EvoPress reference code here: database + search


def _database_seconds(run: Path) -> float:
    meta = json.loads(next(run.glob("database-*/meta.json")).read_text())
    return round(meta["hessian_seconds"] + meta["block_seconds"], 1)


class NotRun(Exception):
    """--collect: this cell has no finished run."""


def _run_job(path: Path, resume: bool, collect: bool = False, **fields) -> dict:
    from ..events import Emitter
    from ..jobs import make_job
    from ..rundir import RunDir
    from ..runner import execute

    if collect:          # read back what finished, whatever settings it ran with
        if not (path / "report.json").is_file():
            raise NotRun(str(path))
        return json.loads((path / "report.json").read_text())
    job = make_job("search", **fields)
    run = RunDir.create(path, job.to_dict(), exist_ok=True)
    done = run.read_state().get("state") == "done"
    if not done:
        log = open(path / "bench.log", "a", encoding="utf-8")
        code = execute(run, Emitter([lambda e: log.write(json.dumps(e) + "\n") or log.flush()]),
                       resume=resume or run.events_file.exists())
        if code != 0:
            raise SystemExit(f"search job in {path} failed with exit code {code}; see {path}/events.jsonl")
    report = run.read_report()
    assert report is not None
    return report


def _uniform_ppl(model_source: str, db_run: Path, bits: int, common: dict) -> dict:
    """Perplexity of every layer at `bits`, from the same database."""
    from ..events import Emitter
    from ..inventory import layer_inventory
    from ..jobs import CancelToken, ModelSpec, RunContext, make_job
    from ..model import load_model
    from ..rundir import RunDir
    from .driver import Setup, _eval_windows, ensure_database, plan_perplexity
    from .presets import resolved_preset
    from .genome import SearchSpace

    job = make_job("search", **{**common, "method": "sensitivity", "target_bits": float(bits),
                                "database": str(db_run)})
    loaded = load_model(ModelSpec(model_source))
    layers = layer_inventory(loaded.model)
    ctx = RunContext(RunDir(db_run), Emitter(), CancelToken())
    setup = Setup.create(job.spec, resolved_preset(job.spec), ctx, loaded, layers)
    db = ensure_database(setup)
    space = SearchSpace.from_layers(layers, job.spec.levels)
    started = time.time()
    ppl = plan_perplexity(setup, space, space.uniform(bits), db, _eval_windows(setup))
    return {"ppl": ppl, "eval_seconds": round(time.time() - started, 1)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bitsmith.core.search.bench", description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--targets", default="2.5,3.0,3.5")
    parser.add_argument("--methods", default="uniform,sensitivity,spike,evopress")
    parser.add_argument("--preset", default="cpu", choices=["cpu", "reference"])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--eval-data", default=f"file:{WIKITEXT_TEST}")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--generations", type=int, help="override the preset's generations")
    parser.add_argument("--offspring", type=int, help="override the preset's offspring")
    parser.add_argument("--survivors", help="override the preset's survivors, e.g. 2,1")
    parser.add_argument("--tokens", help="override the preset's tokens per stage, e.g. 128,512")
    parser.add_argument("--pool-windows", type=int, help="override the preset's fitness pool")
    parser.add_argument("--spike-top-k", type=int, help="keep the top k spiky layers (default: threshold)")
    parser.add_argument("--database", help="a search run holding the variant database to reuse")
    parser.add_argument("--database-inputs", choices=["dense", "propagated"], default="dense",
                        help="the search jobs' variant database (see `bitsmith search --help`)")
    parser.add_argument("--cluster", help="score EvoPress candidates on Ray, e.g. local:2 (see `bitsmith search --help`)")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: gather the finished runs in --out into one JSON")
    parser.add_argument("--json", action="store_true", help="accepted for `bitsmith bench`; the output is JSON")
    parser.add_argument("--out", default="bench-search", help="folder for the runs (reused: finished runs are read back)")
    return parser.parse_args(argv)


def _common_fields(args: argparse.Namespace) -> dict:
    """The search-job fields every cell shares (the preset's overrides included)."""
    from ..jobs import ModelSpec

    common = dict(model=ModelSpec(args.model), group_size=args.group_size, preset=args.preset,
                  eval_data=args.eval_data, eval_windows=args.eval_windows, threads=args.threads,
                  database_inputs=args.database_inputs, budget="code")   # the table's targets are code bits
    for name in ("generations", "offspring", "pool_windows"):
        if getattr(args, name):
            common[name] = getattr(args, name)
    for name in ("survivors", "tokens"):
        if getattr(args, name):
            common[name] = [int(x) for x in getattr(args, name).split(",")]
    return common


def _cell(report: dict) -> dict:
    """What the benchmark keeps of one search job's report."""
    value = {"ppl": report.get("ppl"), "threads": report.get("threads"), "avg_code_bits": report["avg_code_bits"],
             "effective_bits": report["effective_bits"], "search_total_seconds": report["search_total_seconds"],
             "eval_seconds": report.get("eval_seconds"), "histogram": report["budget"]["bits_histogram"]}
    if "evopress" in report:
        e = report["evopress"]
        value.update({"search_seconds": e["search_seconds"], "forward_tokens": e["forward_tokens"],
                      "candidate_tokens": e["candidate_tokens"], "prefix_saving": e["prefix_saving"],
                      "kl": e["fitness"], "generations": e["generations"],
                      "kl_vs_tokens": [(h["forward_tokens"], h["fitness"]) for h in e["history"]]})
    if "spike" in report:
        value.update({"kept": report["spike"]["kept"], "top_scores": report["spike"]["top_scores"]})
    return value


class SearchBench:
    """One search job per (method, target) cell in OUT/<method>-<target>/, sharing databases."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ..jobkinds.search import SearchSpec

        self.args = args
        self.levels = SearchSpec().levels          # the search jobs run with the default levels
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.common = _common_fields(args)
        self.results: dict = {"model": args.model, "group_size": args.group_size, "preset": args.preset,
                              "eval": {"data": args.eval_data, "windows": args.eval_windows, "seqlen": 512},
                              "targets": {}}
        # the databases: another run's (--database), or built by the first job that needs one;
        # a propagated database depends on the target's propagation level, so one per level
        self.db_runs: dict[int | None, Path] = {}
        if args.database:
            meta = json.loads(next(Path(args.database).glob("database-*/meta.json")).read_text())
            self.db_runs[meta["settings"].get("propagate_bits")] = Path(args.database)

    def record(self, target: float, method: str, value: dict) -> None:
        self.results["targets"].setdefault(str(target), {})[method] = value
        print(json.dumps({"target": target, "method": method, **value}), file=sys.stderr, flush=True)

    def database_run(self, target: float) -> Path:
        """The run holding the target's database, built by a sensitivity search if none does."""
        from .propagated import propagation_level

        level = None if self.args.database_inputs == "dense" else propagation_level(self.levels, target)
        if level not in self.db_runs:
            path = self.out / f"sensitivity-{target}"
            _run_job(path, False, self.args.collect, **self.common, method="sensitivity", target_bits=target)
            self.db_runs[level] = path
        return self.db_runs[level]

    def uniform(self, target: float) -> None:
        """The uniform plan's perplexity at an integer target, measured once and read back after."""
        cached = self.out / f"uniform-{int(target)}.json"
        if cached.is_file():
            self.record(target, "uniform", json.loads(cached.read_text()))
        elif not self.args.collect:
            value = _uniform_ppl(self.args.model, self.database_run(target), int(target), self.common)
            cached.write_text(json.dumps(value))
            self.record(target, "uniform", value)

    def search(self, target: float, method: str) -> None:
        path = self.out / f"{method}-{target}"
        extra = {"spike_top_k": self.args.spike_top_k} if method == "spike" and self.args.spike_top_k else {}
        if method == "evopress" and self.args.cluster:       # only EvoPress has candidates to send out
            extra["cluster"] = self.args.cluster
        try:
            db_run = self.database_run(target)
            report = _run_job(path, False, self.args.collect, **self.common, method=method, target_bits=target,
                              **({} if path == db_run else {"database": str(db_run)}), **extra)
        except NotRun:
            return
        self.record(target, method, _cell(report))

    def run(self) -> dict:
        methods = [m.strip() for m in self.args.methods.split(",")]
        for target in [float(t) for t in self.args.targets.split(",")]:
            if "uniform" in methods and target.is_integer():
                self.uniform(target)
            for method in [m for m in methods if m != "uniform"]:
                self.search(target, method)
        self.results["database_seconds"] = {str(level): _database_seconds(run) for level, run in self.db_runs.items()}
        self.results["database"] = {str(level): str(run) for level, run in self.db_runs.items()}
        self.results["bar"] = _bar(self.results)
        return self.results


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(SearchBench(parse_args(argv)).run(), indent=2))
    return 0


def _bar(results: dict) -> dict:
    """The issue's bar, checked on what was measured (None where a number is missing)."""
    t = results["targets"]

    def ppl(target: str, method: str):
        return (t.get(target, {}).get(method) or {}).get("ppl")

    u3, e3, s3, k3, e25 = ppl("3.0", "uniform"), ppl("3.0", "evopress"), ppl("3.0", "sensitivity"), \
        ppl("3.0", "spike"), ppl("2.5", "evopress")
    ok = lambda cond, *xs: None if any(x is None for x in xs) else bool(cond())   # noqa: E731
    evo = [v for tv in t.values() for m, v in tv.items() if m == "evopress"]
    # a search's whole job (model load, dense logits, search) less its final perplexity
    slowest = max((v["search_total_seconds"] - (v.get("eval_seconds") or 0) for v in evo), default=None)
    database = max(results["database_seconds"].values(), default=0.0)     # the slowest database
    return {
        "evopress_3.0_le_0.85_uniform_3": ok(lambda: e3 <= 0.85 * u3, e3, u3),
        "evopress_3.0_below_sensitivity": ok(lambda: e3 < s3, e3, s3),
        "spike_3.0_below_uniform_3": ok(lambda: k3 < u3, k3, u3),
        "evopress_2.5_below_uniform_3": ok(lambda: e25 < u3, e25, u3),
        "database_plus_slowest_search_seconds": None if slowest is None else round(database + slowest, 1),
        "faster_than_reference_3960s": ok(lambda: database + slowest < REFERENCE_SECONDS, slowest),
    }


if __name__ == "__main__":
    sys.exit(main())
