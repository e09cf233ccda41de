"""The quantization pipeline: block by block through the model, quantize per plan.

For each decoder block (one on the work device at a time, see core/capture.py):
  1. group its linears by shared input, in call order ("true sequential": q,k,v -> o ->
     gate,up -> down in Llama);
  2. for each group: run the calibration activations through the block (stopping once the
     group has been called), accumulate the group's Hessian H = (2/N) Σ x xᵀ, quantize each
     layer of the group with its method (core/quant/methods/) per the plan, write Ŵ into the block;
  3. run the block once more, with all its weights quantized, to make the next block's
     inputs.

Layers the plan keeps at 16-bit are left alone; fp8-kept layers are rounded to fp8 in place.
`quantize_model` returns {layer name: QuantizedWeight} and reports each layer through a
callback, so the job can emit events, checkpoint finished blocks and stop between layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .capture import BlockInputs, block_linears, iterate_blocks, record_inputs, run_block, sequential_groups
from .errors import Cancelled
from .offload import onloaded, trim_memory
from .inventory import _is_conv1d, find_blocks, linear_weight
from .plan import LayerPlan, Plan
from .quant.gptq import SharedInputHessians, rel_error
from .quant.grid import ClipConfig, dequantize_fp8, quantize_fp8
from .quant.registry import quantizer
from .quant.tensor import QuantizedWeight


@dataclass
class QuantizeOptions:
    method: str = "gptq"             # a registered quantizer (core/quant/registry.py)
    damp: float = 0.01               # λ = damp · mean(diag H)
    act_order: bool = False          # columns by descending diag(H), static groups
    static_groups: bool = False      # grids fixed up front even without act-order
    block_size: int = 128            # GPTQ lazy-update block (columns)
    clip: ClipConfig | None = None   # range-shrink search of each group's grid
    true_sequential: bool = True     # re-capture inputs after each group inside a block
    batch_size: int = 8              # calibration windows per forward pass


@dataclass
class LayerResult:
    name: str
    block: int
    bits: int
    group_size: int
    rel_error: float | None          # tr(ΔW H ΔWᵀ)/tr(W H Wᵀ); None without calibration data
    seconds: float
    keep: str | None = None
    info: dict = field(default_factory=dict)

    def event_fields(self) -> dict:
        fields = {"block": self.block, "bits": self.bits, "group_size": self.group_size,
                  "rel_error": self.rel_error, "seconds": round(self.seconds, 3)}
        if self.keep:
            fields["keep"] = self.keep
        return {**fields, **self.info}


LayerCallback = Callable[[LayerResult], None]
BlockCallback = Callable[[int, dict[str, QuantizedWeight]], None]
# on_partial(block, its quantized layers so far, every layer name finished in it): a check
# stopped the block half way; what was finished can be kept and given back as `partial`
PartialCallback = Callable[[int, dict[str, QuantizedWeight], list[str]], None]


@torch.no_grad()
def write_weight(module: nn.Module, W_hat: torch.Tensor) -> None:
    """Put Ŵ [d_out, d_in] into the float layer, in its dtype and storage order."""
    W_hat = W_hat.to(module.weight.device, module.weight.dtype)
    module.weight.copy_(W_hat.t() if _is_conv1d(module) else W_hat)


def round_fp8_in_place(module: nn.Module) -> None:
    values, scale = quantize_fp8(linear_weight(module))
    write_weight(module, dequantize_fp8(values, scale))


def quantize_layer(W: torch.Tensor, H: torch.Tensor | None, entry: LayerPlan,
                   options: QuantizeOptions) -> tuple[QuantizedWeight, dict]:
    """One layer per its plan entry, with the method `options.method` names: (codes, the
    extra fields of its `layer` event)."""
    method = quantizer(options.method)
    if method.calibrated and H is None:
        raise ValueError(f"{method.label} needs the layer's Hessian: calibrate first")
    return method.quantize(W, H, entry, options)


class BlockQuantizer:
    """`on_block` for iterate_blocks: quantizes one block's layers per the plan."""

    def __init__(self, prefix: str, plan: Plan, options: QuantizeOptions, calibrated: bool,
                 on_layer: LayerCallback | None, on_block_done: BlockCallback | None,
                 check: Callable[[], None] | None, on_partial: PartialCallback | None = None,
                 partial: dict[str, QuantizedWeight | None] | None = None, keep_codes: bool = True) -> None:
        self.prefix, self.plan, self.options, self.calibrated = prefix, plan, options, calibrated
        self.on_layer, self.on_block_done, self.check = on_layer, on_block_done, check
        self.on_partial = on_partial
        self.partial = dict(partial or {})      # resume: layers of the first block already done
        self.keep_codes = keep_codes     # False: codes go to on_block_done only (a job checkpoints them)
        self.groups: list[list[str]] | None = None
        self.quantized: dict[str, QuantizedWeight] = {}

    def __call__(self, index: int, block: nn.Module, inputs: BlockInputs) -> None:
        linears = block_linears(block)
        if self.groups is None or any(n not in linears for g in self.groups for n in g):
            self.groups = sequential_groups(block, inputs) if self.calibrated else [list(linears)]
        # a method whose codes do not depend on the inputs (RTN): one pass measures every layer's error
        sequential = self.options.true_sequential and quantizer(self.options.method).sequential
        groups = self.groups if sequential else [[n for g in self.groups for n in g]]
        done, finished = self._apply_partial(index, block)
        try:
            for group in groups:
                wanted = [n for n in group if f"{self.prefix}.{index}.{n}" in self.plan.entries
                          and f"{self.prefix}.{index}.{n}" not in finished]
                need_h = [n for n in wanted if self.plan.entries[f"{self.prefix}.{index}.{n}"].keep != "16"]
                hessians = self._hessians(block, inputs, need_h) if self.calibrated and wanted else {}
                for sub in wanted:
                    if self.check is not None:
                        self.check()
                    name = f"{self.prefix}.{index}.{sub}"
                    qw = self._quantize_one(name, index, linears[sub], hessians.get(sub))
                    finished.append(name)
                    if qw is not None:
                        done[name] = qw
        except Cancelled:
            if self.on_partial is not None and finished:
                self.on_partial(index, done, finished)
            raise
        if self.keep_codes:
            self.quantized.update(done)
        if self.on_block_done is not None:
            self.on_block_done(index, done)

    def _apply_partial(self, index: int, block: nn.Module) -> tuple[dict[str, QuantizedWeight], list[str]]:
        """Put the layers a cancelled run finished in this block back (Ŵ, or fp8 rounding).
        A group's Hessian depends on the layers before the group only, so the layers still
        to do see what they would have seen without the interruption."""
        mine = {n: qw for n, qw in self.partial.items() if n.startswith(f"{self.prefix}.{index}.")}
        done: dict[str, QuantizedWeight] = {}
        for name, qw in mine.items():
            module = block.get_submodule(name[len(f"{self.prefix}.{index}."):])
            if qw is not None:
                write_weight(module, qw.dequantize())
                done[name] = qw
            elif self.plan.entries[name].keep == "fp8":
                round_fp8_in_place(module)
        return done, list(mine)

    def _hessians(self, block: nn.Module, inputs: BlockInputs, names: list[str]) -> dict[str, torch.Tensor]:
        """H [d_in, d_in] of each named layer over all batches; layers that receive the very
        same input tensor (q, k, v) share one (quant/gptq.SharedInputHessians)."""
        if not names:
            return {}
        shared = SharedInputHessians()
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
            callbacks = {n: (lambda x, n=n: shared.add(n, x)) for n in names}
            with record_inputs(block, callbacks, stop_after=set(names)):
                run_block(block, BlockInputs([hidden], [args], [kwargs]))
        return shared.hessians(names)

    def _quantize_one(self, name: str, index: int, module: nn.Module, H: torch.Tensor | None) -> QuantizedWeight | None:
        entry = self.plan.entries[name]
        start = time.monotonic()
        W = linear_weight(module).detach().float().clone()   # the layer is overwritten below
        if entry.keep == "16":
            result = LayerResult(name, index, 16, 0, 0.0, time.monotonic() - start, keep="16")
            qw = None
        elif entry.keep == "fp8":
            round_fp8_in_place(module)
            err = rel_error(W, linear_weight(module).detach().float(), H) if H is not None else None
            result = LayerResult(name, index, 8, 0, err, time.monotonic() - start, keep="fp8")
            qw = None
        else:
            qw, info = quantize_layer(W, H, entry, self.options)
            W_hat = qw.dequantize()
            write_weight(module, W_hat)
            err = rel_error(W, W_hat, H) if H is not None else _weight_rel_error(W, W_hat)
            if H is None:
                info = {**info, "error_kind": "weight"}
            result = LayerResult(name, index, entry.bits, entry.group_size, err, time.monotonic() - start, info=info)
        if self.on_layer is not None:
            self.on_layer(result)
        return qw


