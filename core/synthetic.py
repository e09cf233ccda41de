"""Synthetic models built from a transformers config with random, seeded weights (no downloads).

Tiny ones for the tests: each family gets 2 decoder blocks, hidden size 64, vocabulary 512,
and a 512-token BPE tokenizer trained on CPython's docs.

Sized Llamas for timing real shapes on a GPU (`save_synthetic_llama`, or
`python -m bitsmith.core.synthetic --params 1b --dtype bfloat16 --device cuda FOLDER`):
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


# name -> LlamaConfig fields. "1b" is TinyLlama-1.1B's shape (22 blocks of hidden 2048, MLP 5632,
# 32 query / 4 key-value heads, vocabulary 32000): 1.10e9 parameters, 2.2 GB in bf16. The
# 512-token tokenizer uses the first rows of its vocabulary; the head and the distillation
# targets still cost what a real 32000-token model's do.
LLAMA_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=VOCAB),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=VOCAB),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
}


def sized_llama_config(params: str):
    import transformers as tf

    if params not in LLAMA_SIZES:
        raise ValueError(f"unknown synthetic Llama size {params!r}; sizes: {', '.join(LLAMA_SIZES)}")
    return tf.LlamaConfig(**LLAMA_SIZES[params], max_position_embeddings=4096, tie_word_embeddings=False,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0)


def save_synthetic_llama(folder: Path, params: str = "1b", dtype: torch.dtype = torch.bfloat16,
                         device: str = "cpu", seed: int = 0) -> dict:
    """A Hugging Face folder (config, `dtype` safetensors, tokenizer) holding a random Llama of
    size `params`, initialised on `device` (a GPU initialises 1B parameters in a second);
    returns {"parameters", "bytes", "dtype", "seconds", ...}."""
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    folder = Path(folder)
    torch.manual_seed(seed)   # seeds the CUDA generators too
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(sized_llama_config(params), dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    model.to("cpu").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    del model
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return {"folder": str(folder), "params": params, "parameters": n_params, "bytes": size,
            "dtype": str(dtype).replace("torch.", ""), "device": device, "seed": seed,
            "config": LLAMA_SIZES[params], "seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitsmith.core.synthetic",
                                     description="Save a random, seeded Llama of a given size (for timing).")
    parser.add_argument("folder", help="folder to write (config, safetensors, tokenizer)")
    parser.add_argument("--params", default="1b", choices=list(LLAMA_SIZES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cpu", help="where to initialise the weights (cpu, cuda)")
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
