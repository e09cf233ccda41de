"""Block-by-block passes through a decoder: capture block 0's inputs, then run each block
on the calibration activations, one block on the work device at a time.

    inputs = capture_block_inputs(model, windows, device)   # hidden states + call kwargs
    for each block i: on_block(i, block, inputs); inputs = block(inputs)

`iterate_blocks` is the reusable loop: the quantizer changes a block's weights inside
`on_block` (so the next block sees the quantized block's outputs, as GPTQ does); a search
or an analysis registers forward hooks there to collect per-layer input statistics:

    def on_block(index, block, inputs):
        with record_inputs(block, {"mlp.down_proj": lambda x: stats.append(x.abs().amax(-1))}):
            run_block(block, inputs)
    iterate_blocks(model, windows, on_block)

The inputs are caught in one pass with every block replaced by the identity: block 0's
hidden states, and each block's positional and keyword arguments (attention mask, position
embeddings, ... whatever this architecture passes; blocks of different types get their
own), so no block computes during the capture.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .inventory import find_blocks, is_linear
from .offload import onloaded, outside_onloaded, placement_of, trim_memory


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (its inputs were what we wanted)."""


@dataclass
class BlockInputs:
    """The inputs of one decoder block for every calibration batch."""

    hidden: list[torch.Tensor]     # per batch: [B, L, hidden] on the work device
    args: list[tuple]              # per batch: further positional arguments (usually empty)
    kwargs: list[dict[str, Any]]   # per batch: keyword arguments of the block call
    # per block, per batch: (args, kwargs) of that block's call. Blocks of different types
    # get different ones (Gemma 2/3: sliding-window or global mask and rotary tables)
    calls: list[list[tuple[tuple, dict[str, Any]]]] | None = None

    def __len__(self) -> int:
        return len(self.hidden)

    def for_block(self, index: int, hidden: list[torch.Tensor]) -> "BlockInputs":
        """`hidden` with the arguments block `index` is called with."""
        if self.calls is None or index >= len(self.calls):
            return BlockInputs(hidden, self.args, self.kwargs, self.calls)
        return BlockInputs(hidden, [c[0] for c in self.calls[index]], [c[1] for c in self.calls[index]], self.calls)

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def model_device(model: nn.Module) -> torch.device:
    """The work device: where blocks compute (core/offload.py), not where the weights wait."""
    return placement_of(model).device


@torch.no_grad()
def capture_block_inputs(model: nn.Module, windows: torch.Tensor, device: torch.device | str | None = None,
                         batch_size: int = 8) -> BlockInputs:
    """Run the windows [N, L] through the model with every decoder block replaced by the
    identity, keeping what each block is called with: block 0's hidden states, and every
    block's own arguments (`calls`). No block computes and no block weight is touched; the
    pass stops at the last block, before the final norm and head."""
    device = model_device(model) if device is None else torch.device(device)
    _, blocks = find_blocks(model)
    if device != model_device(model):
        raise ValueError(f"the model computes on {model_device(model)}, not {device}: load it for that device")
    first: list[torch.Tensor] = []
    calls: list[list[tuple[tuple, dict[str, Any]]]] = [[] for _ in blocks]

    def stub_for(index: int) -> Callable:
        def stub(*args: Any, **kwargs: Any) -> torch.Tensor:
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            if index == 0:
                first.append(hidden.detach())
            calls[index].append((rest, dict(kwargs)))
            if index == len(blocks) - 1:
                raise _StopForward
            return hidden            # transformers 5 blocks return the hidden states
        return stub

    for index, block in enumerate(blocks):
        block.forward = stub_for(index)          # an instance attribute shadows the method
    try:
        with outside_onloaded(model):
            for batch in windows.split(batch_size):
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
    if any(len(c) != len(first) for c in calls):     # a model that does not call its blocks in turn
        calls = [calls[0]] * len(blocks)
    return BlockInputs(first, [c[0] for c in calls[0]], [c[1] for c in calls[0]], calls)


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, stop_early: bool = True) -> list[torch.Tensor]:
    """The block's outputs for every batch. With `stop_early`, a hook that raises
    `_StopForward` (see `record_inputs(..., stop_after=...)`) ends a batch quietly."""
    outs = []
    for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
        try:
            outs.append(_block_output(block(hidden, *args, **kwargs)))
        except _StopForward:
            if not stop_early:
                raise
    return outs


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """{name inside the block: linear module}, in module order."""
    return {name: m for name, m in block.named_modules() if name and is_linear(m)}


@contextmanager
def record_inputs(block: nn.Module, callbacks: dict[str, Callable[[torch.Tensor], None]],
                  stop_after: set[str] | None = None) -> Iterator[None]:
    """Call callbacks[name](x) with each listed linear's input x [B, L, d_in] while inside.

    With `stop_after`, the forward pass of a batch stops (quietly, in `run_block`) once every
    layer in it has been called — the rest of the block is not needed for these inputs.
    """
    linears = block_linears(block)
    pending: set[str] = set()

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            callbacks[name](args[0])
            if stop_after is not None:
                pending.discard(name)
                if not pending:
                    pending.update(stop_after)
                    raise _StopForward
        return hook

    if stop_after is not None:
        pending.update(stop_after)
    handles = [linears[name].register_forward_hook(make_hook(name)) for name in callbacks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def sequential_groups(block: nn.Module, inputs: BlockInputs) -> list[list[str]]:
    """The block's linears in call order, grouped by shared input: Llama gives
    [[q,k,v], [o], [gate,up], [down]]. Found by running the first batch once."""
    linears = block_linears(block)
    calls: list[tuple[str, torch.Tensor]] = []

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            calls.append((name, args[0]))
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in linears.items()]
    try:
        first = BlockInputs(inputs.hidden[:1], inputs.args[:1], inputs.kwargs[:1])
        run_block(block, first, stop_early=False)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last_input: torch.Tensor | None = None
    seen: set[str] = set()
    for name, x in calls:
        if name in seen:       # a layer called twice: keep its first place
            continue
        seen.add(name)
        if last_input is not None and x is last_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = x
    never_called = [n for n in linears if n not in seen]
    if never_called:
        groups.append(never_called)
    return groups


