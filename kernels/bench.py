"""`bitsmith bench kernels [--json]`: how fast the fused dequant-matmul kernels run.

On a CUDA GPU, for M in {1, 4, 16, 64, 256} rows, weights N x K in {4096x4096, 8192x8192,
4096x14336, 14336x4096}, bits 2/3/4/8, group 128, fp16 activations:
- median time per call, from CUDA-graph replays (launch overhead hidden, as in graph-captured
  decoding; eager event timing if capture fails), of the autotuned kernel choice;
- achieved GB/s (packed weights + scales + zeros + x + y) and the fraction of the memory
  floor it reaches, the floor being those bytes at the device's copy bandwidth, measured
  once with a large device-to-device copy;
- the speedup over fp16 `x @ W.T` (cuBLAS) on the same shape, timed the same way;
- the kernel's relative error against the fp32 reference (a correctness guard).
Buffers rotate: each timed round cycles through enough copies of weights and activations to
exceed the L2 cache three times over, so no call finds its weights in L2.
Without a CUDA GPU it says so and times the exact torch CPU path on small shapes instead.
--quick on a GPU: M in {1, 16}, 8192x8192 then 4096x4096 (the targets' shape first), all bits.
The result is one JSON document (stdout with --json; a table otherwise); --out FILE also
writes it, atomically, after every row ("complete": false until the last), so a run cut
off by a time limit still leaves the rows it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

GPU_SHAPES = ((4096, 4096), (8192, 8192), (4096, 14336), (14336, 4096))  # (N, K) = (out, in)
GPU_ROWS = (1, 4, 16, 64, 256)
QUICK_SHAPES = ((8192, 8192), (4096, 4096))  # the targets' shape first: a cut-off run still has them
QUICK_ROWS = (1, 16)
BITS = (2, 3, 4, 8)
GROUP = 128
# Issue 4's speed targets: (M, N, K, bits) -> minimum speedup over fp16, minimum roofline fraction.
TARGETS = (
    {"m": 1, "n": 8192, "k": 8192, "bits": 4, "min_speedup": 2.6, "min_roofline_fraction": 0.7},
    {"m": 1, "n": 8192, "k": 8192, "bits": 2, "min_speedup": 4.5},
    {"m": 16, "n": 8192, "k": 8192, "bits": 4, "min_speedup": 2.2},
)

__all__ = ["run_kernel_benchmark", "main"]


def _random_layer(n: int, k: int, bits: int, group: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random codes packed as qweight [K*bits/32, N] int32, fp16 scales/zeros [K/group, N]."""
    from .packing import pack_qweight

    codes = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8, device=device)
    qweight = pack_qweight(codes, bits)
    g = k // group
    scales = (torch.rand(g, n, device=device) * 0.02 + 0.001).half()  # ~ Llama weight scales
    zeros = torch.randint(0, 1 << bits, (g, n), device=device).half()
    return qweight, scales, zeros


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _copies(set_bytes: int, l2_bytes: int, cap: int = 64) -> int:
    """Buffer sets to rotate so one round moves >= 3x the L2 size (at least 2 sets)."""
    return max(2, min(cap, math.ceil(3 * l2_bytes / max(1, set_bytes))))


def _time_gpu(calls: list[Callable[[], Any]], samples: int = 15) -> tuple[float, str]:
    """Median seconds per call over `samples` rounds of `calls` (each on its own buffers)."""
    per_round = max(1, math.ceil(64 / len(calls)))  # >= 64 calls per timed round
    for f in calls:  # warm up: compile, autotune, allocate outside any capture
        f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    mode = "cuda_graph"
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for f in calls:
                f()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(per_round):
                for f in calls:
                    f()
        run_round: Callable[[], None] = graph.replay
        run_round()
    except Exception:  # some library call refused capture: time eagerly instead
        mode = "eager"
        torch.cuda.synchronize()

        def run_round() -> None:
            for _ in range(per_round):
                for f in calls:
                    f()

    torch.cuda.synchronize()
    times = []
    for _ in range(samples):
        start.record()
        run_round()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / (per_round * len(calls)))
    return statistics.median(times), mode


