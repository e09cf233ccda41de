"""The layer inventory: every linear layer inside the decoder blocks, found generically.

Decoder blocks are the longest `nn.ModuleList` whose children all hold linear layers
(`model.layers` in Llama, `transformer.h` in GPT-2). Linear layers are `nn.Linear` and
transformers' `Conv1D` (GPT-2), whose weight is stored transposed as [d_in, d_out].
Embeddings and the head sit outside the blocks and are not listed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    """A plain linear layer, GPT-2's Conv1D, or an engine layer that says it is one."""
    return isinstance(module, nn.Linear) or _is_conv1d(module) or getattr(module, "is_bitsmith_linear", False)


@dataclass(frozen=True)
class LayerInfo:
    name: str           # full module name, e.g. model.layers.3.mlp.down_proj
    block: int          # index of the decoder block
    role: str           # the module's own name: q_proj, down_proj, c_attn, ...
    d_out: int
    d_in: int
    transposed: bool    # True for Conv1D, whose weight is [d_in, d_out]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d_out, self.d_in)

    @property
    def params(self) -> int:
        return self.d_out * self.d_in

    @property
    def bytes_16bit(self) -> int:
        return 2 * self.params

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "params": self.params,
                "bytes_16bit": self.bytes_16bit}


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, module list) of the decoder blocks."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if all(any(is_linear(m) for m in child.modules()) for child in module):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise ValueError(f"no decoder blocks with linear layers found in {type(model).__name__}")
    return best


def _shape(module: nn.Module) -> tuple[int, int, bool]:
    if _is_conv1d(module):
        d_in, d_out = module.weight.shape
        return d_out, d_in, True
    return module.out_features, module.in_features, False


def layer_inventory(model: nn.Module) -> list[LayerInfo]:
    """Every linear layer inside the decoder blocks, in module order."""
    prefix, blocks = find_blocks(model)
    layers = []
    for index, block in enumerate(blocks):
        linears = [(sub, m) for sub, m in block.named_modules() if sub and is_linear(m)]
        roles = _roles([sub for sub, _ in linears])
        for (sub_name, module), role in zip(linears, roles):
            d_out, d_in, transposed = _shape(module)
            layers.append(LayerInfo(name=f"{prefix}.{index}.{sub_name}", block=index, role=role,
                                    d_out=d_out, d_in=d_in, transposed=transposed))
    return layers


def _roles(sub_names: list[str]) -> list[str]:
    """The module's own name (q_proj), or its last two parts where that repeats inside a
    block (GPT-2 has attn.c_proj and mlp.c_proj)."""
    last = [n.rsplit(".", 1)[-1] for n in sub_names]
    return [".".join(n.split(".")[-2:]) if last.count(l) > 1 else l for n, l in zip(sub_names, last)]


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as [d_out, d_in], whatever the module's storage order."""
    return module.weight.t() if _is_conv1d(module) else module.weight


def inventory_summary(layers: list[LayerInfo]) -> dict:
    return {"layers": len(layers), "blocks": len({l.block for l in layers}),
            "params": sum(l.params for l in layers),
            "bytes_16bit": sum(l.bytes_16bit for l in layers),
            "roles": sorted({l.role for l in layers}, key=lambda r: [l.role for l in layers].index(r))}
