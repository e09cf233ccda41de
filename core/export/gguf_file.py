"""GGUF files for llama.cpp (and transformers' GGUF loader), Llama-architecture models.

What llama.cpp's convert_hf_to_gguf.py writes for a Llama model, rebuilt from our tensors:
- architecture metadata (`llama.*`: block count, widths, heads, rope base and dimension,
  RMS-norm epsilon, vocabulary size) and the tokenizer (`tokenizer.ggml.*`: gpt2 BPE tokens,
  token types, merges, special ids, chat template);
- tensor names from gguf-py's own name map (`model.layers.3.mlp.down_proj` -> `blk.3.ffn_down`);
- the q/k row permutation: llama.cpp applies rotary embeddings to interleaved pairs, HF to
  halves, so q_proj and k_proj rows are reordered per head
  (`w.reshape(n_head, 2, d/n_head/2, ...).swapaxes(1, 2)`). It moves whole rows, so codes,
  scales and zeros are permuted together and the quantization stays exact.
Norms are stored F32; the token embedding and the head Q8_0 (`embed_bits` 8, the default:
what llama.cpp's own Q4 files use) or F16; kept layers F16; quantized layers as
`gguf_blocks.encode_layer` decides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInput
from ..quant.tensor import QuantizedWeight
from .common import dense_tensor, fp16_rel_error
from .gguf_blocks import Encoded, decode, encode_layer
from .gguf_policy import BLOCK, GGUF_ARCHES
from .source import ExportSource

GGUF_FILE_TYPE = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q2_K": 10, "Q3_K": 12}
EMBEDDING_TENSORS = ("token_embd.weight", "output.weight")      # stored Q8_0 with embed_bits 8


def permute_rows(w: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """llama.cpp's q/k permutation of the rows of w [d_out, ...] (convert_hf_to_gguf.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_quantized(qw: QuantizedWeight, n_head: int, n_head_kv: int | None) -> QuantizedWeight:
    return QuantizedWeight(permute_rows(qw.codes, n_head, n_head_kv), permute_rows(qw.scales, n_head, n_head_kv),
                           permute_rows(qw.zeros, n_head, n_head_kv), qw.bits, qw.group_size, qw.sym)


def _heads_for(name: str, config: dict) -> tuple[int, int | None] | None:
    """(n_head, n_head_kv) when `name` is a q_proj / k_proj that needs the permutation."""
    n_head = int(config["num_attention_heads"])
    if name.endswith("self_attn.q_proj"):
        return n_head, n_head
    if name.endswith("self_attn.k_proj"):
        return n_head, int(config.get("num_key_value_heads") or n_head)
    return None


# --- metadata ------------------------------------------------------------------------

def _add_architecture(writer, config: dict, name: str, file_type: int) -> None:
    hidden = int(config["hidden_size"])
    n_head = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    writer.add_name(name)
    writer.add_type("model")
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    rope_theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)


def _add_tokenizer(writer, tokenizer_dir: Path | None, n_vocab: int) -> None:
    """gpt2 (byte-level BPE) vocabulary as llama.cpp's `_set_vocab_gpt2` writes it."""
    import gguf
    from transformers import AutoTokenizer

    if tokenizer_dir is None or not (tokenizer_dir / "tokenizer.json").is_file():
        raise BadInput("GGUF export needs the model's tokenizer.json beside the checkpoint",
                       "re-run quantize so the checkpoint carries the tokenizer files")
    doc = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = doc.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (doc.get("decoder") or {}).get("type") != "ByteLevel":
        raise BadInput("GGUF export writes byte-level BPE (gpt2-style) tokenizers only; this one is "
                       f"{model.get('type')!r}", "export to gptq or compressed-tensors for this model")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tok.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif text in added:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if added[text] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_tokenizer_pre(tokens))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=n_vocab)
    special.add_to_gguf(writer)


def _tokenizer_pre(tokens: list[str]) -> str:
    """llama.cpp's pre-tokenizer name. It identifies it by hashing the tokenizer's output on
    a fixed text; we recognise SmolLM's vocabulary (the default model) and say `default`
    (the GPT-2 regex) otherwise."""
    if tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] and len(tokens) == 49152:
        return "smollm"
    return "default"


# --- tensors ---------------------------------------------------------------------------

def _gguf_name(name_map, hf_name: str) -> str:
    base, _, suffix = hf_name.rpartition(".")
    mapped = name_map.get_name(base)
    if mapped is None:
        raise BadInput(f"GGUF has no name for tensor {hf_name!r}", "this model is not a plain Llama architecture")
    return f"{mapped}.{suffix}"


def _dense_entry(hf_name: str, t: torch.Tensor, config: dict) -> tuple[np.ndarray, str]:
    """(array, type) of a dense tensor: 1-D (norms, biases) in F32, matrices in F16.
    q/k weights and biases get the rotary row permutation, as llama.cpp's converter does."""
    heads = _heads_for(hf_name.rsplit(".", 1)[0], config)
    if heads:
        t = permute_rows(t, *heads)
    if t.dim() == 1:
        return t.float().numpy(), "F32"
    return t.float().numpy().astype(np.float16), "F16"


