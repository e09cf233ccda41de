"""What a quantize run keeps in RUN_DIR/checkpoint/ so a killed run can continue exactly.

    calib.safetensors         the calibration windows [N, L] (selfgen is not cheap to redraw)
    block-0007.safetensors    codes, scales, zeros of block 7's quantized layers
    partial.safetensors       the same for the layers a cancel left finished in the next block
    progress.json             {"blocks": [0, 1, ...], "layers": {name: layer-event fields},
                               "partial": {"block": 8, "layers": [names finished in it]}}

A block file is written (atomically) before progress.json names it, so progress.json never
points at a missing file. Resuming puts the finished blocks' Ŵ back into the model and
replays the calibration windows through them — the same computation as the first time, so
the next block gets the same inputs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import torch

from .. import atomic
from .tensor import QuantizedWeight

PROGRESS = "progress.json"
CALIB = "calib.safetensors"
PARTIAL = "partial.safetensors"


class BlockStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.blocks: list[int] = []
        self.layer_results: dict[str, dict] = {}
        self.partial: dict | None = None         # {"block": i, "layers": [names]}
        file = self.folder / PROGRESS
        if file.is_file():
            try:
                doc = json.loads(file.read_text())
                self.blocks, self.layer_results = list(doc["blocks"]), dict(doc["layers"])
                self.partial = doc.get("partial")
            except (json.JSONDecodeError, KeyError, TypeError):
                self.blocks, self.layer_results, self.partial = [], {}, None

    def reset(self) -> None:
        """A fresh run: forget finished blocks (the calibration file stays)."""
        for file in self.folder.glob("block-*.safetensors"):
            file.unlink()
        (self.folder / PARTIAL).unlink(missing_ok=True)
        (self.folder / PROGRESS).unlink(missing_ok=True)
        self.blocks, self.layer_results, self.partial = [], {}, None

    def _write_progress(self) -> None:
        doc = {"blocks": self.blocks, "layers": self.layer_results}
        if self.partial is not None:
            doc["partial"] = self.partial
        atomic.write_json(self.folder / PROGRESS, doc)

    def next_block(self) -> int:
        """The first block not finished (blocks finish in order)."""
        n = 0
        while n in self.blocks:
            n += 1
        return n

    def layers_done(self) -> int:
        return len(self.layer_results)

    def _block_file(self, index: int) -> Path:
        return self.folder / f"block-{index:04d}.safetensors"

    def save_block(self, index: int, quantized: dict[str, QuantizedWeight], results: dict[str, dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic.staged_file(self._block_file(index)) as tmp:
            _save_weights(quantized, tmp)
        self.blocks = sorted(set(self.blocks) | {index})
        self.layer_results.update(results)
        if self.partial is not None and self.partial.get("block") == index:
            self.partial = None
        self._write_progress()
        (self.folder / PARTIAL).unlink(missing_ok=True)

    def save_partial(self, index: int, quantized: dict[str, QuantizedWeight], results: dict[str, dict]) -> None:
        """The layers of block `index` finished before a cancel (`results`: every finished
        layer's event fields, kept layers too; `quantized`: the codes of those that have them)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic.staged_file(self.folder / PARTIAL) as tmp:
            _save_weights(quantized, tmp)
        self.layer_results.update(results)
        self.partial = {"block": index, "layers": list(results)}
        self._write_progress()

    def load_partial(self, plan: Any, block: int) -> dict[str, QuantizedWeight | None]:
        """{layer: codes, or None for a kept layer} finished in `block` by a cancelled run;
        empty when there are none (or they do not match, and the block is done again)."""
        from safetensors.torch import load_file

        file = self.folder / PARTIAL
        if not self.partial or self.partial.get("block") != block or not file.is_file():
            self._drop_partial()
            return {}
        tensors = load_file(str(file))
        out: dict[str, QuantizedWeight | None] = {}
        for name in self.partial["layers"]:
            entry = plan.entries.get(name)
            if entry is None:
                self._drop_partial()
                return {}
            if entry.keep:
                out[name] = None
            elif f"{name}.codes" in tensors:
                out[name] = QuantizedWeight(tensors[f"{name}.codes"], tensors[f"{name}.scales"],
                                            tensors[f"{name}.zeros"], entry.bits, entry.group_size, entry.sym)
            else:
                self._drop_partial()
                return {}
        return out

    def _drop_partial(self) -> None:
        """Forget the partial block's layers (their results too: they will be done again)."""
        if self.partial:
            for name in self.partial.get("layers", []):
                self.layer_results.pop(name, None)
        self.partial = None

    def load_block(self, index: int, plan: Any) -> dict[str, QuantizedWeight]:
        """One finished block's quantized weights (the plan gives bits and group sizes)."""
        from safetensors.torch import load_file

        tensors = load_file(str(self._block_file(index)))
        out: dict[str, QuantizedWeight] = {}
        for name in sorted({key.rsplit(".", 1)[0] for key in tensors}):
            entry = plan.entries[name]
            out[name] = QuantizedWeight(tensors[f"{name}.codes"], tensors[f"{name}.scales"],
                                        tensors[f"{name}.zeros"], entry.bits, entry.group_size, entry.sym)
        return out

    def codes(self, plan: Any, prefix: str) -> "BlockCodes":
        """All finished blocks' quantized weights, read from their files as they are asked
        for; `prefix` names the blocks ("model.layers")."""
        return BlockCodes(self, plan, prefix)

    def load_windows(self) -> torch.Tensor | None:
        from safetensors.torch import load_file

        file = self.folder / CALIB
        return load_file(str(file))["windows"] if file.is_file() else None

    def save_windows(self, windows: torch.Tensor) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic.staged_file(self.folder / CALIB) as tmp:
            save_file({"windows": windows.contiguous()}, str(tmp))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _save_weights(quantized: dict[str, QuantizedWeight], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, qw in quantized.items():
        tensors[f"{name}.codes"] = qw.codes.detach().to("cpu").contiguous()
        tensors[f"{name}.scales"] = qw.scales.detach().to("cpu").contiguous()
        tensors[f"{name}.zeros"] = qw.zeros.detach().to("cpu").contiguous()
    save_file(tensors, str(path))


class BlockCodes(Mapping):
    """{layer name: QuantizedWeight} over the block files of a BlockStore, loaded lazily:
    iterating reads one block file at a time, so the codes are not all held twice."""

    def __init__(self, store: BlockStore, plan: Any, prefix: str) -> None:
        self.store, self.plan = store, plan
        self.block_of = {name: int(name[len(prefix) + 1:].split(".", 1)[0])
                         for name, entry in plan.entries.items() if entry.keep is None}
        self._cached: tuple[int, dict[str, QuantizedWeight]] | None = None

    def _block(self, index: int) -> dict[str, QuantizedWeight]:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self.store.load_block(index, self.plan))
        return self._cached[1]

    def __getitem__(self, name: str) -> QuantizedWeight:
        return self._block(self.block_of[name])[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.block_of, key=lambda n: (self.block_of[n], n)))

    def __len__(self) -> int:
        return len(self.block_of)


def load_windows_or_draw(store: BlockStore, resume: bool, spec: Any, loaded: Any, **hooks: Any) -> torch.Tensor:
    """The saved calibration windows when resuming, else freshly drawn (and saved); `hooks`:
    draw_calibration's on_step / check (sampling progress and cancellation)."""
    from ..pipeline import draw_calibration

    windows = store.load_windows() if resume else None
    if windows is None or tuple(windows.shape) != (spec.calib_windows, spec.seqlen):
        windows = draw_calibration(spec.calib, loaded.tokenizer, spec.calib_windows, spec.seqlen, spec.seed,
                                   model=loaded.model, **hooks)
        store.save_windows(windows)
    return windows