def _copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), 1 GiB buffers."""
    n = (1 << 30) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t, _ = _time_gpu([lambda: dst.copy_(src)], samples=10)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 4 / t


def _bench_gpu(quick: bool, result: dict, on_row: Callable[[], None]) -> None:
    """Fill `result` (device fields, then "rows" one by one, calling on_row after each)."""
    import triton

    from .autotune import choose_config
    from .matmul import quant_matmul
    from .reference import dequantize_packed

    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 50 << 20) or (50 << 20))
    copy_bw = _copy_bandwidth(device)
    shapes, rows_m = (QUICK_SHAPES, QUICK_ROWS) if quick else (GPU_SHAPES, GPU_ROWS)
    rows: list[dict] = []
    timing_modes: set[str] = set()
    result.update({"device": "cuda", "device_name": props.name, "l2_bytes": l2,
                   "copy_bandwidth_gbs": round(copy_bw / 1e9, 1), "triton": triton.__version__,
                   "timing": "", "dtype": "float16", "rows": rows, "targets": _check_targets(rows)})
    for n, k in shapes:
        for m in rows_m:
            # fp16 baseline: y = x @ W.T, W [N, K] as nn.Linear holds it
            w16 = torch.randn(n, k, device=device, dtype=torch.float16) * 0.02
            ws = [w16] + [w16.clone() for _ in range(_copies(_nbytes(w16), l2) - 1)]
            xs = [torch.randn(m, k, device=device, dtype=torch.float16) for _ in ws]
            ys = [torch.empty(m, n, device=device, dtype=torch.float16) for _ in ws]
            t16, mode = _time_gpu([lambda x=x, w=w, y=y: torch.matmul(x, w.t(), out=y) for x, w, y in zip(xs, ws, ys)])
            timing_modes.add(mode)
            bytes16 = _nbytes(w16, xs[0], ys[0])
            del ws, xs, ys, w16
            for bits in BITS:
                layer = _random_layer(n, k, bits, GROUP, device)
                r = _copies(_nbytes(*layer), l2)
                layers = [layer] + [tuple(t.clone() for t in layer) for _ in range(r - 1)]
                xs = [torch.randn(m, k, device=device, dtype=torch.float16) for _ in layers]
                ys = [torch.empty(m, n, device=device, dtype=torch.float16) for _ in layers]
                qw, sc, zr = layer
                cfg = choose_config(xs[0], n, bits, GROUP,
                                    lambda c: quant_matmul(xs[0], qw, sc, zr, bits, GROUP, out=ys[0], config=c))
                y = quant_matmul(xs[0], qw, sc, zr, bits, GROUP, config=cfg)
                ref = xs[0].float() @ dequantize_packed(qw, sc, zr, bits, GROUP, k).t()
                rel_err = float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))
                t, mode = _time_gpu([lambda x=x, L=L, y=y: quant_matmul(x, *L, bits, GROUP, out=y, config=cfg)
                                     for x, L, y in zip(xs, layers, ys)])
                timing_modes.add(mode)
                moved = _nbytes(*layer, xs[0], ys[0])
                rows.append({
                    "n": n, "k": k, "m": m, "bits": bits, "group_size": GROUP,
                    "config": cfg.to_json(),
                    "time_us": round(t * 1e6, 2),
                    "gbs": round(moved / t / 1e9, 1),
                    "roofline_fraction": round(moved / copy_bw / t, 3),
                    "fp16_time_us": round(t16 * 1e6, 2),
                    "fp16_gbs": round(bytes16 / t16 / 1e9, 1),
                    "speedup_vs_fp16": round(t16 / t, 3),
                    "ideal_speedup": round(bytes16 / moved, 3),
                    "rel_err": float(f"{rel_err:.3g}"),
                    "buffer_sets": r,
                })
                result.update(timing="+".join(sorted(timing_modes)), targets=_check_targets(rows))
                on_row()
                del layers, xs, ys, layer, y, ref
            torch.cuda.empty_cache()


def _check_targets(rows: list[dict]) -> list[dict]:
    out = []
    for tgt in TARGETS:
        row = next((r for r in rows if all(r[f] == tgt[f] for f in ("m", "n", "k", "bits"))), None)
        res = dict(tgt, measured_speedup=None, measured_roofline_fraction=None, met=None)
        if row is not None:
            res["measured_speedup"] = row["speedup_vs_fp16"]
            res["measured_roofline_fraction"] = row["roofline_fraction"]
            res["met"] = row["speedup_vs_fp16"] >= tgt["min_speedup"] and row["roofline_fraction"] >= tgt.get(
                "min_roofline_fraction", 0.0)
        out.append(res)
    return out


def _time_cpu(fn: Callable[[], Any], budget_s: float = 0.2, max_reps: int = 15) -> float:
    fn()  # warm up
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bench_cpu(quick: bool, result: dict, on_row: Callable[[], None]) -> None:
    from .packing import unpack_qweight
    from .quant_linear import QuantLinear

    shapes = ((256, 256),) if quick else ((512, 512), (1024, 1024))
    rows_m = (1,) if quick else (1, 16, 64)
    budget = 0.02 if quick else 0.2  # seconds of repeats per timing
    rows: list[dict] = []
    result.update({"device": "cpu", "device_name": platform.processor() or platform.machine(),
                   "note": "no CUDA GPU: timing the exact torch CPU path (dequantize, then matmul), fp32",
                   "threads": torch.get_num_threads(), "dtype": "float32", "rows": rows})
    for n, k in shapes:
        for bits in BITS:
            qw, sc, zr = _random_layer(n, k, bits, GROUP, torch.device("cpu"))
            codes = unpack_qweight(qw, bits, k)
            layer = QuantLinear.from_codes(codes, sc.t().float(), zr.t().float(), bits, GROUP)
            cached = QuantLinear.from_codes(codes, sc.t().float(), zr.t().float(), bits, GROUP, cache_dequantized=True)
            w = layer.dequantize(torch.float32)
            for m in rows_m:
                x = torch.randn(m, k)
                t_q = _time_cpu(lambda: layer(x), budget)
                t_c = _time_cpu(lambda: cached(x), budget)
                t_d = _time_cpu(lambda: torch.nn.functional.linear(x, w), budget)
                rows.append({
                    "n": n, "k": k, "m": m, "bits": bits, "group_size": GROUP,
                    "time_us": round(t_q * 1e6, 1),
                    "cached_time_us": round(t_c * 1e6, 1),
                    "dense_fp32_time_us": round(t_d * 1e6, 1),
                    "speedup_vs_dense": round(t_d / t_q, 3),
                })
                on_row()


def _write_json(path: Path, doc: dict) -> None:
    """Write `doc` to `path` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_kernel_benchmark(json_output: bool, quick: bool = False, out: str | os.PathLike | None = None) -> dict:
    """Benchmark the kernels (GPU) or the torch path (CPU); print JSON or a table; return the dict.

    out: also write the document there after every row (complete: false) and at the end."""
    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "kernels", "torch": torch.__version__, "quick": quick,
                              "complete": False}

    def on_row() -> None:
        if out is not None:
            result["elapsed_s"] = round(time.perf_counter() - t0, 1)
            _write_json(Path(out), result)

    (_bench_gpu if torch.cuda.is_available() else _bench_cpu)(quick, result, on_row)
    result["complete"] = True
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if out is not None:
        _write_json(Path(out), result)
    if json_output:
        print(json.dumps(result, indent=1))
    else:
        print(_table(result))
    sys.stdout.flush()
    return result


