"""Where a model's weights live, and how one block at a time reaches the work device.

A model is loaded in its stored dtype (bf16/fp16/fp32) and its weights stay home:

    offload "none"  home is the work device, in the compute dtype (the whole model resident)
    offload "ram"   home is CPU RAM, in the stored dtype
    offload "disk"  the decoder blocks' weights stay in their safetensors files (the model
                    holds them on the meta device); the rest (embeddings, final norm, head)
                    is in RAM

Work happens on a block while it is *onloaded*: its parameters are swapped for working
copies on the work device in the compute dtype (fp32 on a CPU, the stored dtype on a GPU),
and swapped back afterwards. A model whose home already is the work device in the compute
dtype (the default fp32 model on a CPU) is *resident*: onloading is then a no-op, so every
computation is exactly what it was when the whole model sat on the device.

The Placement travels with the model (attached to it), so code that is handed a model can
ask where to compute: `placement_of(model)`.
"""

from __future__ import annotations

import json
import struct
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import nn

from .errors import BadInput

Offload = Literal["none", "ram", "disk"]
_ATTR = "_bitsmith_placement"
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


@dataclass
class DiskWeights:
    """Tensors left in safetensors files: {state-dict name: (file, key in the file)}.

    Reading opens the file (memory-mapped by safetensors), copies the asked tensors out and
    closes it, so no mapping (and none of its pages) outlives the read."""

    index: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.index[name][0], []).append(name)
        out: dict[str, torch.Tensor] = {}
        for file, members in by_file.items():
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in members:
                    out[name] = f.get_tensor(self.index[name][1])
        return out


@dataclass
class Placement:
    device: torch.device            # where blocks compute
    dtype: torch.dtype              # the compute dtype of floating-point weights there
    offload: Offload = "none"
    disk: DiskWeights | None = None

    @property
    def resident(self) -> bool:
        return self.offload == "none"


def attach(model: nn.Module, placement: Placement) -> None:
    object.__setattr__(model, _ATTR, placement)   # a plain attribute, not a submodule


def placement_of(model: nn.Module) -> Placement:
    """The model's placement; a model built in code (tests) is resident where its first
    parameter is."""
    placement = getattr(model, _ATTR, None)
    if placement is not None:
        return placement
    first = next(model.parameters())
    return Placement(first.device, first.dtype, "none")


def is_resident(model: nn.Module) -> bool:
    return placement_of(model).resident


# --- swapping tensors -------------------------------------------------------------------

def _slots(module: nn.Module, prefix: str) -> Iterator[tuple[nn.Module, str, str, torch.Tensor, bool]]:
    """(owner module, leaf name, full name, tensor, is_parameter) of every parameter and buffer."""
    for mod_name, mod in module.named_modules(prefix=prefix):
        for leaf, p in list(mod._parameters.items()):
            if p is not None:
                yield mod, leaf, f"{mod_name}.{leaf}" if mod_name else leaf, p, True
        for leaf, b in list(mod._buffers.items()):
            if b is not None:
                yield mod, leaf, f"{mod_name}.{leaf}" if mod_name else leaf, b, False


def _working(tensor: torch.Tensor, loaded: torch.Tensor | None, placement: Placement, cast: bool) -> torch.Tensor:
    source = loaded if loaded is not None else tensor
    dtype = placement.dtype if cast and source.is_floating_point() else source.dtype
    return source.to(device=placement.device, dtype=dtype)


