"""What a quantize run keeps in RUN_DIR/checkpoint/ so a killed run can continue exactly.

    calib.safetensors         the calibration windows [N, L] (selfgen is not cheap to redraw)
    block-0007.safetensors    codes, scales, zeros of block 7's quantized layers
    progress.json             {"blocks": [0, 1, ...], "layers": {name: layer-event fields}}

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


class BlockStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.blocks: list[int] = []
        self.layer_results: dict[str, dict] = {}
        file = self.folder / PROGRESS
        if file.is_file():
            try:
                doc = json.loads(file.read_text())
                self.blocks, self.layer_results = list(doc["blocks"]), dict(doc["layers"])
            except (json.JSONDecodeError, KeyError, TypeError):
                self.blocks, self.layer_results = [], {}

    def reset(self) -> None:
        """A fresh run: forget finished blocks (the calibration file stays)."""
        for file in self.folder.glob("block-*.safetensors"):
            file.unlink()
        (self.folder / PROGRESS).unlink(missing_ok=True)
        self.blocks, self.layer_results = [], {}

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
        from safetensors.torch import save_file

        tensors = {}
        for name, qw in quantized.items():
            tensors[f"{name}.codes"] = qw.codes.detach().to("cpu").contiguous()
            tensors[f"{name}.scales"] = qw.scales.detach().to("cpu").contiguous()
            tensors[f"{name}.zeros"] = qw.zeros.detach().to("cpu").contiguous()
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic.staged_file(self._block_file(index)) as tmp:
            save_file(tensors, str(tmp))
        self.blocks = sorted(set(self.blocks) | {index})
        self.layer_results.update(results)
        atomic.write_json(self.folder / PROGRESS, {"blocks": self.blocks, "layers": self.layer_results})

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

    def load_done(self, plan: Any) -> dict[str, QuantizedWeight]:
        """Quantized weights of the finished blocks (the plan gives bits and group sizes)."""
        from safetensors.torch import load_file

        done: dict[str, QuantizedWeight] = {}
        for index in range(self.next_block()):
            tensors = load_file(str(self._block_file(index)))
            names = {key.rsplit(".", 1)[0] for key in tensors}
            for name in names:
                entry = plan.entries[name]
                done[name] = QuantizedWeight(tensors[f"{name}.codes"], tensors[f"{name}.scales"],
                                             tensors[f"{name}.zeros"], entry.bits, entry.group_size, entry.sym)
        self.blocks = list(range(self.next_block()))
        return done

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


def load_windows_or_draw(store: BlockStore, resume: bool, spec: Any, loaded: Any) -> torch.Tensor:
    """The saved calibration windows when resuming, else freshly drawn (and saved)."""
    from ..pipeline import draw_calibration

    windows = store.load_windows() if resume else None
    if windows is None or tuple(windows.shape) != (spec.calib_windows, spec.seqlen):
        windows = draw_calibration(spec.calib, loaded.tokenizer, spec.calib_windows, spec.seqlen, spec.seed,
                                   model=loaded.model)
        store.save_windows(windows)
    return windows
