"""The variant database: every linear layer GPTQ-quantized once at every level.

Hessians come from the dense model, one block at a time (forward hooks while the block is
on the work device, core/capture.iterate_blocks): only one block's Hessians exist at once.
Layers that read the same input tensor (q/k/v, gate/up) share one Hessian, and all their
levels are quantized in one sweep (core/quant/gptq.gptq_sweep). A candidate model is then assembled by
swapping dequantized variants in — no requantizing during a search.

On disk, one folder per settings hash, so later searches on the same model, calibration
and settings reuse it (pass `database: OTHER_RUN`):

    database-<key>/meta.json              settings, levels, per-layer errors, blocks done
    database-<key>/block-007.safetensors  "<layer>.<bits>.codes|scales|zeros" of block 7

Blocks are written atomically as they finish, so a killed build resumes at its next block.
Variants are read lazily (safetensors maps the file) and kept dequantized in a bounded LRU.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import atomic
from ..errors import BadInput
from ..capture import BlockInputs, forward_with_input_hooks, iterate_blocks, run_block
from ..inventory import LayerInfo, find_blocks, linear_weight
from ..model import model_fingerprint
from ..quant.gptq import SharedInputHessians
from ..quant.tensor import QuantizedWeight
from .block_variants import BlockQuantizer, LocalBlocks, block_groups
from .db_settings import DB_FORMAT, DB_VERSION, DatabaseSettings

KEPT = 16      # the level that means "the dense weight": never stored, error 0
HESSIAN_BATCH = 4   # calibration windows per block call while collecting Hessians


# --- Hessians ----------------------------------------------------------------------------

def _input_hook(shared: SharedInputHessians, name: str) -> Callable:
    """A forward pre-hook feeding layer `name`'s input to `shared` (quant/gptq.py: layers fed
    the very same tensor, q/k/v or gate/up, share one H; the first batch decides)."""
    return lambda module, args: shared.add(name, args[0])


@torch.no_grad()
def collect_hessians(model: torch.nn.Module, layers: Sequence[LayerInfo], windows: torch.Tensor,
                     batch_size: int = 4, check: Callable[[], None] | None = None,
                     on_batch: Callable[[int, int], None] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({layer: H [d_in, d_in]}, {layer: layer whose input it shares}) from one pass over
    the dense model (every layer's Hessian held at once: for small models and checks;
    `build_database` keeps one block's)."""
    shared = SharedInputHessians()
    forward_with_input_hooks(model, {l.name: _input_hook(shared, l.name) for l in layers}, windows, batch_size,
                             check, on_batch)
    return shared.hessians([l.name for l in layers]), shared.owner


@torch.no_grad()
def _block_hessians(block: torch.nn.Module, block_name: str, layers: Sequence[LayerInfo], inputs: BlockInputs,
                    check: Callable[[], None] | None) -> tuple[dict[str, torch.Tensor], dict[str, str], list]:
    """(H per layer, sharing owners, the block's outputs) of one onloaded block over all batches."""
    shared = SharedInputHessians()
    handles = [block.get_submodule(l.name[len(block_name) + 1:]).register_forward_pre_hook(_input_hook(shared, l.name))
               for l in layers]
    try:
        outs = []
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
            if check is not None:
                check()
            outs += run_block(block, BlockInputs([hidden], [args], [kwargs]), stop_early=False)
    finally:
        for handle in handles:
            handle.remove()
    return shared.hessians([l.name for l in layers]), shared.owner, outs


# --- the database ------------------------------------------------------------------------

def _block_file(folder: Path, block: int) -> Path:
    return folder / f"block-{block:03d}.safetensors"


