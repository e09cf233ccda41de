"""Pre-flight estimates: peak RAM, peak GPU memory, disk and time of a job, before it runs.

    est = estimate_job(job)            # core.jobs.Job; probe=False skips the timing probe
    est.to_dict()                      # what `bitsmith <job> --dry-run --json` prints
    est.refusal                        # None, or one line: what does not fit and the setting that would

The window calls `estimate_job` for the job it is about to start; the quantize, search and
eval jobs call `preflight` first and refuse to start what cannot fit.

Memory is counted by phase (load, calibrate, quantize, save, evaluate, ...), each the sum
of what is alive then; the peak is the largest phase. The pieces, in bytes (P: parameters,
T: calibration tokens, d: hidden size, b_s: stored bytes per weight, b_c: compute bytes):

    base        this process's resident memory now (Python, torch, transformers imported)
    home        the weights where they wait: P·b_s in RAM (offload ram), the embeddings,
                final norm and head only (disk), P·b_c on the device (resident)
    onload      one block's working copy on the work device: P_block·b_c (0 when resident)
    activations every calibration window's hidden states in and out of a block: 2·T·d·b_c
    batch       one batch inside a block: MLP and attention intermediates
    layer work  GPTQ of the largest layer: copies of W (8·d_out·d_in·4) and of H (5·d_in²·4)
    codes       the quantized layers: 1 byte a weight plus fp32 scale and zero per group

Time comes from core/probe.py (one block of the architecture, timed on this machine).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .errors import BadInput
from .facts import ModelFacts, model_facts

GB = 2**30
ESTIMATED = ("quantize", "search", "eval")
_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


# --- what the job asks for ---------------------------------------------------------------

@dataclass
class Workload:
    """The settings of a job that move memory and time (one shape for every job kind)."""

    kind: str
    offload: str = "ram"                 # ram | disk | none (resident)
    device: str = "cpu"
    compute_dtype: str = "float32"
    method: str = "gptq"                 # gptq | rtn (quantize, database)
    bits: int = 4
    group_size: int = 64
    calib_windows: int = 0
    seqlen: int = 512
    batch_size: int = 8
    selfgen: bool = False                # calibration sampled from the model
    eval_windows: int = 0                # perplexity windows
    eval_seqlen: int = 512
    kl: bool = False                     # eval: a reference model runs too
    levels: int = 0                      # search: quantized levels in the database
    search_tokens: int = 0               # search: forward tokens of EvoPress (full-model equivalents)
    pool_tokens: int = 0                 # search: dense targets
    topk: int = 0                        # search: 0 = full log-probabilities of the pool
    cache_bytes: int = 0                 # search: the variant cache
    max_memory: int | None = None        # RAM the job may use; None: what the machine has free


@dataclass
class Estimate:
    job: str
    model: dict
    workload: dict
    phases: dict[str, dict[str, float]]  # phase -> {"ram": bytes, "gpu": bytes, "seconds": s}
    peak_ram: int
    peak_gpu: int
    disk: int
    seconds: float | None                # None without the probe
    limits: dict[str, int | None]        # free RAM, free GPU memory, free disk where the run goes
    fits: bool
    problem: str | None = None           # what does not fit
    suggestion: str | None = None        # the setting that would make it fit
    probe: dict | None = None

    @property
    def refusal(self) -> str | None:
        """One line: what does not fit, and the setting that would make it fit."""
        return None if self.fits else f"{self.problem}: {self.suggestion}"

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["refusal"] = self.refusal
        doc["peak_ram_gb"] = round(self.peak_ram / GB, 3)
        doc["peak_gpu_gb"] = round(self.peak_gpu / GB, 3)
        doc["disk_gb"] = round(self.disk / GB, 3)
        return doc

    def summary(self) -> str:
        time_part = f", about {_duration(self.seconds)}" if self.seconds is not None else ""
        gpu = f", GPU {self.peak_gpu / GB:.2f} GB" if self.peak_gpu else ""
        return (f"{self.job}: peak RAM {self.peak_ram / GB:.2f} GB{gpu}, disk {self.disk / GB:.2f} GB"
                f"{time_part}" + ("" if self.fits else f" — does not fit: {self.refusal}"))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# --- memory ------------------------------------------------------------------------------

def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _file_rss() -> int:
    """Resident file-backed pages of this process (mostly the code of torch's libraries)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """This process's peak resident memory: VmHWM, the high-water mark of its own address
    space. (ru_maxrss would also count the parent's memory at fork time, which a small
    process started from a large one inherits through fork and exec.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def startup_seconds() -> float:
    """Seconds since this process started: called once torch and transformers are imported
    and the model sized, it measures what the job's worker pays before it loads anything."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def codes_bytes(params: int, group_size: int) -> int:
    """A quantized layer as stored: uint8 codes plus fp32 scale and zero per group."""
    return params + params * 8 // max(group_size, 1)


def _home(f: ModelFacts, w: Workload) -> tuple[int, int]:
    """(RAM, device memory) of the weights at home."""
    bc = _BYTES[getattr(torch, w.compute_dtype)]
    if f.quantized:      # a Bitsmith checkpoint loads whole: its files, and on a CPU each layer's Ŵ kept fp32
        whole = f.bytes_on_disk + (f.linear_params * 4 if w.device == "cpu" else 0)
        return (0, whole) if w.device == "cuda" else (whole, 0)
    if w.offload == "none":
        whole = f.params * bc
        return (0, whole) if w.device == "cuda" else (whole, 0)
    outside = f.outside_params * f.stored_bytes_per_param
    return (outside if w.offload == "disk" else f.params * f.stored_bytes_per_param), 0


def _block_work(f: ModelFacts, w: Workload, tokens: int, quantizing: bool) -> int:
    """One block on the work device: its working copy, the activations, a batch inside it,
    and (quantizing) the largest layer's GPTQ or RTN copies and the block's codes."""
    bc = _BYTES[getattr(torch, w.compute_dtype)]
    onload = 0 if w.offload == "none" else f.block_params * bc
    if w.offload == "disk":          # read from its file in the stored dtype, then cast: both at once
        onload += f.block_params * f.stored_bytes_per_param
    acts = 2 * tokens * f.hidden * bc
    batch_tokens = min(tokens, w.batch_size * w.seqlen)
    batch = batch_tokens * (3 * f.intermediate + 4 * f.hidden) * bc \
        + min(w.batch_size, max(tokens // max(w.seqlen, 1), 1)) * f.heads * w.seqlen ** 2 * bc
    work = 0
    if quantizing:
        d_in = f.intermediate
        layer = 8 * f.max_layer_params * 4 + (5 * d_in * d_in * 4 if w.method == "gptq" else 0)
        work = layer + codes_bytes(f.block_linear_params, w.group_size) * max(w.levels, 1)
    return onload + acts + batch + work


def _selfgen(f: ModelFacts, w: Workload) -> int:
    """Sampling the calibration windows: the KV cache of up to 64 windows over every block."""
    bc = _BYTES[getattr(torch, w.compute_dtype)]
    batch = min(w.calib_windows, 64)
    kv = batch * w.seqlen * f.n_blocks * 2 * f.kv_dim * bc
    logits = batch * f.vocab * 4 * 3
    onload = 0 if w.offload == "none" else f.block_params * bc + f.outside_params * bc
    return kv + logits + onload


def _eval_work(f: ModelFacts, w: Workload) -> int:
    """Evaluation: the last hidden states of every window wait for the head (block by
    block), or one window runs whole (resident); the head makes one window's logits."""
    bc = _BYTES[getattr(torch, w.compute_dtype)]
    tokens = w.eval_windows * w.eval_seqlen
    head = 0 if w.offload == "none" else (f.vocab * f.hidden * bc if f.vocab else 0)
    positions = w.eval_seqlen if w.offload == "none" else min(w.eval_seqlen, 256)   # core/evaluate.POSITION_CHUNK
    logits = positions * f.vocab * 4 * 3
    hidden = 0 if w.offload == "none" else 2 * tokens * f.hidden * bc
    per_window = w.eval_seqlen * (3 * f.intermediate + 4 * f.hidden) * bc + f.heads * w.eval_seqlen ** 2 * bc
    onload = 0 if w.offload == "none" else f.block_params * bc
    return (head + logits + hidden + per_window + onload) * (2 if w.kl else 1)


def _phases(f: ModelFacts, w: Workload, base: int) -> dict[str, dict[str, float]]:
    """Memory of each phase: {"ram": bytes, "gpu": bytes}."""
    home_ram, home_gpu = _home(f, w)
    on_gpu = w.device == "cuda"
    phases: dict[str, dict[str, float]] = {}

    def add(name: str, work: int, ram_extra: int = 0) -> None:
        ram = base + home_ram + ram_extra + (0 if on_gpu else work)
        phases[name] = {"ram": ram, "gpu": home_gpu + (work if on_gpu else 0)}

    add("load", 0)
    tokens = w.calib_windows * w.seqlen
    if w.kind in ("quantize", "search") and w.selfgen:
        add("calibrate", _selfgen(f, w))
    if w.kind == "quantize":
        add("quantize", _block_work(f, w, tokens, quantizing=True))
        # the weights file is written a tensor at a time (core/quant/stream.py), the codes read
        # back a block at a time; the float weights of quantized layers were dropped block by block
        rest = (f.params - f.linear_params) * f.stored_bytes_per_param if w.offload != "disk" \
            else f.outside_params * f.stored_bytes_per_param
        phases["save"] = {"ram": base + rest + 2 * codes_bytes(f.block_linear_params, w.group_size), "gpu": 0}
    elif w.kind == "search":
        add("database", _block_work(f, w, tokens, quantizing=True))
        variants = f.linear_params * (f.stored_bytes_per_param if w.offload != "none" else 4)
        targets = w.pool_tokens * (w.topk * 8 if w.topk else f.vocab * 4)
        add("search", _block_work(f, replace(w, batch_size=min(w.batch_size, 4)), 0, quantizing=False),
            ram_extra=variants + targets + w.cache_bytes)
    elif w.kind == "eval":
        add("evaluate", _eval_work(f, w), ram_extra=f.params * f.stored_bytes_per_param if w.kl else 0)
    return phases


def _disk(f: ModelFacts, w: Workload) -> int:
    """Bytes the run directory will hold."""
    codes = codes_bytes(f.linear_params, w.group_size)
    outside = f.outside_params * f.stored_bytes_per_param
    calib = w.calib_windows * w.seqlen * 8
    if w.kind == "quantize":
        return 2 * codes + outside + calib            # checkpoint/ blocks + quantized/
    if w.kind == "search":
        db = codes * w.levels
        targets = w.pool_tokens * (w.topk * 8 if w.topk else f.vocab * 4)
        return db + targets + calib
    return 0


# --- time ----------------------------------------------------------------------------------

def _seconds(f: ModelFacts, w: Workload, t: Any) -> dict[str, float]:
    """Seconds of each phase from the probe's block times."""
    n = f.n_blocks
    read = f.bytes_on_disk / (400 * 2**20)                        # files read at ~400 MB/s
    onload = 0.0 if w.offload == "none" else t.onload_s
    out: dict[str, float] = {"load": read}
    tokens = w.calib_windows * w.seqlen
    if w.selfgen and w.kind in ("quantize", "search"):
        batches = math.ceil(w.calib_windows / 64)
        step = n * (min(w.calib_windows, 64) * t.forward_s_per_token + onload) \
            + min(w.calib_windows, 64) * t.head_s_per_token
        out["calibrate"] = batches * w.seqlen * step
    if w.kind == "quantize":
        passes = 0.0 if tokens == 0 else (2.0 if w.method == "rtn" else (f.groups_per_block + 1) / 2 + 1)
        hess = t.hessian_s_per_token if tokens else 0.0
        per_block = t.block_quant_s + tokens * (passes * t.forward_s_per_token + hess) + onload
        out["quantize"] = n * per_block
        out["save"] = codes_bytes(f.linear_params, w.group_size) * 2 / (300 * 2**20)
    elif w.kind == "search":
        per_block = t.block_quant_s * w.levels + tokens * (t.forward_s_per_token + t.hessian_s_per_token) + onload
        out["database"] = n * per_block
        full = n * (t.forward_s_per_token) + t.head_s_per_token
        out["search"] = (w.search_tokens + w.pool_tokens) * full + w.search_tokens / max(w.seqlen, 1) * n * onload
    elif w.kind == "eval":
        tokens = w.eval_windows * w.eval_seqlen
        full = n * t.forward_s_per_token + t.head_s_per_token
        out["evaluate"] = tokens * full * (2 if w.kl else 1) + n * onload
    return out


# --- limits and refusal ---------------------------------------------------------------------

def _limits(w: Workload, run_dir: Path | None) -> dict[str, int | None]:
    import psutil

    ram = psutil.virtual_memory().available + current_rss()
    if w.max_memory is not None:
        ram = min(ram, w.max_memory)
    gpu = None
    if w.device == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.mem_get_info()[0]
    where = run_dir if run_dir is not None else Path.cwd()
    while not where.exists() and where != where.parent:
        where = where.parent
    return {"ram": ram, "gpu": gpu, "disk": shutil.disk_usage(where).free}


def _fits(peak_ram: int, peak_gpu: int, disk: int, limits: dict) -> str | None:
    """What does not fit, or None."""
    if peak_ram > limits["ram"]:
        return f"needs {peak_ram / GB:.1f} GB of RAM, {limits['ram'] / GB:.1f} GB are available"
    if limits["gpu"] is not None and peak_gpu > limits["gpu"]:
        return f"needs {peak_gpu / GB:.1f} GB of GPU memory, {limits['gpu'] / GB:.1f} GB are free"
    if disk > limits["disk"]:
        return f"needs {disk / GB:.1f} GB of disk, {limits['disk'] / GB:.1f} GB are free"
    return None


def _alternatives(w: Workload) -> list[tuple[str, Workload]]:
    """Settings that need less, in the order a user would try them, as the job's command
    line spells them (each after --offload disk, which comes first)."""
    out: list[tuple[str, Workload]] = []
    if w.offload not in ("disk", "none"):
        out.append(("--offload disk", replace(w, offload="disk")))
    lean = replace(w, offload="disk") if w.offload != "none" else w
    flag = {"quantize": "--calib-windows", "search": "--windows"}.get(w.kind)
    windows = w.calib_windows
    while flag and windows > 1:
        windows //= 2
        out.append((f"{flag} {windows}", replace(lean, calib_windows=windows)))
    if w.kind == "quantize" and w.batch_size > 1:
        out.append(("--batch-size 1", replace(lean, batch_size=1)))
    if w.device == "cuda":
        out.append(("--device cpu", replace(lean, device="cpu", compute_dtype="float32")))
    elif torch.cuda.is_available():
        out.append(("--device cuda", replace(lean, device="cuda")))
    return out


# --- the estimate --------------------------------------------------------------------------

def estimate(facts: ModelFacts, w: Workload, probe: Any = None, run_dir: Path | None = None,
             base: int | None = None) -> Estimate:
    base = current_rss() if base is None else base
    phases = _phases(facts, w, base)
    seconds = None
    if probe is not None:
        times = {"start": probe.start_s, **_seconds(facts, w, probe)}
        phases = {"start": {"ram": base, "gpu": 0}, **phases}
        for name, s in times.items():
            phases.setdefault(name, {"ram": base, "gpu": 0})["seconds"] = round(s, 2)
        seconds = sum(times.values())
    peak_ram = int(max(p["ram"] for p in phases.values()))
    peak_gpu = int(max(p["gpu"] for p in phases.values()))
    disk = _disk(facts, w)
    limits = _limits(w, run_dir)
    problem = _fits(peak_ram, peak_gpu, disk, limits)
    suggestion = _suggest(facts, w, base, limits) if problem is not None else None
    return Estimate(w.kind, facts.to_dict(), asdict(w), {k: dict(p) for k, p in phases.items()},
                    peak_ram, peak_gpu, disk, seconds, limits, problem is None, problem, suggestion,
                    probe.to_dict() if probe is not None else None)


def _suggest(facts: ModelFacts, w: Workload, base: int, limits: dict) -> str:
    for setting, alt in _alternatives(w):
        phases = _phases(facts, alt, base)
        if _fits(int(max(p["ram"] for p in phases.values())), int(max(p["gpu"] for p in phases.values())),
                 _disk(facts, alt), limits) is None:
            with_disk = alt.offload == "disk" and w.offload != "disk" and setting != "--offload disk"
            return f"try {setting}" + (" with --offload disk" if with_disk else "")
    return "no setting of this job makes it fit this machine: use one with more memory"


# --- from a job ----------------------------------------------------------------------------

def workload_of(kind: str, spec: Any, facts: ModelFacts | None = None) -> Workload:
    """The Workload of a job spec (quantize, search, eval; other kinds: loading only)."""
    from .model import compute_dtype, resolve_device

    model = getattr(spec, "model", None)
    device = resolve_device(model.device) if model is not None else torch.device("cpu")
    stored = getattr(torch, facts.stored_dtype) if facts is not None else torch.float32
    dtype = compute_dtype(model.dtype if model is not None else "auto", device, stored)
    offload = model.offload if model is not None else "auto"
    offload = "ram" if offload == "auto" else offload
    if (device.type == "cpu" and dtype == stored and offload == "ram") or (facts is not None and facts.quantized):
        offload = "none"                                   # resident: the home is the device
    w = Workload(kind=kind, offload=offload, device=device.type, compute_dtype=str(dtype).replace("torch.", ""),
                 max_memory=_max_memory(model))
    if kind == "quantize":
        from .plan import PlanSpec

        plan = spec.plan if isinstance(spec.plan, PlanSpec) else None
        return replace(w, method=spec.method, bits=plan.bits if plan else 4,
                       group_size=plan.group_size if plan else 64, calib_windows=spec.calib_windows,
                       seqlen=spec.seqlen, batch_size=spec.batch_size,
                       selfgen="selfgen" in spec.calib and spec.calib_windows > 0)
    if kind == "search":
        from .search.presets import resolved_preset

        preset = resolved_preset(spec)
        stages = [preset.offspring] + list(preset.survivors[:-1])
        per_gen = sum(c * t for c, t in zip(stages, preset.tokens))
        search = preset.generations * per_gen if spec.method == "evopress" else 0
        return replace(w, method="gptq", group_size=spec.group_size, calib_windows=preset.windows,
                       seqlen=spec.seqlen, batch_size=spec.batch_size, selfgen="selfgen" in spec.calib,
                       levels=len([b for b in set(spec.levels) if b != 16]) if spec.method != "spike" else 0,
                       search_tokens=search, pool_tokens=preset.pool_windows * preset.fitness_seqlen
                       if spec.method == "evopress" else 0, topk=preset.kl_topk, cache_bytes=int(spec.cache_gb * GB),
                       eval_windows=preset.eval_windows if spec.final_eval else 0, eval_seqlen=spec.eval_seqlen)
    if kind == "eval":
        return replace(w, eval_windows=_eval_window_count(spec), eval_seqlen=spec.seqlen, kl=bool(spec.reference))
    return w


def _max_memory(model: Any) -> int | None:
    gb = getattr(model, "max_memory_gb", None) if model is not None else None
    return int(gb * GB) if gb else None


def _eval_window_count(spec: Any) -> int:
    """Windows the eval job will run: the given count, or all of the text (tokenized here)."""
    if spec.windows is not None:
        return spec.windows
    from transformers import AutoTokenizer

    from .data import eval_windows

    return int(eval_windows(spec.data, AutoTokenizer.from_pretrained(_tokenizer_folder(spec.model)), spec.seqlen).shape[0])


def _tokenizer_folder(model: Any) -> str:
    from .model import _default_cache_folder

    return str(_default_cache_folder()) if model.source == "default" else model.source


def estimate_job(job: Any, probe: bool = True, run_dir: Path | None = None) -> Estimate:
    """The pre-flight estimate of a job (core.jobs.Job). `probe` times one block on this
    machine (seconds); without it the estimate has memory and disk only (instant)."""
    spec = job.spec
    model = getattr(spec, "model", None)
    if job.kind not in ESTIMATED or model is None:
        raise BadInput(f"there is no estimate for {job.kind} jobs yet", f"estimate a {', '.join(ESTIMATED)} job")
    from .threads import cpu_threads

    base = current_rss()                      # before the probe: what the job's process starts from
    code_pages = _file_rss()
    facts = model_facts(model)
    started = startup_seconds()
    w = workload_of(job.kind, spec, facts)
    if w.selfgen and _selfgen_cached(facts, w, spec):
        w = replace(w, selfgen=False)         # sampled before: read from the cache, no sampling
    times = None
    if probe:
        with cpu_threads(getattr(spec, "threads", None), follow_load=job.kind == "search"):   # as the job will
            times = _probe(facts, w, model, spec)
        times.start_s = started
        # torch's kernels page their code in on first use (about 90 MB of a CPU build): what
        # running one block added to the resident library pages counts from then on
        base += max(0, _file_rss() - code_pages)
    return estimate(facts, w, times, run_dir, base)


def _selfgen_cached(facts: ModelFacts, w: Workload, spec: Any) -> bool:
    """Whether the job's selfgen windows are already in the sample cache (core/data.py):
    the cache key is computed from the model's files, as the loaded model would give it."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from .data import _selfgen_cache_file
    from .facts import _resolve, empty_model
    from .offload import DiskWeights, Placement, attach, map_checkpoint_names, safetensors_index

    if facts.files is None or spec.calib.strip() != "selfgen":
        return False
    try:
        model = empty_model(_resolve(spec.model)[0], spec.model.trust_remote_code)
        index, _ = map_checkpoint_names(model, safetensors_index(Path(facts.files)))
        attach(model, Placement(torch.device(w.device), getattr(torch, w.compute_dtype), "disk", DiskWeights(index)))
        tokenizer = AutoTokenizer.from_pretrained(facts.files, trust_remote_code=spec.model.trust_remote_code)
        file = _selfgen_cache_file(model, tokenizer, w.calib_windows, w.seqlen, spec.seed, 64)
    except Exception:  # noqa: BLE001 - a key that cannot be made means: it will be sampled
        return False
    return file is not None and file.is_file()


def _probe(facts: ModelFacts, w: Workload, model: Any, spec: Any) -> Any:
    from .facts import _resolve
    from .jobkinds.quantize import QuantizeSpec, _options
    from .probe import probe_block

    config = _resolve(model)[0]
    options = _options(spec if isinstance(spec, QuantizeSpec) else QuantizeSpec(method=w.method))
    return probe_block(config, facts, torch.device(w.device), getattr(torch, w.compute_dtype),
                       getattr(torch, facts.stored_dtype), w.method, options, w.group_size, w.bits,
                       model.trust_remote_code)


__all__ = ["Workload", "Estimate", "estimate", "estimate_job", "workload_of", "codes_bytes", "current_rss"]
