"""Text sources -> token windows, for calibration and for evaluation.

Sources (a string, as typed on the command line or stored in a job):

    builtin            calibration part of CPython's `pydoc_data.topics` (about 420 kB)
    builtin-eval       its disjoint held-out part (every 8th topic, about 50 kB)
    file:PATH          a .txt file, or .jsonl with a "text" field per line
    hf:NAME[:CONFIG[:SPLIT]]   a dataset through `datasets`; shortcuts hf:wikitext2, hf:c4
    selfgen            data-free: windows sampled from the model itself, seeded

Calibration windows: N random windows of L tokens from the tokenized text, seeded.
Evaluation windows (the standard protocol): the whole text joined, tokenized once,
consecutive non-overlapping windows from the start, the tail dropped, optionally the
first N only.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from .errors import BadInput

Purpose = Literal["calibration", "eval"]
# on_step(done, total): one call per sampled token position (selfgen), for progress events
StepCallback = Callable[[int, int], None]
HELD_OUT_EVERY = 8   # topic i of the sorted pydoc topics is held out when i % 8 == 7

# name -> (dataset, config, split for calibration, split for evaluation, text field)
HF_SHORTCUTS: dict[str, tuple[str, str | None, str, str, str]] = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "train", "test", "text"),
    "c4": ("allenai/c4", "en", "train", "validation", "text"),
}


# --- text sources ------------------------------------------------------------------------

def _builtin_text(held_out: bool) -> str:
    """Every 8th sorted pydoc topic is held out. Some paragraphs repeat across topics; the
    held-out part drops those that also occur in the calibration part, so it is truly unseen."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    is_held = [i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for i in range(len(names))]
    calib = "\n\n".join(topics[n] for n, h in zip(names, is_held) if not h)
    if not held_out:
        return calib
    seen = {p.strip() for p in calib.split("\n\n")}
    held = "\n\n".join(topics[n] for n, h in zip(names, is_held) if h)
    return "\n\n".join(p for p in held.split("\n\n") if p.strip() not in seen)


def _file_text(path_str: str) -> str:
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise BadInput(f"data file {path} does not exist", "check the path after file:")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"data file {path} is not UTF-8 text", "pass a .txt or .jsonl text file") from None
    if path.suffix.lower() != ".jsonl":
        return raw
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise BadInput(f"{path} line {number} is not valid JSON", "each line must be a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise BadInput(f"{path} line {number} has no string field 'text'",
                           'write one {"text": "..."} object per line')
        texts.append(record["text"])
    return "\n\n".join(texts)


def _hf_text(spec: str, purpose: Purpose) -> str:
    parts = spec.split(":")
    if parts[0] in HF_SHORTCUTS and len(parts) == 1:
        name, config, calib_split, eval_split, field = HF_SHORTCUTS[parts[0]]
        split = calib_split if purpose == "calibration" else eval_split
    else:
        name = parts[0]
        config = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 else ("train" if purpose == "calibration" else "test")
        field = "text"
    try:
        import datasets

        if name == "allenai/c4":
            # C4 is 300 GB: read one shard of the requested split only.
            shard = "c4-train.00000-of-01024.json.gz" if split == "train" else "c4-validation.00000-of-00008.json.gz"
            ds = datasets.load_dataset(name, data_files={split: f"en/{shard}"}, split=split)
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types for missing, offline, bad config
        raise BadInput(f"could not load dataset {name!r} (config {config!r}, split {split!r}): "
                       f"{str(err).splitlines()[0] if str(err) else type(err).__name__}",
                       "check the name; offline, it must be in the local HF cache — or use file:PATH or builtin") from None
    if field not in ds.column_names:
        raise BadInput(f"dataset {name!r} has no '{field}' column (columns: {', '.join(ds.column_names)})",
                       "choose a text dataset")
    return "\n\n".join(ds[field])