@contextmanager
def _swapped(model: nn.Module, module: nn.Module, prefix: str, cast: bool, write_back: bool,
             skip: set[int] | None = None) -> Iterator[nn.Module]:
    """Working copies of `module`'s tensors on the work device meanwhile (params cast to the
    compute dtype when `cast`; buffers only moved). With `write_back`, the working
    parameters are copied home (in the home dtype) at the end."""
    placement = placement_of(model)
    slots = [s for s in _slots(module, prefix) if skip is None or id(s[3]) not in skip]
    need = [s for s in slots if s[3].device != placement.device
            or (cast and s[4] and s[3].is_floating_point() and s[3].dtype != placement.dtype)]
    on_disk = [s[2] for s in need if s[3].device.type == "meta"]
    loaded = placement.disk.load(on_disk) if on_disk and placement.disk is not None else {}
    if len(loaded) != len(on_disk):
        missing = [n for n in on_disk if n not in loaded]
        raise RuntimeError(f"{missing[0]} is on the meta device and not in the offload index")
    swaps = []
    for owner, leaf, name, tensor, is_param in need:
        work = _working(tensor, loaded.get(name), placement, cast and is_param)
        if is_param:
            owner._parameters[leaf] = nn.Parameter(work, requires_grad=False)   # never trained through
        else:
            owner._buffers[leaf] = work
        swaps.append((owner, leaf, name, tensor, is_param))
    del loaded
    try:
        yield module
    finally:
        for owner, leaf, name, home, is_param in swaps:
            table = owner._parameters if is_param else owner._buffers
            if write_back and is_param:
                if home.device.type == "meta":
                    raise RuntimeError(f"{name} lives on disk: its changes cannot be written back")
                with torch.no_grad():
                    home.copy_(table[leaf].detach())
            table[leaf] = home


