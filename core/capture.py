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

Block 0's inputs are caught with a forward pre-hook that stores the positional and
keyword arguments (attention mask, position embeddings, ... whatever this architecture
passes) and raises to stop the forward pass, so nothing after block 0 runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .inventory import find_blocks, is_linear


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (its inputs were what we wanted)."""


@dataclass
class BlockInputs:
    """The inputs of one decoder block for every calibration batch."""

    hidden: list[torch.Tensor]     # per batch: [B, L, hidden] on the work device
    args: list[tuple]              # per batch: further positional arguments (usually empty)
    kwargs: list[dict[str, Any]]   # per batch: keyword arguments of the block call

    def __len__(self) -> int:
        return len(self.hidden)

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
    return next(model.parameters()).device


@contextmanager
def _outside_blocks_on(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> Iterator[None]:
    """Move every parameter and buffer outside the decoder blocks to `device` meanwhile."""
    block_ids = {id(t) for b in blocks for t in list(b.parameters()) + list(b.buffers())}
    moved: list[tuple[torch.Tensor, torch.device]] = []
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in block_ids and t.device != device:
            moved.append((t, t.device))
            t.data = t.data.to(device)
    try:
        yield
    finally:
        for t, dev in moved:
            t.data = t.data.to(dev)


@torch.no_grad()
def capture_block_inputs(model: nn.Module, windows: torch.Tensor, device: torch.device | str | None = None,
                         batch_size: int = 8) -> BlockInputs:
    """Run the windows [N, L] up to decoder block 0 and keep what it would receive."""
    device = torch.device(device) if device is not None else model_device(model)
    _, blocks = find_blocks(model)
    captured = BlockInputs([], [], [])

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        captured.hidden.append(hidden.detach())
        captured.args.append(rest)
        captured.kwargs.append({k: v for k, v in kwargs.items()})
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with _outside_blocks_on(model, blocks, device):
            for batch in windows.split(batch_size):
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return captured


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
                   on_block: Callable[[int, nn.Module, BlockInputs], None],
                   device: torch.device | str | None = None, batch_size: int = 8, start: int = 0,
                   check: Callable[[], None] | None = None,
                   on_outputs: Callable[[int, BlockInputs], None] | None = None) -> BlockInputs:
    """For each decoder block i: move it to `device`, call on_block(i, block, inputs) (for
    i >= start; earlier blocks only propagate), replace the inputs by the block's outputs,
    move the block back where it was. Returns the last block's outputs.

    Only one block and the activations live on `device`; the rest stays where it is (the
    CPU, for a model larger than the GPU).
    """
    device = torch.device(device) if device is not None else model_device(model)
    _, blocks = find_blocks(model)
    inputs = capture_block_inputs(model, windows, device, batch_size)
    for index, block in enumerate(blocks):
        if check is not None:
            check()
        home = model_device(block)
        block.to(device)
        if index >= start:
            on_block(index, block, inputs)
        inputs = BlockInputs(run_block(block, inputs, stop_early=False), inputs.args, inputs.kwargs)
        if on_outputs is not None:
            on_outputs(index, inputs)
        block.to(home)
    return inputs


def forward_with_input_hooks(model: nn.Module, hooks: dict[str, Callable[[nn.Module, tuple], None]],
                             windows: torch.Tensor, batch_size: int = 8,
                             check: Callable[[], None] | None = None,
                             on_batch: Callable[[int, int], None] | None = None) -> None:
    """Run the whole model over `windows` [n, L] in batches, with a forward pre-hook on
    each named module (it sees the module's input args); the hooks are removed afterwards.
    For statistics over the dense model in one pass (Hessians, spike scores)."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_pre_hook(hook) for name, hook in hooks.items()]
    device = model_device(model)
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                if check is not None:
                    check()
                model(input_ids=windows[start: start + batch_size].to(device), use_cache=False)
                if on_batch is not None:
                    on_batch(min(start + batch_size, len(windows)), len(windows))
    finally:
        for handle in handles:
            handle.remove()
