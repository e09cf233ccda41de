"""Launch configurations for the dequant kernels: what is valid, a heuristic, and autotuning.

A `Config` names a kernel ("gemv": dequant_gemv.py, "dot": dequant_gemm.py) and its tile.
Invariants every config keeps (checked by `check_config`):
- BLOCK_K is a power of two dividing the group size, so a K tile lies in one group and needs
  one (scale, zero) row, and K needs no masking (g | K);
- BLOCK_K holds whole packed words: >= 32/bits codes, and >= 32 at 3 bits (3 words = 32 codes);
- "dot" tiles are >= 16 on every side (tensor-core minimum).

On a GPU the first call for a key (device, dtype, M bucket, N, K, bits, group) times every
candidate with `triton.testing.do_bench` (which flushes L2 between runs) and keeps the
fastest; choices persist in a JSON file (BITSMITH_KERNEL_CACHE, default
~/.cache/bitsmith/kernel_autotune.json; set it to "" to keep choices in memory only).
BITSMITH_AUTOTUNE=0 uses the heuristic instead. Under TRITON_INTERPRET=1, and while a CUDA
graph is being captured, nothing is timed: the cached choice or the heuristic is used.
Nothing here imports triton or queries a device at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

__all__ = [
    "Config",
    "KERNEL_BITS",
    "kernel_supports",
    "check_config",
    "candidate_configs",
    "heuristic_config",
    "choose_config",
    "m_bucket",
    "clear_cache",
]

KERNEL_BITS = (2, 3, 4, 8)
_VERSION = 1  # bump when kernels change enough to invalidate timed choices


@dataclasses.dataclass(frozen=True)
class Config:
    kernel: str  # "gemv" | "dot"
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    group_m: int = 8  # "dot" only: output-tile band height for L2 reuse

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Config":
        return cls(**d)


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _min_block_k(bits: int) -> int:
    return 32 if bits == 3 else 32 // bits


def _max_block_k(group_size: int) -> int:
    """Largest power of two dividing the group size."""
    return group_size & -group_size


def kernel_supports(bits: int, group_size: int, in_features: int) -> bool:
    """Whether the Triton kernels serve this layer (otherwise use the torch path)."""
    return (
        bits in KERNEL_BITS
        and group_size > 0
        and in_features % group_size == 0
        and _max_block_k(group_size) >= _min_block_k(bits)
    )


def check_config(cfg: Config, m: int, n: int, k: int, bits: int, group_size: int) -> None:
    """Raise ValueError if `cfg` cannot run this problem correctly (M and N never matter)."""
    _check(cfg, k, bits, group_size)


@functools.lru_cache(maxsize=4096)  # launches re-check the same few configs: keep it off the hot path
def _check(cfg: Config, k: int, bits: int, group_size: int) -> None:
    if not kernel_supports(bits, group_size, k):
        raise ValueError(f"kernels do not serve bits={bits}, group_size={group_size}, K={k}")
    bk = cfg.block_k
    problems = []
    if cfg.kernel not in ("gemv", "dot"):
        problems.append("kernel must be 'gemv' or 'dot'")
    if not (_pow2(cfg.block_m) and _pow2(cfg.block_n) and _pow2(bk)):
        problems.append("block sizes must be powers of two")
    if group_size % bk or bk < _min_block_k(bits):
        problems.append(f"block_k must divide group_size {group_size} and hold whole words (>= {_min_block_k(bits)})")
    if cfg.kernel == "dot" and min(cfg.block_m, cfg.block_n, bk) < 16:
        problems.append("dot tiles must be >= 16 on every side")
    if not 1 <= cfg.split_k <= max(1, k // bk):
        problems.append(f"split_k must be in 1..{k // bk}")
    if problems:
        raise ValueError(f"bad config {cfg} for K={k} bits={bits} g={group_size}: " + "; ".join(problems))


def m_bucket(m: int) -> int:
    """Rows are timed per power-of-two bucket: 1, 2, 4, ..., 4096 (and above)."""
    return min(_next_pow2(m), 4096)


def _valid(cfgs: Iterable[Config], m: int, n: int, k: int, bits: int, group_size: int) -> list[Config]:
    out: list[Config] = []
    for c in cfgs:
        try:
            check_config(c, m, n, k, bits, group_size)
        except ValueError:
            continue
        if c not in out:
            out.append(c)
    return out


def _block_ks(group_size: int, bits: int, wanted: Iterable[int]) -> list[int]:
    """Wanted K tiles clipped to what the group allows (at least one survives)."""
    top = _max_block_k(group_size)
    return sorted({min(b, top) for b in wanted if min(b, top) >= _min_block_k(bits)} or {top})


# Tiles timed on a GPU: (block_m or None = rows of M, block_n, block_k, num_warps, num_stages).
# Split-K is a runtime argument, so the splits of one tile share a compiled kernel: a key
# costs a handful of compilations and 10-20 timings.
_GEMV_TILES = ((None, 64, 128, 4, 2), (None, 128, 128, 4, 2), (None, 256, 128, 8, 2),
               (None, 128, 64, 4, 2), (None, 256, 64, 4, 2))
_DOT_TILES_DECODE = ((16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (16, 128, 64, 4, 4), (16, 256, 64, 8, 4))
_DOT_TILES_SMALL = ((32, 64, 128, 4, 3), (64, 64, 64, 4, 3), (64, 128, 64, 4, 3), (32, 128, 128, 4, 3))
_DOT_TILES_LARGE = ((64, 128, 64, 4, 4), (128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (128, 256, 64, 8, 3),
                    (64, 64, 128, 4, 4))


def candidate_configs(m: int, n: int, k: int, bits: int, group_size: int) -> list[Config]:
    """The search space timed on a GPU for M rows (10-40 configs, all valid)."""
    cands: list[Config] = []

    def add(kernel: str, tiles, splits, bm_default: int) -> None:
        for bm, bn, bk0, warps, stages in tiles:
            for bk in _block_ks(group_size, bits, (bk0,)):
                for sk in splits:
                    cands.append(Config(kernel, bm or bm_default, bn, bk, sk, num_warps=warps, num_stages=stages))

    if m <= 16:
        # GEMV keeps BLOCK_M rows of fp32 partial products per tile in registers: more than 4
        # rows spill, so larger M is tiled over the grid (and usually loses to tl.dot).
        add("gemv", _GEMV_TILES, (1, 2, 4, 8), min(_next_pow2(m), 4))
        add("dot", _DOT_TILES_DECODE, (1, 2, 4, 8), 16)
    elif m <= 64:
        add("dot", _DOT_TILES_SMALL, (1, 2, 4), 16)
    else:
        add("dot", _DOT_TILES_LARGE, (1, 2) if m <= 256 else (1,), 16)
    return _valid(cands, m, n, k, bits, group_size)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def heuristic_config(m: int, n: int, k: int, bits: int, group_size: int, sm_count: int | None = None) -> Config:
    """A sound untimed choice: GEMV for M <= 4, tl.dot above; split K until ~2 waves of programs."""
    top = _max_block_k(group_size)
    if m <= 4 or top < 16:
        bm, bn = min(_next_pow2(m), 4), 128
        bk = max(min(128, top), _min_block_k(bits))
        programs = -(-n // bn) * -(-m // bm)
        cfg = Config("gemv", bm, bn, bk, 1, num_warps=4, num_stages=2)
    else:
        bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 128 else 128
        bn = 64 if m <= 64 else 128
        bk = min(64, top)
        programs = -(-m // bm) * -(-n // bn)
        cfg = Config("dot", bm, bn, bk, 1, num_warps=4 if bm * bn <= 64 * 128 else 8, num_stages=3)
    split = 1
    if sm_count:
        # Too few programs leave SMs idle in a memory-bound kernel: split K (powers of two)
        # until there are >= 2 programs per SM, while each split keeps >= 4 K tiles.
        while programs * split < 2 * sm_count and k // cfg.block_k >= 8 * split and split < 16:
            split *= 2
    return dataclasses.replace(cfg, split_k=split)


# ----------------------------------------------------------------------------- choice cache

_CACHE: dict[str, Config] = {}  # persisted key string -> timed choice
_FAST: dict[tuple, Config] = {}  # (device, dtype, M bucket, N, K, bits, g) -> choice, skips key building
_LOADED_FROM: str | None = None


def _cache_path() -> Path | None:
    p = os.environ.get("BITSMITH_KERNEL_CACHE")
    if p is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "bitsmith" / "kernel_autotune.json"
    return Path(p) if p else None


def _load_disk() -> None:
    global _LOADED_FROM
    path = _cache_path()
    if path is None or _LOADED_FROM == str(path):
        return
    _LOADED_FROM = str(path)
    try:
        data = json.loads(path.read_text())
        for key, cfg in data.items():
            _CACHE.setdefault(key, Config.from_json(cfg))
    except (OSError, ValueError, TypeError):
        pass  # no file yet, or a damaged one: it is only a cache


def _save_disk() -> None:
    path = _cache_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kernel_autotune.")
        with os.fdopen(fd, "w") as f:
            json.dump({k: c.to_json() for k, c in sorted(_CACHE.items())}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        pass


def clear_cache() -> None:
    """Forget every in-memory choice (the disk file is left alone)."""
    global _LOADED_FROM
    _CACHE.clear()
    _FAST.clear()
    _LOADED_FROM = None


def _key(device: torch.device, dtype: torch.dtype, m: int, n: int, k: int, bits: int, group_size: int) -> str:
    import triton  # only reached when launching on a GPU

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"v{_VERSION}|triton{triton.__version__}|{name}|{dtype}|m{m_bucket(m)}|n{n}|k{k}|b{bits}|g{group_size}"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choose_config(
    x: torch.Tensor,
    n: int,
    bits: int,
    group_size: int,
    run: Callable[[Config], object],
) -> Config:
    """The config for x [M, K] times an N x K weight; `run(cfg)` launches one candidate.

    Timed choices are cached per key; untimed situations fall back to the heuristic.
    """
    m, k = x.shape
    fast_key = (x.device, x.dtype, m_bucket(m), n, k, bits, group_size)
    cfg = _FAST.get(fast_key)
    if cfg is not None:
        return cfg
    if _interpreting() or x.device.type != "cuda":
        return heuristic_config(m, n, k, bits, group_size)
    sms = _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())
    if os.environ.get("BITSMITH_AUTOTUNE", "1") == "0":
        cfg = _FAST[fast_key] = heuristic_config(m, n, k, bits, group_size, sms)
        return cfg
    _load_disk()
    key = _key(x.device, x.dtype, m, n, k, bits, group_size)
    cfg = _CACHE.get(key)
    if cfg is not None:
        _FAST[fast_key] = cfg
        return cfg
    if torch.cuda.is_current_stream_capturing():
        return heuristic_config(m, n, k, bits, group_size, sms)
    cfg = _time_candidates(candidate_configs(m, n, k, bits, group_size), run) or heuristic_config(
        m, n, k, bits, group_size, sms
    )
    _CACHE[key] = _FAST[fast_key] = cfg
    _save_disk()
    return cfg


def _time_candidates(cands: list[Config], run: Callable[[Config], object]) -> Config | None:
    from triton.testing import do_bench

    best: tuple[float, Config] | None = None
    for cfg in cands:
        try:
            ms = do_bench(lambda: run(cfg), warmup=5, rep=20, return_mode="median")
        except Exception:  # a config the compiler rejects (e.g. out of shared memory) is skipped
            continue
        if best is None or ms < best[0]:
            best = (ms, cfg)
    return None if best is None else best[1]