def _block_prefix(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """find_blocks, remembered on the model (it is asked for at every block onload)."""
    from .inventory import find_blocks

    cached = model.__dict__.get("_bitsmith_blocks")
    if cached is None:
        cached = find_blocks(model)
        object.__setattr__(model, "_bitsmith_blocks", cached)
    return cached


@contextmanager
def onloaded(model: nn.Module, index: int, write_back: bool = False) -> Iterator[nn.Module]:
    """Decoder block `index` on the work device in the compute dtype meanwhile."""
    prefix, blocks = _block_prefix(model)
    if is_resident(model):
        yield blocks[index]
        return
    with _swapped(model, blocks[index], f"{prefix}.{index}", cast=True, write_back=write_back) as block:
        yield block


def _block_tensor_ids(blocks: nn.ModuleList) -> set[int]:
    return {id(t) for b in blocks for t in list(b.parameters()) + list(b.buffers())}


@contextmanager
def outside_onloaded(model: nn.Module) -> Iterator[None]:
    """Everything outside the decoder blocks moved to the work device (dtype kept: the
    embedding table stays in its stored dtype), and the input embeddings' output cast to
    the compute dtype, so that block 0 and everything derived from the hidden states (rotary
    tables, masks) see the compute dtype."""
    placement = placement_of(model)
    if placement.resident:
        yield
        return
    _, blocks = _block_prefix(model)
    with _swapped(model, model, "", cast=False, write_back=False, skip=_block_tensor_ids(blocks)):
        embed = model.get_input_embeddings()
        handle = None if embed is None else embed.register_forward_hook(lambda m, a, out: out.to(placement.dtype))
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the head (Llama `model.norm`, GPT-2 `ln_f`)."""
    prefix, _ = _block_prefix(model)
    parent = model
    for part in prefix.split(".")[:-1]:
        parent = getattr(parent, part)
    return next((getattr(parent, n) for n in FINAL_NORM_NAMES if hasattr(parent, n)), None)


def _qualified(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


@contextmanager
def head_onloaded(model: nn.Module) -> Iterator[tuple[nn.Module | None, nn.Module]]:
    """(final norm, LM head) on the work device in the compute dtype meanwhile."""
    norm, head = final_norm(model), model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head)")
    if is_resident(model):
        yield norm, head
        return
    with ExitStack() as stack:
        for module in (norm, head):
            if module is not None:
                stack.enter_context(_swapped(model, module, _qualified(model, module), cast=True, write_back=False))
        yield norm, head


@contextmanager
def streamed(model: nn.Module) -> Iterator[nn.Module]:
    """The whole model callable as usual (generation, a plain forward): every block is
    onloaded by a forward pre-hook and put back by a forward hook; embeddings, final norm
    and head stay onloaded meanwhile. A no-op for a resident model."""
    if is_resident(model):
        yield model
        return
    _, blocks = _block_prefix(model)
    open_blocks: dict[int, ExitStack] = {}
    handles = []
    for index, block in enumerate(blocks):
        def pre(module: nn.Module, args: tuple, index: int = index) -> None:
            stack = ExitStack()
            stack.enter_context(onloaded(model, index))
            open_blocks[index] = stack

        def post(module: nn.Module, args: tuple, output: Any, index: int = index) -> None:
            open_blocks.pop(index).close()

        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    try:
        with outside_onloaded(model), head_onloaded(model):
            yield model
    finally:
        for handle in handles:
            handle.remove()
        for stack in open_blocks.values():
            stack.close()


# --- memory -------------------------------------------------------------------------------

_LIBC: Any = None


def trim_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; elsewhere a no-op).

    A block's working copies are tens of MB per tensor: glibc serves them from its heap
    once its adaptive mmap threshold has grown, and keeps the freed pages, so without this
    the resident memory of a block-by-block pass creeps up by about a block per block."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


# --- home tensors ------------------------------------------------------------------------

def home_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` (the model's state-dict entry `name`) itself, or read from disk when offloaded."""
    if tensor.device.type != "meta":
        return tensor
    disk = placement_of(model).disk
    if disk is None or name not in disk:
        raise RuntimeError(f"{name} is on the meta device and not in the offload index")
    return disk.load([name])[name]


@torch.no_grad()
def release(model: nn.Module, names: list[str]) -> None:
    """Drop the home weights of the named linear layers (their quantized codes are saved):
    the parameters become meta tensors of the same shape and dtype, so RAM shrinks as a
    quantize run goes. Biases stay."""
    for name in names:
        module = model.get_submodule(name)
        w = module._parameters["weight"]
        module._parameters["weight"] = nn.Parameter(torch.empty(w.shape, dtype=w.dtype, device="meta"),
                                                    requires_grad=False)


# --- a model whose blocks stay on disk ---------------------------------------------------

def check_safetensors(path: Path) -> None:
    """Reject a truncated or corrupt safetensors file before transformers trips on it."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than file")
            header = json.loads(f.read(header_len))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise BadInput(f"{path} is not a valid safetensors file (corrupt header)",
                       "download or copy the model again") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise BadInput(f"{path} is truncated ({size} bytes, needs {8 + header_len + end})",
                       "the download or copy was cut off: fetch the model again")


def safetensors_index(folder: Path) -> dict[str, tuple[str, str]]:
    """{key: (file, key)} over the folder's safetensors files (sharded or single)."""
    from safetensors import safe_open

    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        return {k: (str(folder / f), k) for k, f in weight_map.items()}
    out: dict[str, tuple[str, str]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({k: (str(file), k) for k in f.keys()})
    return out


def map_checkpoint_names(model: nn.Module, keys: dict[str, tuple[str, str]]) -> tuple[dict, list[str]]:
    """({state-dict name: (file, key)}, names not found). Checkpoint keys match the state
    dict, or lack / carry the base model prefix (GPT-2's files say `h.0...`, the model
    `transformer.h.0...`)."""
    base = getattr(model, "base_model_prefix", "") or ""
    index: dict[str, tuple[str, str]] = {}
    missing: list[str] = []
    for name in model.state_dict():
        candidates = [name]
        if base and name.startswith(base + "."):
            candidates.append(name[len(base) + 1:])
        elif base:
            candidates.append(f"{base}.{name}")
        found = next((keys[c] for c in candidates if c in keys), None)
        if found is None:
            missing.append(name)
        else:
            index[name] = found
    return index, missing


__all__ = ["Placement", "DiskWeights", "attach", "placement_of", "is_resident", "onloaded", "outside_onloaded",
           "head_onloaded", "streamed", "final_norm", "home_tensor", "release", "safetensors_index",
           "map_checkpoint_names"]
