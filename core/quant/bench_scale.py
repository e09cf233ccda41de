"""`bitsmith bench scale [--sizes 0.1b 0.5b 1b] [--methods rtn gptq] [--json]`: memory and time
of `quantize` against model size, and the pre-flight estimate against the measurement.

For each size a synthetic Llama with random weights is saved as bf16 safetensors
(core/synthetic.save_synthetic_llama; kept in --work and reused). Each row is a real
`quantize` job in its own worker process: its peak RSS and wall time, against `bitsmith quantize --dry-run --json` run just
before in a fresh process (its timing probe of one block on this machine included).

The peak RSS is the worker's own VmHWM (read by the job at its end, and sampled by the
benchmark while it runs). The capped row runs with `--offload disk` under a memory cap below the model's own size:
the benchmark passes the cap to the job (`--max-memory`, which the job's pre-flight check
enforces) and watches the worker's resident memory itself, killing it if it ever exceeds
the cap. Halfway through, it kills the worker (SIGKILL) and resumes the run; the resumed
checkpoint must equal the uncapped run's code for code.

Targets (issue 17): peak RSS <= 1.3 x bytes on disk + one block's working set without
offload, <= 2 GB + one block's working set with --offload disk; estimate within 25 % of
the measured memory and 50 % of the measured time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..client import module_command, worker_command
from ..jobs import make_job
from ..rundir import RunDir
from ..synthetic import SIZES

GB = 2**30


def _model(work: Path, size: str, device: str = "cpu") -> Path:
    """The synthetic bf16 Llama of `size` in `work` (drawn on `device` the first time)."""
    import shutil

    from ..synthetic import save_synthetic_llama

    folder = work / f"llama-{size}-bf16"
    if not (folder / "config.json").is_file():
        tmp = work / f".llama-{size}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)        # a build that was killed half way
        save_synthetic_llama(tmp, size, device=device)
        tmp.rename(folder)
    return folder


def _job(folder: Path, method: str, args: argparse.Namespace, offload: str = "auto",
         cap_gb: float | None = None) -> dict:
    model = {"source": str(folder), "device": args.device, "offload": offload, "max_memory_gb": cap_gb}
    return make_job("quantize", model=model, method=method, calib="builtin",
                    calib_windows=args.calib_windows if method == "gptq" else 0, seqlen=args.seqlen,
                    plan={"bits": 4, "group_size": 64}).to_dict()


def _estimate(folder: Path, method: str, args: argparse.Namespace, offload: str) -> dict | None:
    """`bitsmith quantize --dry-run --json` in a fresh process (as a user would run it)."""
    cmd = module_command("bitsmith.core.cli", "quantize", str(folder), "--device", args.device, "--method", method,
                         "--calib", "builtin", "--calib-windows", str(args.calib_windows if method == "gptq" else 0),
                         "--seqlen", str(args.seqlen), "--bits", "4", "--group-size", "64", "--offload", offload,
                         "--dry-run", "--json")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(f"dry run failed: {proc.stderr[-500:]}", file=sys.stderr)
        return None


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) of a running process."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


class _Watch:
    """Polls a process's resident memory; kills it above `cap` bytes, or when `stop_when()`."""

    def __init__(self, proc: subprocess.Popen, cap: int | None, stop_when=None) -> None:
        self.proc, self.cap, self.stop_when = proc, cap, stop_when
        self.over_cap = False
        self.killed_on_purpose = False
        self.hwm = 0            # the worker's own high-water mark (VmHWM), last seen
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.proc.poll() is None:
            status = _status(self.proc.pid)
            self.hwm = max(self.hwm, status.get("VmHWM", 0))
            if self.cap is not None and status.get("VmRSS", 0) > self.cap:
                self.over_cap = True
                self.proc.send_signal(signal.SIGKILL)
                return
            if self.stop_when is not None and self.stop_when():
                self.killed_on_purpose = True
                self.proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.05)