def _weight_rel_error(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    return float(((W - W_hat) ** 2).sum() / (W ** 2).sum().clamp_min(1e-30))


def replay_block(block: nn.Module, block_name: str, plan: Plan, quantized: dict[str, QuantizedWeight]) -> None:
    """Resume, one block: write a finished block's Ŵ (from its checkpoint) into the onloaded
    block `block_name` ("model.layers.3") and round its fp8-kept layers again, so it makes
    the outputs it made the first time."""
    for name, qw in quantized.items():
        write_weight(block.get_submodule(name[len(block_name) + 1:]), qw.dequantize())
    for name, entry in plan.entries.items():
        if entry.keep == "fp8" and name.startswith(block_name + "."):
            round_fp8_in_place(block.get_submodule(name[len(block_name) + 1:]))


def quantize_model(model: nn.Module, plan: Plan, windows: torch.Tensor | None, options: QuantizeOptions,
                   device: torch.device | str | None = None, on_layer: LayerCallback | None = None,
                   on_block_done: BlockCallback | None = None, check: Callable[[], None] | None = None,
                   start_block: int = 0, on_partial: PartialCallback | None = None,
                   partial: dict[str, QuantizedWeight | None] | None = None,
                   replay: Callable[[int, nn.Module], None] | None = None,
                   release: bool = False) -> dict[str, QuantizedWeight]:
    """Quantize `model` and return the codes.

    `windows` [N, L] are the calibration token windows; None (RTN only) quantizes without
    data. Blocks before `start_block` either already hold their quantized weights, or get
    them from `replay(index, block)` while onloaded (resume). A check that stops a block
    half way calls `on_partial` with what the block finished; passing that back as `partial`
    ({layer: codes, or None for a kept layer}) with the same `start_block` skips those layers
    and ends with the same codes as an uninterrupted run.

    By default the model's layers end up holding Ŵ (written home, in the stored dtype, for
    a model kept off the device). With `release`, a job that checkpoints each block's codes
    in `on_block_done` keeps no codes here (the result is empty) and drops each quantized
    layer's home weight once its block is done, so RAM shrinks as the run goes
    (core/offload.release); a model whose blocks stay on disk needs this.
    """
    from .offload import placement_of, release as release_layers

    if placement_of(model).offload == "disk" and not release:
        raise ValueError("a model whose blocks stay on disk can only be quantized with release=True")
    prefix, blocks = find_blocks(model)
    worker = BlockQuantizer(prefix, plan, options, windows is not None, on_layer, on_block_done, check,
                            on_partial=on_partial, partial=partial, keep_codes=not release)

    def after_block(index: int) -> None:     # the block is home again
        if release:
            release_layers(model, [n for n, e in plan.entries.items()
                                   if e.keep is None and n.startswith(f"{prefix}.{index}.")])

    if windows is None:
        if quantizer(options.method).calibrated:
            raise ValueError(f"{quantizer(options.method).label} needs calibration windows")
        for index in range(start_block, len(blocks)):
            if check is not None:
                check()
            with onloaded(model, index, write_back=not release) as block:
                worker(index, block, BlockInputs([], [], []))
            after_block(index)
            trim_memory()
        return worker.quantized
    iterate_blocks(model, windows, worker, device=device, batch_size=options.batch_size, start=start_block,
                   check=check, replay=replay, write_back=not release, after_block=after_block)
    return worker.quantized


def draw_calibration(source: str, tokenizer, n_windows: int, seqlen: int, seed: int = 0,
                     model: nn.Module | None = None, on_step: Callable[[int, int], None] | None = None,
                     check: Callable[[], None] | None = None) -> torch.Tensor:
    """[n_windows, seqlen] calibration windows; "a+b" draws from each source in turn
    (n split as evenly as possible, each part seeded), e.g. "builtin+selfgen".
    `on_step` / `check`: selfgen sampling's progress and cancellation (core/data.py)."""
    from .data import calibration_windows

    parts = [p.strip() for p in source.split("+") if p.strip()]
    if not parts:
        from .errors import BadInput

        raise BadInput("no calibration source given", "use e.g. --calib builtin")
    if len(parts) == 1:
        return calibration_windows(parts[0], tokenizer, n_windows, seqlen, seed, model=model, on_step=on_step,
                                   check=check)
    counts = [n_windows // len(parts) + (1 if i < n_windows % len(parts) else 0) for i in range(len(parts))]
    drawn = [calibration_windows(p, tokenizer, c, seqlen, seed + i, model=model, on_step=on_step, check=check)
             for i, (p, c) in enumerate(zip(parts, counts)) if c > 0]
    return torch.cat(drawn)
