"""Synthetic models built from a transformers config with random, seeded weights (no downloads).

Tiny ones for the tests: each family gets 2 decoder blocks, hidden size 64, vocabulary 512,
and a 512-token BPE tokenizer trained on CPython's docs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

VOCAB = 512
FAMILIES = ("llama", "mistral", "qwen2", "phi3", "gpt2")


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