def _run(run_dir: Path, job_doc: dict | None, resume: bool = False, cap: int | None = None,
         stop_when=None) -> dict:
    """One worker process: exit code, wall time, its own peak RSS (wait4), the report."""
    run = RunDir(run_dir) if resume else RunDir.create(run_dir, job_doc)
    start = time.monotonic()
    proc = subprocess.Popen(worker_command(run.path, resume=resume), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    watch = _Watch(proc, cap, stop_when)
    proc.wait()
    wall = time.monotonic() - start
    watch.thread.join(timeout=1)
    report = run.read_report() if proc.returncode == 0 else None
    # the peak the job itself read from VmHWM at its end, or the watchdog's last sample of it
    # (ru_maxrss from wait4 would count this benchmark's own memory, inherited at fork)
    reported = int(((report or {}).get("peak_memory_mb") or {}).get("cpu_rss", 0) * 2**20)
    return {"code": proc.returncode, "wall_s": round(wall, 2), "peak_rss": max(reported, watch.hwm),
            "over_cap": watch.over_cap, "killed": watch.killed_on_purpose, "report": report}


def _stage_seconds(run_dir: Path) -> dict[str, float]:
    """Measured seconds of each stage of the job, from its events (start: until the job began)."""
    from ..events import read_events

    events = read_events(run_dir / "events.jsonl")
    starts: dict[str, float] = {}
    out: dict[str, float] = {}
    for e in events:
        if e["type"] == "stage" and e["stage"] in ("load", "calibrate", "quantize", "save"):
            if e["state"] == "start":
                starts[e["stage"]] = e["t"]
            elif e["stage"] in starts:
                out[e["stage"]] = round(out.get(e["stage"], 0.0) + e["t"] - starts.pop(e["stage"]), 2)
    return out


def _block_work(est: dict) -> int:
    """One block's working set from the estimate: the quantize phase above the load phase."""
    phases = est["phases"]
    return int(phases["quantize"]["ram"] - phases["load"]["ram"])


def _row(size: str, method: str, offload: str, folder: Path, est: dict | None, out: dict) -> dict:
    facts = est["model"] if est else {}
    report = out["report"] or {}
    params = facts.get("params", 0)
    row = {"size": size, "method": method, "offload": offload, "params": params,
           "bytes_on_disk": facts.get("bytes_on_disk"), "ok": out["code"] == 0,
           "wall_s": out["wall_s"], "quantize_s": report.get("quantize_seconds"),
           "s_per_billion": round(out["wall_s"] / (params / 1e9), 1) if params else None,
           "peak_rss_gb": round(out["peak_rss"] / GB, 3), "threads": report.get("threads"),
           "rss_at_start_gb": round(((report.get("peak_memory_mb") or {}).get("cpu_rss_at_start") or 0) / 1024, 3)}
    row.update(_gpu_figures(est, report))
    if est:
        work = _block_work(est)
        limit = (2 * GB if offload.startswith("disk") else 1.3 * facts["bytes_on_disk"]) + work
        row.update({"est_peak_ram_gb": round(est["peak_ram"] / GB, 3),
                    "ram_error": round(est["peak_ram"] / out["peak_rss"] - 1, 3),
                    "est_seconds": round(est["seconds"], 1) if est.get("seconds") else None,
                    "time_error": round(est["seconds"] / out["wall_s"] - 1, 3) if est.get("seconds") else None,
                    "block_work_gb": round(work / GB, 3), "rss_target_gb": round(limit / GB, 3),
                    "within_rss_target": out["peak_rss"] <= limit,
                    # the same, not counting the interpreter with torch and transformers loaded
                    "within_rss_target_above_start": out["peak_rss"] - row["rss_at_start_gb"] * GB <= limit,
                    "est_phase_seconds": {k: v.get("seconds") for k, v in est["phases"].items()}})
    return row


def _gpu_figures(est: dict | None, report: dict) -> dict:
    """Peak GPU memory (torch's max allocated) against the estimate, for a job on a GPU."""
    peak_mb = (report.get("peak_memory_mb") or {}).get("cuda_allocated")
    if peak_mb is None:
        return {}
    out = {"peak_gpu_gb": round(peak_mb / 1024, 3)}
    if est and est.get("peak_gpu"):
        out["est_peak_gpu_gb"] = round(est["peak_gpu"] / GB, 3)
        out["gpu_error"] = round(est["peak_gpu"] / (peak_mb * 2**20) - 1, 3) if peak_mb else None
    return out


def _same_codes(a: Path, b: Path) -> bool:
    import torch

    from .checkpoint import read_quantized

    x, y = read_quantized(a), read_quantized(b)
    return sorted(x.layers) == sorted(y.layers) and all(
        torch.equal(q.codes, y.layers[n].codes) and torch.equal(q.scales, y.layers[n].scales)
        for n, q in x.layers.items())


def _capped(size: str, folder: Path, args: argparse.Namespace, work: Path, reference: Path | None) -> dict:
    """--offload disk under a cap below the model's size, killed halfway and resumed."""
    method = args.cap_method
    est = _estimate(folder, method, args, "disk")
    size_bytes = est["model"]["bytes_on_disk"] if est else 0
    cap = int(size_bytes * args.cap_fraction)
    cap_gb = cap / GB
    run_dir = work / f"run-{size}-{method}-disk-capped"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    n_blocks = est["model"]["n_blocks"] if est else 2
    progress = run_dir / "checkpoint" / "progress.json"

    def halfway() -> bool:
        try:
            return len(json.loads(progress.read_text())["blocks"]) >= n_blocks // 2
        except (OSError, ValueError, KeyError):
            return False

    first = _run(run_dir, _job(folder, method, args, "disk", cap_gb), cap=cap, stop_when=halfway)
    second = _run(run_dir, None, resume=True, cap=cap)
    row = _row(size, method, "disk (capped, killed, resumed)", folder, est, second)
    row.update({"cap_gb": round(cap_gb, 3), "cap_fraction_of_model": args.cap_fraction,
                "killed_at_blocks": n_blocks // 2 if first["killed"] else None,
                "first_peak_rss_gb": round(first["peak_rss"] / GB, 3),
                "peak_rss_gb": round(max(first["peak_rss"], second["peak_rss"]) / GB, 3),
                "exceeded_cap": first["over_cap"] or second["over_cap"],
                "resumed_at_block": (second["report"] or {}).get("resumed_at_block"),
                "wall_s": round(first["wall_s"] + second["wall_s"], 2)})
    if row.get("est_seconds"):                      # against both processes' time together
        row["time_error"] = round(row["est_seconds"] / row["wall_s"] - 1, 3)
    if reference is not None and second["code"] == 0:
        row["same_codes_as_uncapped"] = _same_codes(reference, run_dir / "quantized")
    return row


def _table(rows: list[dict]) -> str:
    head = ("| size | method | offload | peak RSS GB (at start) | estimate GB | RSS target GB | wall s | "
            "quantize s | quantize s / B params | estimate s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        per_b = round(r["quantize_s"] / (r["params"] / 1e9)) if r.get("quantize_s") and r["params"] else "–"
        lines.append(f"| {r['size']} | {r['method']} | {r['offload']} | {r['peak_rss_gb']:.2f} "
                     f"({r.get('rss_at_start_gb', 0):.2f}) | {r.get('est_peak_ram_gb', '–')} | "
                     f"{r.get('rss_target_gb', '–')} | {r['wall_s']:.0f} | {r.get('quantize_s') or '–'} | {per_b} | "
                     f"{r.get('est_seconds', '–')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitsmith bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["0.1b", "0.5b", "1b"], choices=list(SIZES),
                        help="synthetic Llama sizes (core/synthetic.SIZES)")
    parser.add_argument("--methods", nargs="+", default=["rtn", "gptq"], choices=["rtn", "gptq"])
    parser.add_argument("--offload", nargs="+", default=["ram"], choices=["ram", "disk"])
    parser.add_argument("--calib-windows", type=int, default=4, help="GPTQ calibration windows (default 4)")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--cap-size", help="size of the capped --offload disk run (default: the largest)")
    parser.add_argument("--cap-method", default="rtn", choices=["rtn", "gptq"])
    parser.add_argument("--cap-fraction", type=float, default=0.9, help="the cap as a fraction of the model's bytes")
    parser.add_argument("--no-cap", action="store_true", help="skip the capped run")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "bitsmith" / "bench-scale"),
                        help="folder for the synthetic models and run directories")
    parser.add_argument("--device", default="cpu", help="the jobs' device: cpu, or cuda (blocks onloaded to the GPU)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not _has_cuda():
        print("error: --device cuda, but torch sees no CUDA GPU; use --device cpu", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    references: dict[tuple[str, str], Path] = {}
    for size in args.sizes:
        folder = _model(work, size, args.device)
        for method in args.methods:
            for offload in args.offload:
                est = _estimate(folder, method, args, offload)
                run_dir = work / f"run-{size}-{method}-{offload}"
                if run_dir.exists():
                    import shutil

                    shutil.rmtree(run_dir)
                out = _run(run_dir, _job(folder, method, args, offload))
                rows.append(_row(size, method, offload, folder, est, out))
                rows[-1]["phase_seconds"] = _stage_seconds(run_dir)
                if out["code"] == 0:
                    references.setdefault((size, method), run_dir / "quantized")
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if not args.no_cap:
        size = args.cap_size or args.sizes[-1]
        rows.append(_capped(size, _model(work, size, args.device), args, work, references.get((size, args.cap_method))))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"bench": "scale", "device": args.device, "calib_windows": args.calib_windows, "seqlen": args.seqlen,
              "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}, "rows": rows,
              "table": _table(rows)}
    print(json.dumps(result, indent=2) if args.json else _table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