def _table(result: dict) -> str:
    lines = [f"bench kernels on {result['device']} ({result.get('device_name', '')})"]
    if "note" in result:
        lines.append(result["note"])
    if "copy_bandwidth_gbs" in result:
        lines.append(f"copy bandwidth {result['copy_bandwidth_gbs']} GB/s, timing {result['timing']}")
    gpu = result["device"] == "cuda"
    head = ("N", "K", "M", "bits", "us", "GB/s", "roof", "fp16 us", "speedup", "kernel") if gpu else (
        "N", "K", "M", "bits", "us", "cached us", "dense us", "vs dense")
    lines.append("  ".join(f"{h:>9}" for h in head))
    for r in result["rows"]:
        if gpu:
            c = r["config"]
            vals = (r["n"], r["k"], r["m"], r["bits"], r["time_us"], r["gbs"], r["roofline_fraction"],
                    r["fp16_time_us"], r["speedup_vs_fp16"], f"{c['kernel']}/sk{c['split_k']}")
        else:
            vals = (r["n"], r["k"], r["m"], r["bits"], r["time_us"], r["cached_time_us"], r["dense_fp32_time_us"],
                    r["speedup_vs_dense"])
        lines.append("  ".join(f"{v:>9}" for v in vals))
    for t in result.get("targets", []):
        lines.append(f"target M={t['m']} {t['n']}x{t['k']} {t['bits']}-bit: speedup >= {t['min_speedup']}"
                     f" -> {t['measured_speedup']} ({'met' if t['met'] else 'NOT met'})")
    lines.append(f"elapsed {result['elapsed_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitsmith bench kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--quick", action="store_true",
                        help="fewer shapes: on a GPU M = 1 and 16 on 8192² and 4096², all bits")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON document here, after every row")
    args = parser.parse_args(argv)
    run_kernel_benchmark(json_output=args.json, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
