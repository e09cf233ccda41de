"""Benchmark of the variant database built on Ray: `bitsmith bench cluster_database` prints JSON.

The same database twice (a sensitivity search, which builds it and then only solves a
knapsack): in this process, then with `--cluster` (default local:2, one task per (block,
level)). Reports each build's wall time, its Hessian and quantization parts, and whether
the two folders hold the same files (block files byte for byte).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bitsmith bench cluster_database", description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--cluster", default="local:2", help="the clustered build's --cluster (default local:2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the local build and of each task (default 1: the same kernels)")
    parser.add_argument("--json", action="store_true", help="accepted for `bitsmith bench`; the output is JSON")
    parser.add_argument("--out", default="bench-cluster-database", help="folder for the runs (finished runs are reused)")
    return parser.parse_args(argv)


def _cell(report: dict) -> dict:
    from .database import _read_meta

    db = report["database"]
    meta = _read_meta(Path(db["folder"])) or {}
    return {"wall_seconds": db["this_session_seconds"], "hessian_seconds": round(meta.get("hessian_seconds", 0), 2),
            "quantize_seconds": round(meta.get("block_seconds", 0), 2), "folder": db["folder"]}


def run(args: argparse.Namespace) -> dict:
    from ..jobs import ModelSpec
    from .bench import _run_job
    from .cluster_database import database_differences

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(model=ModelSpec(args.model), method="sensitivity", target_bits=3.0, preset="cpu",
                  threads=args.threads, final_eval=False)
    load_before = os.getloadavg()
    local = _cell(_run_job(out / "local", False, **common))
    clustered = _cell(_run_job(out / "cluster", False, **common, cluster=args.cluster))
    return {"model": args.model, "cluster": args.cluster, "threads": args.threads, "cpu_count": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "local": local, "clustered": clustered,
            "speedup": round(local["wall_seconds"] / clustered["wall_seconds"], 3),
            "differences": database_differences(Path(local["folder"]), Path(clustered["folder"])),
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
