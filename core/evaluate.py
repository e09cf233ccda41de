"""Evaluation: perplexity, KL(dense ‖ other) per token, and text generation."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

WindowCallback = Callable[[int, int], None]   # (windows done, windows total)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def window_nlls(model: torch.nn.Module, windows: torch.Tensor, on_window: WindowCallback | None = None,
                check: Callable[[], None] | None = None) -> torch.Tensor:
    """Mean next-token negative log-likelihood of each window: [n] float64.

    Labels are the inputs shifted by one (the standard protocol: L-1 predictions per window).
    """
    device = _device_of(model)
    nlls = []
    for i, window in enumerate(windows):
        if check is not None:
            check()
        ids = window[None].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()   # [L-1, V]
        nlls.append(F.cross_entropy(logits, ids[0, 1:]).double().cpu())
        if on_window is not None:
            on_window(i + 1, len(windows))
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
    """Mean over all tokens of KL(P_reference ‖ Q_model)."""
    total, count = 0.0, 0
    for i, window in enumerate(windows):
        if check is not None:
            check()
        ref = reference(input_ids=window[None].to(_device_of(reference)), use_cache=False).logits[0]
        cur = model(input_ids=window[None].to(_device_of(model)), use_cache=False).logits[0]
        kl = kl_per_token(ref, cur.to(ref.device))
        total += kl.double().sum().item()
        count += kl.numel()
        if on_window is not None:
            on_window(i + 1, len(windows))
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
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                         top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