def iterate_blocks(model: nn.Module, windows: torch.Tensor,
                   on_block: Callable[[int, nn.Module, BlockInputs], list[torch.Tensor] | None],
                   device: torch.device | str | None = None, batch_size: int = 8, start: int = 0,
                   check: Callable[[], None] | None = None,
                   on_outputs: Callable[[int, BlockInputs], None] | None = None,
                   replay: Callable[[int, nn.Module], None] | None = None,
                   write_back: bool = False,
                   after_block: Callable[[int], None] | None = None) -> BlockInputs:
    """For each decoder block i: onload it (core/offload.py), call on_block(i, block, inputs)
    (for i >= start; earlier blocks get `replay(i, block)`, e.g. their quantized weights from
    a checkpoint, and only propagate), replace the inputs by the block's outputs, call
    on_outputs(i, outputs), put the block back, call after_block(i). Returns the last
    block's outputs.

    `on_block` may return the block's outputs when it computed them anyway (a pass with
    hooks), which saves running the block a second time. Only one block and the activations
    live on the work device; with `write_back`, changes on_block made to the block's weights
    are copied home (a resident model is changed in place either way).
    """
    if device is not None and torch.device(device) != model_device(model):
        raise ValueError(f"the model computes on {model_device(model)}, not {device}: load it for that device")
    _, blocks = find_blocks(model)
    inputs = capture_block_inputs(model, windows, None, batch_size)
    for index in range(len(blocks)):
        if check is not None:
            check()
        inputs = inputs.for_block(index, inputs.hidden)      # this block's own mask, rotary tables
        with onloaded(model, index, write_back=write_back) as block:
            outs = None
            if index >= start:
                outs = on_block(index, block, inputs)
            elif replay is not None:
                replay(index, block)
            if outs is None:
                outs = run_block(block, inputs, stop_early=False)
            inputs = BlockInputs(outs, inputs.args, inputs.kwargs, inputs.calls)
            if on_outputs is not None:
                on_outputs(index, inputs)
        if after_block is not None:
            after_block(index)
        if not placement_of(model).resident:
            trim_memory()
    return inputs


def _block_of(prefix: str, n_blocks: int, name: str) -> int:
    """Index of the block that module `name` sits in ("model.layers.3.mlp" -> 3)."""
    rest = name[len(prefix) + 1:] if name.startswith(prefix + ".") else ""
    head = rest.split(".", 1)[0]
    if not head.isdigit() or int(head) >= n_blocks:
        raise ValueError(f"{name} is not inside a decoder block ({prefix}.N)")
    return int(head)


def forward_with_input_hooks(model: nn.Module, hooks: dict[str, Callable[[nn.Module, tuple], None]],
                             windows: torch.Tensor, batch_size: int = 8,
                             check: Callable[[], None] | None = None,
                             on_batch: Callable[[int, int], None] | None = None) -> None:
    """Run the decoder blocks over `windows` [n, L] in batches, with a forward pre-hook on
    each named module inside the blocks (it sees the module's input args); the hooks are
    removed afterwards. For statistics over the dense model in one pass (Hessians, spike
    scores).

    The pass goes block by block over all batches (one block on the work device at a time),
    which feeds every hooked module the very inputs a whole-model forward over the same
    batches would. `on_batch(done, total)` reports blocks done.
    """
    prefix, blocks = find_blocks(model)
    per_block: dict[int, dict[str, Callable]] = {}
    for name, hook in hooks.items():
        index = _block_of(prefix, len(blocks), name)
        per_block.setdefault(index, {})[name[len(f"{prefix}.{index}."):]] = hook

    def on_block(index: int, block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
        modules = dict(block.named_modules())
        handles = [modules[sub].register_forward_pre_hook(h) for sub, h in per_block.get(index, {}).items()]
        try:
            outs = []
            for one in _batches(inputs):
                if check is not None:
                    check()
                outs += run_block(block, one, stop_early=False)
            return outs
        finally:
            for handle in handles:
                handle.remove()

    def on_outputs(index: int, _outputs: BlockInputs) -> None:
        if on_batch is not None:
            on_batch(index + 1, len(blocks))

    with torch.no_grad():
        iterate_blocks(model, windows, on_block, batch_size=batch_size, check=check, on_outputs=on_outputs)


def _batches(inputs: BlockInputs) -> list[BlockInputs]:
    return [BlockInputs([h], [a], [k]) for h, a, k in zip(inputs.hidden, inputs.args, inputs.kwargs)]


@torch.no_grad()
def final_hidden(model: nn.Module, windows: torch.Tensor, batch_size: int = 8,
                 check: Callable[[], None] | None = None,
                 on_block: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
    """The last block's outputs for `windows` [n, L], per batch [B, L, d] on the work device,
    computed block by block over all batches (each block onloaded once)."""
    _, blocks = find_blocks(model)

    def progress(index: int, _outputs: BlockInputs) -> None:
        if on_block is not None:
            on_block(index + 1, len(blocks))

    out = iterate_blocks(model, windows, lambda i, b, x: None, batch_size=batch_size, check=check,
                         on_outputs=progress)
    return out.hidden