class VariantDatabase:
    """A database folder: metadata, per-layer errors, and lazily loaded variants."""

    def __init__(self, folder: Path, meta: dict, cache_bytes: int = 2 << 30,
                 device: torch.device | str = "cpu") -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.meta = meta
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self._handles: dict[int, object] = {}
        self.block_of = {name: b for name, b in meta["block_of"].items()}

    # -- metadata
    @property
    def levels(self) -> list[int]:
        return list(self.meta["levels"])

    @property
    def complete(self) -> bool:
        return len(self.meta["blocks_done"]) == self.meta["n_blocks"]

    def errors(self, name: str) -> dict[int, float]:
        """{bits: rel_error} of one layer (16: 0)."""
        return {int(b): e for b, e in self.meta["errors"][name].items()}

    @property
    def seconds(self) -> float:
        """Wall time spent building it: Hessian passes plus quantization."""
        return float(self.meta["hessian_seconds"] + self.meta["block_seconds"])

    # -- variants
    def quantized(self, name: str, bits: int) -> QuantizedWeight:
        block = self.block_of[name]
        if block not in self._handles:
            self._handles[block] = safe_open(str(_block_file(self.folder, block)), framework="pt")
        f = self._handles[block]
        codes = f.get_tensor(f"{name}.{bits}.codes")
        scales = f.get_tensor(f"{name}.{bits}.scales")
        return QuantizedWeight(codes, scales, f.get_tensor(f"{name}.{bits}.zeros"), bits,
                               codes.shape[1] // scales.shape[1], bool(self.meta["settings"]["sym"]))

    def weight(self, name: str, bits: int) -> torch.Tensor:
        """Dequantized variant [d_out, d_in] float32, through the LRU."""
        key = (name, bits)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        w = self.quantized(name, bits).to(self.device).dequantize(torch.float32)
        self._cache[key] = w
        self._cached_bytes += w.numel() * 4
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.numel() * 4
        return w


def _read_meta(folder: Path) -> dict | None:
    path = folder / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return meta if meta.get("format") == DB_FORMAT and meta.get("version") == DB_VERSION else None


def find_database(path: str | Path, settings: DatabaseSettings) -> Path:
    """The database folder for `settings` inside `path` (a run directory, or the folder)."""
    path = Path(path).expanduser()
    key = settings.key()
    others = sorted(p for p in path.glob("database-*") if p.name != f"database-{key}") if path.is_dir() else []
    for candidate in (path, path / f"database-{key}", *others):
        meta = _read_meta(candidate)
        if meta is not None:
            if meta["key"] != key:
                theirs = meta["settings"]
                diff = [k for k, v in asdict(settings).items() if theirs.get(k) != v]
                raise BadInput(f"the variant database at {candidate} was built with other settings "
                               f"({', '.join(diff) or 'version'} differ)",
                               "use the same model, calibration and settings, or leave --database out")
            return candidate
    raise BadInput(f"no variant database for these settings in {path}",
                   "point --database at a search run of the same model and settings, or leave it out")


def _new_meta(settings: DatabaseSettings, levels: list[int], layers: Sequence[LayerInfo], n_blocks: int) -> dict:
    return {"format": DB_FORMAT, "version": DB_VERSION, "key": settings.key(),
            "settings": asdict(settings), "levels": levels, "n_blocks": n_blocks,
            "layers": [l.name for l in layers], "block_of": {l.name: l.block for l in layers},
            "errors": {l.name: {str(KEPT): 0.0} for l in layers}, "blocks_done": [],
            "block_seconds": 0.0, "hessian_seconds": 0.0}


def _save_block(folder: Path, meta: dict, block: int, variants: dict[str, dict[int, QuantizedWeight]],
                errors: dict[str, dict[int, float]], seconds: float) -> None:
    """Write one finished block's variants atomically, then record it in meta.json."""
    tensors: dict[str, torch.Tensor] = {}
    for name, per_level in variants.items():
        for bits, qw in per_level.items():
            tensors[f"{name}.{bits}.codes"] = qw.codes
            tensors[f"{name}.{bits}.scales"] = qw.scales
            tensors[f"{name}.{bits}.zeros"] = qw.zeros
            meta["errors"][name][str(bits)] = errors[name][bits]
    with atomic.staged_file(_block_file(folder, block)) as tmp:
        save_file(tensors, str(tmp))
    meta["blocks_done"] = sorted(meta["blocks_done"] + [block])
    meta["block_seconds"] += seconds
    atomic.write_json(folder / "meta.json", meta)


@torch.no_grad()
def build_database(folder: Path, settings: DatabaseSettings, levels: Sequence[int],
                   model: torch.nn.Module, layers: Sequence[LayerInfo], calib_windows: Callable[[], torch.Tensor],
                   emit_layer: Callable[..., None] | None = None, check: Callable[[], None] | None = None,
                   on_progress: Callable[[str, int, int], None] | None = None,
                   quantizer: BlockQuantizer | None = None) -> dict:
    """Build (or finish building) the database in `folder`; returns its metadata. `quantizer`:
    who quantizes each block's layers at every level (default: this process, block by block;
    core/search/cluster_database.py: Ray tasks)."""
    levels = sorted(b for b in set(levels) if b != KEPT)
    meta = _read_meta(folder)
    if meta is not None and (meta["key"] != settings.key() or meta["levels"] != levels):
        meta = None                       # a different database: start over in place
    n_blocks = max(l.block for l in layers) + 1
    if meta is None:
        meta = _new_meta(settings, levels, layers, n_blocks)
    if len(meta["blocks_done"]) == n_blocks:
        return meta
    folder.mkdir(parents=True, exist_ok=True)
    todo = [b for b in range(n_blocks) if b not in meta["blocks_done"]]

    def save_block(block: int, variants: dict, errors: dict, seconds: float) -> None:
        _save_block(folder, meta, block, variants, errors, seconds)
        if emit_layer is not None:
            for name, per_level in errors.items():
                for bits, err in per_level.items():
                    emit_layer(name, bits=bits, rel_error=err, seconds=round(seconds / len(errors) / len(levels), 4),
                               group_size=variants[name][bits].group_size)
        if on_progress is not None:
            on_progress("database", len(meta["blocks_done"]) - (n_blocks - len(todo)), len(todo))

    if settings.propagate_bits is not None:
        from .propagated import build_propagated

        done = VariantDatabase(folder, meta)
        done_blocks = {b: {name: done.quantized(name, settings.propagate_bits)
                           for name in meta["layers"] if done.block_of[name] == b} for b in meta["blocks_done"]}
        build_propagated(model, settings, levels, layers, calib_windows(), done_blocks, save_block, check)
        return meta

    prefix, _ = find_blocks(model)
    work = quantizer or LocalBlocks(settings, levels, check)

    def on_block(block: int, module: torch.nn.Module, inputs: BlockInputs) -> list | None:
        """Block by block over the dense model: this block's Hessians (dense inputs, as a
        whole-model pass gives them), then every level of its layers, here or on Ray tasks,
        saved when done; the block itself is dropped at once."""
        if block not in todo:
            return None                      # finished before: only propagate
        t_block = time.time()
        in_block = [l for l in layers if l.block == block]
        hessians, owner, outs = _block_hessians(module, f"{prefix}.{block}", in_block, inputs, check)
        meta["hessian_seconds"] += time.time() - t_block
        inside = len(f"{prefix}.{block}.")
        groups = block_groups(in_block, owner, hessians, lambda l: linear_weight(module.get_submodule(l.name[inside:])),
                              settings.group_size)
        work.submit(block, groups, save_block)
        return outs

    iterate_blocks(model, calib_windows(), on_block, batch_size=HESSIAN_BATCH, check=check)
    work.finish()
    return meta


def open_database(folder: Path, cache_bytes: int = 2 << 30, device: torch.device | str = "cpu") -> VariantDatabase:
    meta = _read_meta(folder)
    if meta is None or len(meta["blocks_done"]) != meta["n_blocks"]:
        raise BadInput(f"the variant database at {folder} is incomplete", "resume the run that builds it")
    return VariantDatabase(folder, meta, cache_bytes, device)


__all__ = ["DatabaseSettings", "VariantDatabase", "model_fingerprint", "collect_hessians",
           "find_database", "build_database", "open_database", "KEPT"]
