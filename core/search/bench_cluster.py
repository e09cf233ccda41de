"""Benchmark of clustered EvoPress scoring: `bitsmith bench cluster [options]` prints JSON.

The same EvoPress search twice on one variant database: in this process, then with
`--cluster` (default local:2). Reports each search's wall time, candidate and forward tokens
and tokens per second, whether the plans and every generation's fitness are identical, the
pool's start-up time, and the per-candidate cost the README's estimate for larger models
starts from (seconds per forward token, and the FLOP rate that implies: 2 FLOPs per
parameter per token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bitsmith bench cluster", description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--cluster", default="local:2", help="the clustered run's --cluster (default local:2)")
    parser.add_argument("--target-bits", type=float, default=3.0)
    parser.add_argument("--generations", type=int, default=4, help="EvoPress generations (the cpu preset otherwise)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the local search and of each CPU actor (default 1: the same kernels)")
    parser.add_argument("--database", help="a search run holding the variant database to reuse")
    parser.add_argument("--json", action="store_true", help="accepted for `bitsmith bench`; the output is JSON")
    parser.add_argument("--out", default="bench-cluster", help="folder for the runs (finished runs are read back)")
    return parser.parse_args(argv)


def _search_cell(report: dict) -> dict:
    e = report["evopress"]
    seconds = e["search_seconds"]
    return {"search_seconds": seconds, "candidate_tokens": e["candidate_tokens"], "forward_tokens": e["forward_tokens"],
            "prefix_saving": e["prefix_saving"], "candidate_tokens_per_s": round(e["candidate_tokens"] / seconds, 1),
            "forward_tokens_per_s": round(e["forward_tokens"] / seconds, 1), "fitness": e["fitness"],
            "generations": e["generations"], **({"cluster": e["cluster"]} if "cluster" in e else {})}


def run(args: argparse.Namespace) -> dict:
    from ..jobs import ModelSpec
    from .bench import _run_job

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(model=ModelSpec(args.model), method="evopress", target_bits=args.target_bits, preset="cpu",
                  generations=args.generations, threads=args.threads, eval_every=0, final_eval=False)
    load_before = os.getloadavg()
    local = _run_job(out / "local", False, **common, **({"database": args.database} if args.database else {}))
    db_run = args.database or str(out / "local")
    clustered = _run_job(out / "cluster", False, **common, database=db_run, cluster=args.cluster)
    a, b = _search_cell(local), _search_cell(clustered)
    plans_equal = json.loads((out / "local" / "plan.json").read_text())["layers"] == \
        json.loads((out / "cluster" / "plan.json").read_text())["layers"]
    params = local["model"]["parameters"]
    per_token = a["search_seconds"] / a["forward_tokens"]
    return {
        "model": args.model, "parameters": params, "cluster": args.cluster, "threads": args.threads,
        "cpu_count": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "local": a, "clustered": b,
        "speedup_search": round(a["search_seconds"] / b["search_seconds"], 3),
        "same_plan": plans_equal,
        "same_fitness_every_generation": [h["fitness"] for h in local["evopress"]["history"]]
        == [h["fitness"] for h in clustered["evopress"]["history"]],
        "per_candidate_cost": {
            "seconds_per_forward_token": per_token,
            "seconds_per_candidate_token": a["search_seconds"] / a["candidate_tokens"],
            # 2 FLOPs per parameter per token: what this machine's scoring achieved
            "achieved_gflops": round(2 * params / per_token / 1e9, 2)},
        "database": db_run, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
