"""What a model is, without loading its weights: shapes from its config (an empty model on
the meta device), bytes from its files. The pre-flight estimate (core/estimate.py) works
from these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import BadInput
from .jobs import ModelSpec

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


@dataclass
class ModelFacts:
    source: str
    architecture: str
    params: int                  # every parameter
    bytes_on_disk: int           # the weight files as stored (GGUF: quantized)
    stored_dtype: str            # what the weights load as (a GGUF: dequantized to the compute dtype)
    n_blocks: int
    block_params: int            # the largest decoder block
    block_linear_params: int     # its linear layers
    linear_params: int           # every linear layer in the blocks (what gets quantized)
    outside_params: int          # embeddings, final norm, head (a tied head counted once)
    hidden: int
    intermediate: int            # the widest linear input (Llama's down_proj)
    max_layer_params: int
    heads: int
    kv_dim: int                  # width of the K (and V) projection
    vocab: int
    layer_shapes: list[list[int]]   # distinct [d_out, d_in] of the linear layers, largest first
    groups_per_block: int        # linears grouped by shared input (Llama: q/k/v, o, gate/up, down)
    files: str | None = None     # the folder of safetensors files, when there is one
    quantized: bool = False      # a Bitsmith checkpoint (then `linear_params` are codes)

    @property
    def stored_bytes_per_param(self) -> int:
        return _BYTES.get(self.stored_dtype, 4)

    def to_dict(self) -> dict:
        return asdict(self)


def _resolve(spec: ModelSpec) -> tuple[Any, Path | None, int, str | None, bool]:
    """(config, folder of safetensors or None, bytes on disk, stored dtype or None, quantized)."""
    from transformers import AutoConfig

    from .model import HUB_ID, QUANT_MANIFEST, _default_cache_folder, default_model_path

    source = spec.source.strip()
    trust = spec.trust_remote_code
    if source == "default":
        folder = _default_cache_folder()
        if (folder / "config.json").is_file():
            return _folder(folder, trust)
        gguf = default_model_path()
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        return config, None, gguf.stat().st_size, None, False
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / QUANT_MANIFEST).is_file():
            config, _, size, dtype, _ = _folder(path, trust)
            return config, None, size, dtype, True
        if not (path / "config.json").is_file():
            raise BadInput(f"{path} is not a model folder (no config.json)", "pass a model folder")
        return _folder(path, trust)
    if path.is_file() and path.suffix.lower() == ".gguf":
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        return config, None, path.stat().st_size, None, False
    if HUB_ID.match(source):
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
        except OSError:
            raise BadInput(f"no config for {source!r} in the local Hugging Face cache or the hub",
                           "download the model first, or pass a local folder") from None
        return config, None, 0, None, False
    raise BadInput(f"model path {path} does not exist", "check the path, or pass `default` or a hub id")


def _folder(folder: Path, trust: bool) -> tuple[Any, Path | None, int, str | None, bool]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust)
    files = sorted(folder.glob("*.safetensors"))
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    stored = str(stored).replace("torch.", "")
    return config, folder if files else None, sum(f.stat().st_size for f in files), stored, False


def empty_model(config: Any, trust: bool = False) -> torch.nn.Module:
    """The architecture with every parameter on the meta device (no memory, no time)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust)


def model_facts(spec: ModelSpec, compute_dtype: str = "float32") -> ModelFacts:
    """Shapes and sizes of the model `spec` names. A model with no stored dtype of its own
    (GGUF) counts as loading in `compute_dtype`."""
    from .inventory import find_blocks, layer_inventory

    config, folder, on_disk, stored, quantized = _resolve(spec)
    stored = stored or compute_dtype
    model = empty_model(config, spec.trust_remote_code)
    _, blocks = find_blocks(model)
    layers = layer_inventory(model)
    per_block = [sum(p.numel() for p in b.parameters()) for b in blocks]
    params = sum(p.numel() for p in model.parameters())          # a tied head is one parameter
    linear = sum(l.params for l in layers)
    biggest = max(range(len(blocks)), key=lambda i: per_block[i])
    block_linear = sum(l.params for l in layers if l.block == biggest)
    text = config.get_text_config()
    hidden = int(getattr(text, "hidden_size", None) or getattr(text, "n_embd"))
    heads = int(getattr(text, "num_attention_heads", None) or getattr(text, "n_head"))
    kv = [l.d_out for l in layers if l.block == 0 and l.role in ("k_proj", "key")]
    kv_dim = kv[0] if kv else hidden
    shapes = sorted({(l.d_out, l.d_in) for l in layers}, key=lambda s: (-s[0] * s[1], s))
    roles = {l.role for l in layers if l.block == 0}
    groups = _group_count(roles)
    archs = getattr(config, "architectures", None) or [type(model).__name__]
    return ModelFacts(
        source=spec.source, architecture=archs[0], params=params,
        bytes_on_disk=on_disk or params * _BYTES.get(stored, 4), stored_dtype=stored,
        n_blocks=len(blocks), block_params=per_block[biggest], block_linear_params=block_linear,
        linear_params=linear, outside_params=params - sum(per_block), hidden=hidden,
        intermediate=max(l.d_in for l in layers), max_layer_params=max(l.params for l in layers),
        heads=heads, kv_dim=kv_dim, vocab=int(getattr(text, "vocab_size", 0) or 0),
        layer_shapes=[list(s) for s in shapes], groups_per_block=groups,
        files=str(folder) if folder is not None else None, quantized=quantized)


def _group_count(roles: set[str]) -> int:
    """Forward passes of one block in true-sequential GPTQ, by shared input: Llama-like
    blocks have 4 groups (q/k/v, o, gate/up, down); fused ones (GPT-2, Phi-3) fewer."""
    llama = {"q_proj", "o_proj", "gate_proj", "down_proj"}
    if llama <= roles:
        return 4
    return max(2, min(4, len(roles)))


__all__ = ["ModelFacts", "model_facts", "empty_model"]
