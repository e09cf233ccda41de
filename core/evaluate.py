"""Evaluation: perplexity, KL(dense ‖ other) per token, and text generation."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .capture import final_hidden
from .inventory import find_blocks
from .offload import head_onloaded, is_resident, placement_of, streamed

WindowCallback = Callable[[int, int], None]   # (steps done, steps total): windows, or blocks then windows
BLOCKWISE_BATCH = 4   # windows per block call when a model is evaluated block by block
POSITION_CHUNK = 256  # positions whose logits exist at once there: [256, V] fp32 is 256 MB at V = 256k


def _device_of(model: torch.nn.Module) -> torch.device:
    return placement_of(model).device


def _window_logits(model: torch.nn.Module, windows: torch.Tensor, on_step: WindowCallback | None = None,
                   check: Callable[[], None] | None = None) -> Iterator[Iterator[torch.Tensor]]:
    """For each window [L] of `windows` [n, L], its logits as consecutive chunks of
    positions ([rows, V] each, together [L, V]), one window at a time.

    A resident model runs whole, window by window (one chunk: the model's own logits). A
    model kept off the work device runs block by block over all windows, as GPTQ's
    reference evaluation does: each block is onloaded once, the last hidden states
    [n, L, d] wait on the device, and the final norm and head make each window's logits
    POSITION_CHUNK positions at a time, so a 256k vocabulary costs [256, V] at once, not
    [L, V]. Progress counts windows, or n_blocks + n steps."""
    n = len(windows)
    if is_resident(model):
        device = _device_of(model)
        for i, window in enumerate(windows):
            if check is not None:
                check()
            logits = model(input_ids=window[None].to(device), use_cache=False).logits[0]
            if on_step is not None:
                on_step(i + 1, n)
            yield iter([logits])
        return
    n_blocks = len(find_blocks(model)[1])
    total = n_blocks + n
    hidden = final_hidden(model, windows, BLOCKWISE_BATCH, check,
                          on_block=(lambda done, _: on_step(done, total)) if on_step is not None else None)
    rows = [h[j] for h in hidden for j in range(h.shape[0])]      # per window [L, d]
    del hidden
    with head_onloaded(model) as (norm, head):
        for i in range(n):
            if check is not None:
                check()
            h, rows[i] = rows[i], None                               # type: ignore[call-overload]
            yield (head(norm(h[s: s + POSITION_CHUNK]) if norm is not None else h[s: s + POSITION_CHUNK])
                   for s in range(0, h.shape[0], POSITION_CHUNK))
            if on_step is not None:
                on_step(n_blocks + i + 1, total)


def _rechunk(chunks: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """The same rows in chunks of `size` (views where they can be)."""
    for chunk in chunks:
        for s in range(0, chunk.shape[0], size):
            yield chunk[s: s + size]


@torch.no_grad()
def window_nlls(model: torch.nn.Module, windows: torch.Tensor, on_window: WindowCallback | None = None,
                check: Callable[[], None] | None = None) -> torch.Tensor:
    """Mean next-token negative log-likelihood of each window: [n] float64.

    Labels are the inputs shifted by one (the standard protocol: L-1 predictions per window).
    """
    nlls = []
    L = windows.shape[1]
    for i, chunks in enumerate(_window_logits(model, windows, on_window, check)):
        labels = windows[i, 1:]
        parts = list(chunks) if is_resident(model) else None
        if parts is not None and len(parts) == 1:      # the whole window at once, as always
            logits = parts[0]
            nlls.append(F.cross_entropy(logits[:-1].float(), labels.to(logits.device)).double().cpu())
            continue
        total, start = torch.zeros((), dtype=torch.float64), 0
        for logits in (parts or chunks):                 # [rows, V]; position t predicts token t + 1
            end = min(start + logits.shape[0], L - 1)
            if end > start:
                total += F.cross_entropy(logits[: end - start].float(), labels[start:end].to(logits.device),
                                         reduction="sum").double().cpu()
            start += logits.shape[0]
        nlls.append(total / (L - 1))
    return torch.stack(nlls)


def perplexity(model: torch.nn.Module, windows: torch.Tensor, **kwargs: Any) -> float:
    """exp of the mean token NLL over all windows (every window has the same length)."""
    return float(math.exp(window_nlls(model, windows, **kwargs).mean().item()))


def kl_per_token(ref_logits: torch.Tensor, logits: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """KL(P_ref ‖ Q) for each position: [T] float32, from logits [T, V].

    Chunked over positions so that the fp32 log-softmax of a 128k vocabulary fits.
    """
    out = []
    for start in range(0, ref_logits.shape[0], chunk):
        log_p = F.log_softmax(ref_logits[start: start + chunk].float(), dim=-1)
        log_q = F.log_softmax(logits[start: start + chunk].float(), dim=-1)
        out.append((log_p.exp() * (log_p - log_q)).sum(-1))
    return torch.cat(out)


@torch.no_grad()
def kl_divergence(reference: torch.nn.Module, model: torch.nn.Module, windows: torch.Tensor,
                  on_window: WindowCallback | None = None, check: Callable[[], None] | None = None) -> float:
    """Mean over all tokens of KL(P_reference ‖ Q_model). Each model runs whole or block
    by block (see _window_logits); only one window's logits of each are held at a time."""
    total, count = 0.0, 0
    pairs = zip(_window_logits(reference, windows, None, check), _window_logits(model, windows, on_window, check))
    for ref_chunks, cur_chunks in pairs:            # the same positions, POSITION_CHUNK at a time
        for ref, cur in zip(_rechunk(ref_chunks, POSITION_CHUNK), _rechunk(cur_chunks, POSITION_CHUNK)):
            kl = kl_per_token(ref, cur.to(ref.device))
            total += kl.double().sum().item()
            count += kl.numel()
    return total / max(count, 1)


@torch.no_grad()
def generate_text(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 64,
                  seed: int = 0, temperature: float = 0.0, streamer: Any = None) -> str:
    """Continue `prompt`; greedy by default (temperature 0), seeded sampling otherwise.

    Instruct models get their chat template when the tokenizer has one. `streamer`: a
    transformers streamer that sees the tokens as they come (and may raise to stop).
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt
    ids = tokenizer(text, return_tensors="pt").input_ids.to(_device_of(model))
    torch.manual_seed(seed)
    with streamed(model):            # a model kept off the device: each block onloaded per step
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                             top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
