"""A quick timing probe of one decoder block on this machine, for the pre-flight estimate.

One block of the model's architecture is built with random weights (a copy of the config
with one block and a 256-token vocabulary, so no large embedding is made) on the work
device in the compute dtype, and timed:

    onload      casting a stored-dtype copy of the block to the compute dtype on the device
    forward     a forward pass per token
    hessian     accumulating each distinct input width's Hessian, per token
    layer       quantizing each distinct layer shape (GPTQ or RTN with the job's options) on
                a slice of at most PROBE_ROWS output rows, scaled to the full height: GPTQ
                treats rows independently, so its time grows linearly with them (a 4096 x 1536
                layer: 7.2 s; its first 1024 rows: 1.82 s)

The probe takes seconds for a 1B model on a CPU; it does not touch the model's weights.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

PROBE_TOKENS = 256     # tokens of the forward and Hessian probes
PROBE_ROWS = 256       # output rows of the quantization probe


@dataclass
class BlockTimes:
    onload_s: float                         # one block, stored dtype -> compute dtype on the device
    forward_s_per_token: float              # one block
    hessian_s_per_token: float              # every Hessian of one block
    layer_s: dict[str, float] = field(default_factory=dict)   # "d_out x d_in" -> seconds per layer
    block_quant_s: float = 0.0              # every layer of one block
    head_s_per_token: float = 0.0           # final norm + head (full vocabulary)
    probe_s: float = 0.0
    start_s: float = 0.0                    # process start-up to a sized model (set by the estimate)

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, device: torch.device, repeat: int = 1) -> float:
    fn()                      # warm-up (kernel selection, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeat


def probe_model(config: Any, device: torch.device, dtype: torch.dtype, trust: bool = False) -> torch.nn.Module:
    """A one-block copy of the architecture, random weights, on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM

    small = copy.deepcopy(config)
    text = small.get_text_config()
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(text, name):
            setattr(text, name, 1)
    text.vocab_size = 256
    for name in ("layer_types",):               # per-layer lists must match one layer
        if isinstance(getattr(text, name, None), list):
            setattr(text, name, getattr(text, name)[:1])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(small, trust_remote_code=trust, dtype=dtype)
    return model.to(device).eval()


@torch.no_grad()
def probe_block(config: Any, facts: Any, device: torch.device, dtype: torch.dtype, stored: torch.dtype,
                method: str, options: Any, group_size: int, bits: int = 4, trust: bool = False) -> BlockTimes:
    """Times of one block's pieces (see the module docstring)."""
    from .capture import block_linears, capture_block_inputs, run_block, sequential_groups
    from .inventory import find_blocks, linear_weight
    from .plan import LayerPlan, resolve_group_size
    from .quant.gptq import HessianAccumulator
    from .quant.registry import quantizer

    started = time.perf_counter()
    model = probe_model(config, device, dtype, trust)
    _, blocks = find_blocks(model)
    block = blocks[0]
    home = [t.detach().to("cpu", stored) for t in block.parameters()]
    onload = _timed(lambda: [t.to(device, dtype) for t in home], device)
    del home
    windows = torch.randint(0, 256, (1, PROBE_TOKENS))
    inputs = capture_block_inputs(model, windows, device, batch_size=1)
    forward = _timed(lambda: run_block(block, inputs, stop_early=False), device, repeat=2) / PROBE_TOKENS
    linears = block_linears(block)
    hessian = 0.0
    for group in sequential_groups(block, inputs):       # one Hessian per group of shared input
        d_in = linear_weight(linears[group[0]]).shape[1]
        acc = HessianAccumulator(d_in, device)
        xs = torch.randn(PROBE_TOKENS, d_in, device=device, dtype=dtype)
        hessian += _timed(lambda: acc.add(xs), device) / PROBE_TOKENS
    layer_s: dict[str, float] = {}
    for d_out, d_in in facts.layer_shapes:
        rows = min(d_out, PROBE_ROWS)
        W = torch.randn(rows, d_in, device=device) * 0.02
        g = resolve_group_size(d_in, group_size)
        entry = LayerPlan(bits=bits, group_size=g, sym=False, keep=None, d_out=rows, d_in=d_in)
        if quantizer(method).calibrated:
            X = torch.randn(PROBE_TOKENS, d_in, device=device)
            H = X.t() @ X / PROBE_TOKENS
        else:
            H = None
        t = _timed(lambda: _one_layer(W, H, entry, options), device)
        layer_s[f"{d_out}x{d_in}"] = t * d_out / rows
    per_block = _block_quant_seconds(block, layer_s)
    head = _head_seconds(facts, device, dtype)
    return BlockTimes(onload, forward, hessian, layer_s, per_block, head, time.perf_counter() - started)


def _one_layer(W: torch.Tensor, H: torch.Tensor | None, entry: Any, options: Any) -> None:
    """What the pipeline does per layer (core/pipeline.BlockQuantizer._quantize_one):
    quantize, dequantize Ŵ, measure the error, and write the codes out."""
    import tempfile

    from safetensors.torch import save_file

    from .pipeline import quantize_layer
    from .quant.gptq import rel_error

    qw, _ = quantize_layer(W.clone(), H, entry, options)
    W_hat = qw.dequantize()
    if H is not None:
        rel_error(W, W_hat, H)
    else:
        float(((W - W_hat) ** 2).sum())
    with tempfile.TemporaryDirectory() as tmp:
        save_file({"codes": qw.codes.cpu().contiguous(), "scales": qw.scales.cpu().contiguous(),
                   "zeros": qw.zeros.cpu().contiguous()}, f"{tmp}/block.safetensors")


def _block_quant_seconds(block: torch.nn.Module, layer_s: dict[str, float]) -> float:
    from .capture import block_linears
    from .inventory import linear_weight

    total = 0.0
    for module in block_linears(block).values():
        d_out, d_in = linear_weight(module).shape
        total += layer_s.get(f"{d_out}x{d_in}", 0.0)
    return total


def _head_seconds(facts: Any, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per token of the LM head: [T, hidden] @ [hidden, vocab]."""
    if not facts.vocab:
        return 0.0
    rows = 64
    W = torch.randn(min(facts.vocab, 32768), facts.hidden, device=device, dtype=dtype)
    h = torch.randn(rows, facts.hidden, device=device, dtype=dtype)
    t = _timed(lambda: h @ W.t(), device)
    return t / rows * facts.vocab / W.shape[0]


__all__ = ["BlockTimes", "probe_block", "probe_model"]
