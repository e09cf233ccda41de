"""Synthetic models built from a transformers config with random, seeded weights (no downloads).

Tiny ones for the tests: each family gets 2 decoder blocks, hidden size 64, vocabulary 512,
and a 512-token BPE tokenizer trained on CPython's docs. Gemma 3 (text) stands for the
hybrid-attention families: its two blocks are called with different masks and rotary tables.

Sized Llamas for timing real shapes (`save_synthetic_llama`, or
`python -m bitsmith.core.synthetic --params 1.1b --dtype bfloat16 --device cuda FOLDER`):
random weights, so their numbers are about speed and memory, never about quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch

VOCAB = 512
FAMILIES = ("llama", "mistral", "qwen2", "phi3", "gpt2", "gemma3")


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer with 512 tokens, trained on CPython's docs in a second."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [topics[k] for k in sorted(topics)]
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_config(family: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "phi3":
        return tf.Phi3Config(**common)
    if family == "gemma3":
        # a sliding-window block then a global one (as Gemma 3 alternates them), each with its
        # own mask and rotary table; a window shorter than the test sequences, so it matters
        return tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=8,
                                   layer_types=["sliding_attention", "full_attention"])
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                             bos_token_id=0, eos_token_id=0)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    return model.eval()


def save_tiny_model(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) holding a tiny model."""
    folder = Path(folder)
    tiny_model(family, seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


# --- sized synthetic Llamas (benchmarks of memory and time against model size) ---------

# name -> LlamaConfig fields. Parameters: 2·vocab·hidden (embeddings and an untied head) plus
# per block 2·h² + 2·h·kv_dim (q, o, k, v) + 3·h·inter (gate, up, down). "1.1b" is
# TinyLlama-1.1B's shape (the GPU check's model), "8b" Llama-3-8B's (a 128k vocabulary); the
# others are bench scale's ladder. The 512-token tokenizer indexes the first rows of the
# vocabulary: the head and the distillation targets still cost what a real model's do.
SIZED_VOCAB = 32000
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=VOCAB),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=VOCAB),
    "0.1b": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
                 num_attention_heads=12, num_key_value_heads=4, vocab_size=SIZED_VOCAB),     # 0.11B
    "0.5b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                 num_attention_heads=12, num_key_value_heads=4, vocab_size=SIZED_VOCAB),     # 0.50B
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
               num_attention_heads=16, num_key_value_heads=4, vocab_size=SIZED_VOCAB),       # 1.03B
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, vocab_size=SIZED_VOCAB),     # 1.10B
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
               num_attention_heads=24, num_key_value_heads=8, vocab_size=SIZED_VOCAB),       # 2.97B
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,              # Llama-3-8B's
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),            # shape: 8.03B
}
SHARD_BYTES = 1 << 30


def synthetic_llama_config(params: str):
    """The transformers LlamaConfig of a sized synthetic model (a name in SIZES)."""
    import transformers as tf

    if params not in SIZES:
        raise ValueError(f"unknown synthetic Llama size {params!r}; sizes: {', '.join(SIZES)}")
    return tf.LlamaConfig(max_position_embeddings=4096, tie_word_embeddings=False,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0, **SIZES[params])


def save_synthetic_llama(folder: Path, params: str = "1.1b", dtype: torch.dtype = torch.bfloat16,
                         device: str = "cpu", seed: int = 0) -> dict:
    """A Hugging Face folder holding a Llama of size `params` with random weights (normal,
    std 0.02; norms 1), stored in `dtype` safetensors shards of at most 1 GB, with the tiny
    tokenizer; returns {"parameters", "bytes", "dtype", "seconds", ...}.

    The weights are drawn one tensor at a time on `device` (a GPU draws 1B parameters in a
    second) into the shard being written, so building a 3B model needs about one shard of
    memory, not the model's size.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = synthetic_llama_config(params)
    config.dtype = dtype
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)      # names and shapes only
    gen = torch.Generator(device).manual_seed(seed)
    writer = _ShardWriter(folder)
    for name, p in skeleton.state_dict().items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(p.shape, dtype=dtype)
        else:
            tensor = (torch.randn(p.shape, generator=gen, device=device) * 0.02).to("cpu", dtype)
        writer.add(name, tensor)
    writer.close()
    n_params = sum(p.numel() for p in skeleton.state_dict().values())
    config.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return {"folder": str(folder), "params": params, "parameters": n_params, "bytes": size,
            "dtype": str(dtype).replace("torch.", ""), "device": device, "seed": seed,
            "config": SIZES[params], "seconds": round(time.monotonic() - started, 2)}


class _ShardWriter:
    """Tensors into `model-0000k.safetensors` shards of about SHARD_BYTES, then the index."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.shard, self.shard_bytes = folder, {}, 0
        self.weight_map: dict[str, str] = {}
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.shard[name] = tensor
        nbytes = tensor.numel() * tensor.element_size()
        self.shard_bytes += nbytes
        self.total += nbytes
        if self.shard_bytes >= SHARD_BYTES:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if self.shard:
            name = f"model-{len(set(self.weight_map.values())) + 1:05d}.safetensors"
            save_file(self.shard, str(self.folder / name), metadata={"format": "pt"})
            self.weight_map.update({k: name for k in self.shard})
        self.shard, self.shard_bytes = {}, 0

    def close(self) -> None:
        self._flush()
        (self.folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": self.total}, "weight_map": self.weight_map}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitsmith.core.synthetic",
                                     description="Save a random, seeded Llama of a given size (for timing).")
    parser.add_argument("folder", help="folder to write (config, safetensors, tokenizer)")
    parser.add_argument("--params", default="1.1b", choices=list(SIZES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cpu", help="where to draw the weights (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if Path(args.folder).exists() and any(Path(args.folder).iterdir()):
        print(f"error: {args.folder} exists and is not empty; pass a new folder", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA GPU; use --device cpu", file=sys.stderr)
        return 2
    info = save_synthetic_llama(Path(args.folder), args.params, getattr(torch, args.dtype), args.device, args.seed)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
