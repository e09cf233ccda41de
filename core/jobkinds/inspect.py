"""`inspect`: open a model and list its linear layers."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..jobs import ModelSpec, RunContext, register_job


@dataclass
class InspectSpec:
    model: ModelSpec = field(default_factory=ModelSpec)


@register_job("inspect", InspectSpec, "open a model and list its linear layers")
def run_inspect(spec: InspectSpec, ctx: RunContext) -> dict:
    from ..inventory import inventory_summary, layer_inventory
    from .common import open_model

    loaded = open_model(spec.model, ctx, lean=True)     # shapes only: the weights may stay home
    layers = layer_inventory(loaded.model)
    return {"model": loaded.summary(), "summary": inventory_summary(layers),
            "layers": [layer.to_dict() for layer in layers]}
