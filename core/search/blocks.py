"""Run a causal LM one decoder block at a time: embeddings → blocks → final norm → head.

The search evaluates many candidate models that differ in a few layers; running the
model block by block lets candidates that agree on their first blocks share those
blocks' outputs (core/search/fitness.py). The block inputs (hidden states and the extra
arguments the model passes to each block — attention mask, rotary embeddings, positions)
are captured per batch by running the model's own forward with its blocks replaced by the
identity, so every architecture that transformers runs works the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from ..capture import BlockInputs, capture_block_inputs, run_block
from ..inventory import find_blocks
from ..offload import final_norm, head_onloaded, onloaded, placement_of


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

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> tuple[torch.Tensor, BlockInputs]:
        """(hidden states entering block 0 [B, L, d], what every block is called with): one
        batch of core/capture.capture_block_inputs."""
        captured = capture_block_inputs(self.model, ids, batch_size=len(ids))
        if not captured.hidden:
            raise RuntimeError("the model never reached its first decoder block")
        return captured.hidden[0], captured

    @torch.no_grad()
    def block(self, index: int, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        """Block `index` on `hidden` [B, L, d], with the arguments `embed` caught for it."""
        with onloaded(self.model, index) as block:
            return run_block(block, inputs.for_block(index, [hidden]), stop_early=False)[0]

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with head_onloaded(self.model) as (norm, head):
            if norm is not None:
                hidden = norm(hidden)
            return head(hidden)

    @torch.no_grad()
    def final(self, ids: torch.Tensor) -> torch.Tensor:
        """The last block's outputs [B, L, d] (before the final norm)."""
        hidden, inputs = self.embed(ids)
        for b in range(self.n_blocks):
            hidden = self.block(b, hidden, inputs)
        return hidden

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The whole model, block by block (for checks)."""
        return self.logits(self.final(ids))


__all__ = ["BlockRunner"]