def encode_embedding(t: torch.Tensor) -> tuple[np.ndarray, dict]:
    """A token embedding or head [rows, d] as Q8_0 (gguf-py's own quantizer: per 32 values
    d = max|x| / 127, q = round(x / d)), or F16 when d is not a multiple of 32.
    Returns (the stored array, {"type", "rel_error"} measured against the float tensor)."""
    import gguf

    w = t.float().numpy()
    if w.shape[-1] % BLOCK:
        half = w.astype(np.float16)
        return half, {"type": "F16", "rel_error": fp16_rel_error(t.float(), torch.from_numpy(half).float()),
                      "note": f"width {w.shape[-1]} is not a multiple of {BLOCK}: Q8_0 cannot hold it"}
    data = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)               # [rows, d/32 * 34] bytes
    back = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q8_0)
    return data, {"type": "Q8_0", "rel_error": fp16_rel_error(t.float(), torch.from_numpy(back).float())}


def export_gguf(source: ExportSource, folder: Path, options: dict | None = None) -> dict:
    """Write MODEL.gguf into `folder`; returns the per-layer type choices and errors."""
    import gguf

    options = options or {}
    lowbit = options.get("lowbit", "lossless")
    embed_bits = int(options.get("embed_bits", 8))
    config = source.config
    arch = source.model_type
    if arch not in GGUF_ARCHES:
        raise BadInput(f"GGUF export supports Llama-architecture models; this one is {arch!r}",
                       "export to gptq or compressed-tensors instead")
    n_blocks = int(config["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)

    layer_report: dict[str, dict] = {}
    encoded: dict[str, Encoded] = {}
    for name, qw in source.layers.items():
        heads = _heads_for(name, config)
        qw_g = permute_quantized(qw, *heads) if heads else qw
        enc = encode_layer(qw_g, lowbit)
        w_ref = qw_g.dequantize()
        encoded[name] = enc
        layer_report[name] = {"type": enc.qtype, "exact": enc.exact, "bits": qw.bits,
                              "bits_per_weight": round(enc.bits_per_weight(), 4),
                              "rel_error": fp16_rel_error(w_ref, torch.from_numpy(decode(enc))),
                              **({"note": enc.note} if enc.note else {})}

    types = [e.qtype for e in encoded.values()]
    main_type = max(sorted(set(types)), key=types.count) if types else "F16"   # ties: the first name, not the hash seed
    file_name = options.get("file_name") or f"model.{main_type}.gguf"
    writer = gguf.GGUFWriter(str(folder / file_name), arch="llama")
    _add_architecture(writer, config, options.get("name") or "bitsmith-export", GGUF_FILE_TYPE.get(main_type, 1))
    _add_tokenizer(writer, source.tokenizer_dir, int(config["vocab_size"]))

    dense = source.dense_for_export()
    embeddings: dict[str, dict] = {}
    for hf_name, t in dense.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gname = _gguf_name(name_map, hf_name)
        if gname in EMBEDDING_TENSORS and embed_bits == 8:
            data, embeddings[gname] = encode_embedding(t)
            qtype = embeddings[gname]["type"]
            writer.add_tensor(gname, data, raw_dtype=None if qtype == "F16" else gguf.GGMLQuantizationType[qtype])
            continue
        array, kind = _dense_entry(hf_name, t, config)
        if gname in EMBEDDING_TENSORS:
            embeddings[gname] = {"type": kind, "rel_error": fp16_rel_error(t.float(), torch.from_numpy(array).float())}
        writer.add_tensor(gname, array)
    for name in source.fp8:                   # fp8-kept layers: dequantized, stored F16
        array, _ = _dense_entry(f"{name}.weight", dense_tensor(source, name), config)
        writer.add_tensor(_gguf_name(name_map, f"{name}.weight"), array)
    for name, enc in encoded.items():
        gname = _gguf_name(name_map, f"{name}.weight")
        if enc.qtype == "F16":
            writer.add_tensor(gname, enc.data)
        else:
            writer.add_tensor(gname, enc.data, raw_dtype=gguf.GGMLQuantizationType[enc.qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    kinds: dict[str, int] = {}
    for e in encoded.values():
        kinds[e.qtype] = kinds.get(e.qtype, 0) + 1
    n_weights = sum(qw.codes.numel() for qw in source.layers.values())
    gguf_bits = sum(encoded[n].bits_per_weight() * qw.codes.numel() for n, qw in source.layers.items())
    plan_bits = sum((qw.bits + 32 / qw.group_size) * qw.codes.numel() for qw in source.layers.values())
    return {"files": [file_name], "gguf_file": file_name, "lowbit": lowbit, "types": kinds,
            "embed_bits": embed_bits, "embeddings": embeddings,
            "quantized_bits_per_weight": gguf_bits / n_weights if n_weights else 0.0,
            "plan_bits_per_weight": plan_bits / n_weights if n_weights else 0.0,
            "max_rel_error": max((r["rel_error"] for r in layer_report.values()), default=0.0),
            "layers": layer_report,
            "not_exact": sorted(n for n, r in layer_report.items() if r["exact"] != "exact"),
            "notes": [] if rope_type == "default" else
            [f"rope scaling {rope_type!r} is not written into the GGUF metadata; set it when loading"]}
