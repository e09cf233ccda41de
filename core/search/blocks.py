"""Run a causal LM one decoder block at a time: embeddings → blocks → final norm → head.

The search evaluates many candidate models that differ in a few layers; running the
model block by block lets candidates that agree on their first blocks share those
blocks' outputs (core/search/fitness.py). The block inputs (hidden states and the extra
arguments the model passes to every block — attention mask, rotary embeddings, positions)
are captured once per input shape by stopping the model's own forward at block 0, so
every architecture that transformers runs works the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..inventory import find_blocks
from ..offload import FINAL_NORM_NAMES, final_norm, head_onloaded, onloaded, outside_onloaded, placement_of


class _Stop(Exception):
    """Raised by the block-0 hook to end the forward once its inputs are captured."""


class BlockRunner:
    """model(ids).logits computed as head(norm(block_{n-1}(…block_0(embed(ids))))).

    hidden states: [B, L, d]; logits: [B, L, V]. Each piece is onloaded to the work device
    for its call (core/offload.py): a no-op for a resident model, one block's weights at a
    time for a model kept in RAM or on disk.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        prefix, self.blocks = find_blocks(model)
        self.prefix = prefix
        self.final_norm = final_norm(model)
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (LM head)")
        self.device = placement_of(model).device
        self._kwargs: dict[tuple, dict] = {}

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(hidden states entering block 0 [B, L, d], keyword arguments for every block)."""
        captured: dict[str, Any] = {}

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            captured["hidden"] = hidden
            captured["args"] = args[1:]
            captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            raise _Stop

        handle = self.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with outside_onloaded(self.model):
                self.model(input_ids=ids.to(self.device), use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "hidden" not in captured:
            raise RuntimeError("the model never reached its first decoder block")
        if captured["args"]:
            captured["kwargs"]["__args__"] = captured["args"]
        return captured["hidden"], captured["kwargs"]

    @torch.no_grad()
    def block(self, index: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        extra = kwargs.get("__args__", ())
        rest = {k: v for k, v in kwargs.items() if k != "__args__"}
        with onloaded(self.model, index) as block:
            out = block(hidden, *extra, **rest)
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with head_onloaded(self.model) as (norm, head):
            if norm is not None:
                hidden = norm(hidden)
            return head(hidden)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The whole model, block by block (for checks and for dense targets)."""
        hidden, kwargs = self.embed(ids)
        for b in range(self.n_blocks):
            hidden = self.block(b, hidden, kwargs)
        return self.logits(hidden)


__all__ = ["BlockRunner"]
