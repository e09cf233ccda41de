"""Synthetic models built from a transformers config with random, seeded weights (no downloads).

Tiny ones for the tests: each family gets 2 decoder blocks, hidden size 64, vocabulary 512,
and a 512-token BPE tokenizer trained on CPython's docs. Gemma 3 (text) stands for the
hybrid-attention families: its two blocks are called with different masks and rotary tables.
"""

from __future__ import annotations

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

# name -> Llama shape. Parameters: 2·vocab·hidden (embeddings and an untied head) plus per
# block 2·h² + 2·h·kv_dim (q, o, k, v) + 3·h·inter (gate, up, down); head dim 64 or 128.
SIZES: dict[str, dict[str, int]] = {
    "0.1b": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
                 num_attention_heads=12, num_key_value_heads=4),            # 0.11B
    "0.5b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                 num_attention_heads=12, num_key_value_heads=4),            # 0.50B
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
               num_attention_heads=16, num_key_value_heads=4),              # 1.03B
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
               num_attention_heads=24, num_key_value_heads=8),              # 2.97B
}
SIZED_VOCAB = 32000


def synthetic_llama_config(params: str):
    """The transformers LlamaConfig of a sized synthetic model ("0.1b", "0.5b", "1b", "3b")."""
    import transformers as tf

    if params not in SIZES:
        raise ValueError(f"unknown size {params!r}: use one of {', '.join(SIZES)}")
    return tf.LlamaConfig(vocab_size=SIZED_VOCAB, max_position_embeddings=4096, tie_word_embeddings=False,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0, **SIZES[params])


def save_synthetic_llama(folder: Path, params: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """A Hugging Face folder holding a Llama of about `params` parameters with random weights
    (normal, std 0.02; norms 1), stored in `dtype` safetensors shards of at most 1 GB, with
    the tiny tokenizer (its 512 tokens index the first rows of the 32k embedding).

    The weights are drawn one tensor at a time into the shard being written, so building a
    3B model needs about one shard of memory, not the model's size.
    """
    import json

    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = synthetic_llama_config(params)
    config.dtype = dtype
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)      # names and shapes only
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, shards = 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, shards
        if shard:
            name = f"model-{shards + 1:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shards += 1
        shard, shard_bytes = {}, 0

    for name, p in skeleton.state_dict().items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(p.shape, dtype=dtype)
        else:
            tensor = (torch.randn(p.shape, generator=gen) * 0.02).to(dtype)
        shard[name] = tensor
        shard_bytes += tensor.numel() * tensor.element_size()
        if shard_bytes >= 1 << 30:
            flush()
    flush()
    total = sum(p.numel() * p.element_size() for p in skeleton.state_dict().values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