def load_text(source: str, purpose: Purpose = "calibration") -> str:
    """The raw text of a text source (everything but `selfgen`)."""
    if source == "builtin":
        return _builtin_text(held_out=False)
    if source == "builtin-eval":
        return _builtin_text(held_out=True)
    if source.startswith("file:"):
        return _file_text(source[len("file:"):])
    if source.startswith("hf:"):
        return _hf_text(source[len("hf:"):], purpose)
    raise BadInput(f"unknown data source {source!r}",
                   "use builtin, builtin-eval, file:PATH, hf:NAME[:CONFIG[:SPLIT]] or selfgen")


def tokenize_text(text: str, tokenizer: Any) -> torch.Tensor:
    """The whole text tokenized once: [n_tokens] int64."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    return ids.long()


def _too_short(source: str, have: int, need: int) -> BadInput:
    return BadInput(f"data source {source!r} has {have} tokens, fewer than the {need} needed",
                    "use a longer text, fewer windows, or a shorter --seqlen")


# --- windows --------------------------------------------------------------------------

def eval_windows(source: str, tokenizer: Any, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """[n, seqlen] consecutive non-overlapping windows from the start; tail dropped."""
    if seqlen < 2:
        raise BadInput(f"seqlen {seqlen} is too short", "use --seqlen 2 or more (512 is standard)")
    tokens = tokenize_text(load_text(source, "eval"), tokenizer)
    n = tokens.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise _too_short(source, tokens.numel(), seqlen)
    return tokens[: n * seqlen].view(n, seqlen)


def calibration_windows(source: str, tokenizer: Any, n_windows: int, seqlen: int, seed: int = 0,
                        model: torch.nn.Module | None = None, on_step: StepCallback | None = None,
                        check: Callable[[], None] | None = None) -> torch.Tensor:
    """[n_windows, seqlen] random windows of the source, reproducible from `seed`.

    `on_step` and `check` matter for selfgen only (sampling takes minutes): progress after
    each sampled token position, and a cancellation check before it."""
    if n_windows < 1 or seqlen < 2:
        raise BadInput(f"need at least 1 window of 2 tokens, got {n_windows} x {seqlen}",
                       "raise --calib-windows / --seqlen")
    if source == "selfgen":
        if model is None:
            raise BadInput("selfgen calibration needs the model", "pass the model to sample from")
        return selfgen_windows(model, tokenizer, n_windows, seqlen, seed, on_step=on_step, check=check)
    tokens = tokenize_text(load_text(source, "calibration"), tokenizer)
    if tokens.numel() < seqlen + 1:
        raise _too_short(source, tokens.numel(), seqlen + 1)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (n_windows,), generator=gen)
    return torch.stack([tokens[s: s + seqlen] for s in starts.tolist()])


def _selfgen_cache_file(model: torch.nn.Module, tokenizer: Any, n_windows: int, seqlen: int, seed: int,
                        batch_size: int) -> Path | None:
    """Where sampled windows are kept: BITSMITH_CACHE/selfgen/<key>.safetensors, the key
    covering everything the sample depends on (model config and weights, tokenizer, counts,
    seed, device type, dtype, torch version). None when the cache is off (BITSMITH_CACHE="")."""
    import hashlib
    import os

    root = os.environ.get("BITSMITH_CACHE", str(Path.home() / ".cache" / "bitsmith"))
    if not root:
        return None
    from .model import model_fingerprint
    from .offload import placement_of

    where = placement_of(model)          # where and in which dtype the sampling computes
    key = [model_fingerprint(model), n_windows, seqlen, seed, batch_size, len(tokenizer), where.device.type,
           str(where.dtype), torch.__version__]
    h = hashlib.sha256(json.dumps(key).encode())
    return Path(root) / "selfgen" / f"{h.hexdigest()[:20]}.safetensors"


def selfgen_windows(model: torch.nn.Module, tokenizer: Any, n_windows: int, seqlen: int, seed: int = 0,
                    batch_size: int = 64, on_step: StepCallback | None = None,
                    check: Callable[[], None] | None = None) -> torch.Tensor:
    """Data-free calibration: text sampled from the model itself (temperature 1).

    Each window starts with a token drawn uniformly from the vocabulary (special tokens
    excluded), as in data-free quantization (LLM-QAT), then continues by sampling. Windows
    are sampled `batch_size` at a time: generation is one small forward per token, so its
    time is set by the number of sequential steps, not by the batch.

    Sampling is deterministic but not cheap (about 3.5 min for 32 × 512 tokens of
    SmolLM2-135M on two cores), so the windows are cached on disk and reused by every later
    quantization, search or tuning run that asks for the same sample. `on_step(done, total)`
    follows the sequential steps (token positions × batches); `check()` runs before each step
    and may raise to cancel (nothing is cached then).
    """
    from safetensors.torch import load_file, save_file

    from .atomic import staged_file

    cached = _selfgen_cache_file(model, tokenizer, n_windows, seqlen, seed, batch_size)
    if cached is not None and cached.is_file():
        try:
            return load_file(str(cached))["windows"]
        except Exception:          # a damaged cache entry: sample again and overwrite it
            pass
    windows = _sample_windows(model, tokenizer, n_windows, seqlen, seed, batch_size, on_step, check)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with staged_file(cached) as tmp:
                save_file({"windows": windows.contiguous()}, str(tmp))
        except OSError:            # a read-only or full cache costs time, not correctness
            pass
    return windows


@torch.no_grad()
def _sample_windows(model: torch.nn.Module, tokenizer: Any, n_windows: int, seqlen: int, seed: int,
                    batch_size: int, on_step: StepCallback | None = None,
                    check: Callable[[], None] | None = None) -> torch.Tensor:
    """[n_windows, seqlen] sampled sequences (see selfgen_windows). A model kept off the
    work device runs streamed: each block onloaded for each step (core/offload.py)."""
    from .offload import placement_of, streamed

    device = placement_of(model).device
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(len(tokenizer)) if i not in special and i < model.config.vocab_size]
    gen = torch.Generator().manual_seed(seed)
    firsts = torch.tensor(vocab)[torch.randint(0, len(vocab), (n_windows,), generator=gen)]
    batches = range(0, n_windows, batch_size)
    total = len(batches) * seqlen            # sequential steps: one forward each
    windows = []
    with streamed(model):
        for b, start in enumerate(batches):
            first = firsts[start: start + batch_size].to(device)

            def step(done: int, b: int = b) -> None:
                if on_step is not None:
                    on_step(b * seqlen + done, total)

            windows.append(_sample_continuations(model, first, seqlen, gen, step, check).cpu())
    return torch.cat(windows)


def _sample_continuations(model: torch.nn.Module, first: torch.Tensor, seqlen: int, gen: torch.Generator,
                          on_step: Callable[[int], None] | None = None,
                          check: Callable[[], None] | None = None) -> torch.Tensor:
    """[b, seqlen] sequences starting at `first` [b], sampled with a KV cache.
    `on_step(positions done)` after each forward; `check()` before each (may raise)."""
    ids = first[:, None]
    # transformers 5.x names the KV-cache argument `cache` (`past_key_values` is deprecated)
    cache_arg = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    if check is not None:
        check()
    out = model(input_ids=ids, use_cache=True)
    past, tokens = out.past_key_values, [ids]
    if on_step is not None:
        on_step(1)
    for position in range(2, seqlen + 1):
        if check is not None:
            check()
        probs = torch.softmax(out.logits[:, -1].float(), dim=-1).cpu()
        nxt = torch.multinomial(probs, 1, generator=gen).to(ids.device)
        tokens.append(nxt)
        out = model(input_ids=nxt, use_cache=True, **{cache_arg: past})
        past = out.past_key_values
        if on_step is not None:
            on_step(position)
    return torch.cat(tokens, dim=1)
