"""QuantLinear: exact CPU path, caching, state_dict, the kernel path under the interpreter
(compiled on a GPU with BITSMITH_TEST_DEVICE=cuda), and a tiny Llama whose perplexity does
not move when its linears become QuantLinears."""

from __future__ import annotations

import io
import math
import os

DEVICE = os.environ.get("BITSMITH_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # the backend="triton" cases launch kernels on CPU tensors

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.kernels import QuantLinear
from bitsmith.kernels.reference import dequantize_codes


def _rtn(w: torch.Tensor, bits: int, group: int):
    """Asymmetric round-to-nearest: codes [N, K], scales and zeros [N, K // group]."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo = g.amin(-1).clamp(max=0)
    hi = g.amax(-1).clamp(min=0)
    scales = ((hi - lo) / ((1 << bits) - 1)).clamp(min=1e-8)
    zeros = torch.round(-lo / scales)
    codes = torch.clamp(torch.round(g / scales[..., None]) + zeros[..., None], 0, (1 << bits) - 1)
    return codes.reshape(n, k).long(), scales, zeros


def _random_qparams(n: int, k: int, bits: int, group: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen)
    scales = torch.rand(n, k // group, generator=gen) * 0.05 + 0.01
    zeros = torch.rand(n, k // group, generator=gen) * ((1 << bits) - 1)  # fine-tuned: not integers
    return codes, scales, zeros


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_cpu_path_is_exactly_linear_with_the_dequantized_weight(bits):
    codes, scales, zeros = _random_qparams(48, 192, bits, 64)
    bias = torch.randn(48)
    layer = QuantLinear.from_codes(codes, scales, zeros, bits, 64, bias=bias)
    assert (layer.in_features, layer.out_features, layer.bits, layer.group_size) == (192, 48, bits, 64)
    w = layer.dequantize()
    assert w.shape == (48, 192)
    assert torch.equal(w, dequantize_codes(codes, scales, zeros, 64))
    assert torch.equal(layer.codes().long(), codes)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 7, 192).to(dtype)
        y = layer(x)
        assert y.dtype == dtype
        # bit for bit what nn.Linear with the dequantized weight computes ...
        assert torch.equal(y, F.linear(x, layer.dequantize(dtype), bias.to(dtype)))
        # ... which is x @ W.T + b up to the rounding of the input dtype
        ref = x.float() @ layer.dequantize(dtype).float().T + bias.to(dtype).float()
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert float((y.float() - ref).abs().max() / ref.abs().max()) < tol


def test_dequantized_cache_follows_buffer_changes():
    codes, scales, zeros = _random_qparams(16, 64, 4, 32)
    layer = QuantLinear.from_codes(codes, scales, zeros, 4, 32, cache_dequantized=True)
    x = torch.randn(2, 64)
    y0 = layer(x)
    assert torch.equal(y0, layer(x)) and len(layer._cache) == 1
    with torch.no_grad():
        layer.scales.mul_(2)  # in place: the cached weight is stale now
    assert torch.allclose(layer(x), 2 * y0, rtol=1e-5, atol=1e-6)
    layer.half()  # buffers converted: cache dropped and rebuilt in the new dtype
    assert layer(x.half()).dtype == torch.float16


def test_state_dict_round_trip(tmp_path):
    codes, scales, zeros = _random_qparams(40, 96, 3, 32)
    bias = torch.randn(40)
    layer = QuantLinear.from_codes(codes, scales, zeros, 3, 32, bias=bias)
    state = layer.state_dict()
    assert set(state) == {"qweight", "scales", "zeros", "bias"}
    assert state["qweight"].shape == (96 * 3 // 32, 40) and state["qweight"].dtype == torch.int32
    assert state["scales"].shape == (3, 40)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = QuantLinear(96, 40, 3, 32, bias=True, dtype=torch.float32)
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(5, 96)
    assert torch.equal(fresh(x), layer(x))
    assert torch.equal(fresh.codes().long(), codes)
    no_bias = QuantLinear.from_codes(codes, scales, zeros, 3, 32)
    assert "bias" not in no_bias.state_dict()
    with pytest.raises(RuntimeError):  # wrong geometry is caught by load_state_dict
        QuantLinear(96, 40, 4, 32, dtype=torch.float32).load_state_dict(no_bias.state_dict())


@pytest.mark.parametrize("bits", [3, 4])
def test_triton_backend_matches_torch_path_and_backpropagates(bits):
    codes, scales, zeros = _random_qparams(24, 128, bits, 64)
    bias = torch.randn(24)
    kern = QuantLinear.from_codes(codes, scales, zeros, bits, 64, bias=bias, backend="triton").to(DEVICE)
    ref = QuantLinear.from_codes(codes, scales, zeros, bits, 64, bias=bias, backend="torch").to(DEVICE)
    x = torch.randn(2, 128).to(DEVICE).requires_grad_()
    assert kern.use_kernel(x) and not ref.use_kernel(x)
    y = kern(x)
    torch.testing.assert_close(y, ref(x), rtol=2e-5, atol=2e-5)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g @ ref.dequantize(), rtol=1e-5, atol=1e-5)


def test_auto_backend_stays_on_torch_for_cpu_tensors_and_unserved_layers():
    codes, scales, zeros = _random_qparams(8, 64, 4, 32)
    x = torch.randn(1, 64)
    assert not QuantLinear.from_codes(codes, scales, zeros, 4, 32).use_kernel(x)
    codes6, s6, z6 = _random_qparams(8, 64, 6, 32)
    assert not QuantLinear.from_codes(codes6, s6, z6, 6, 32, backend="triton").use_kernel(x)  # 6 bits: torch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_auto_backend_runs_the_kernel_on_cuda_in_bf16(bits):
    # a Llama-like layer (in 512, out 384, group 128), bf16 activations as a GPU model runs them
    codes, scales, zeros = _random_qparams(384, 512, bits, 128)
    layer = QuantLinear.from_codes(codes, scales, zeros, bits, 128, dtype=torch.bfloat16).cuda()
    x = torch.randn(3, 5, 512, generator=torch.Generator().manual_seed(bits)).to("cuda", torch.bfloat16)
    assert layer.use_kernel(x)
    y = layer(x)
    assert y.shape == (3, 5, 384) and y.dtype == torch.bfloat16
    ref = x.float() @ layer.dequantize(torch.float32).T  # fp32 reference of the same bf16 inputs
    assert float((y.float() - ref).abs().max() / ref.abs().max()) < 1e-2  # bf16 output rounding


def test_constructor_validation():
    codes, scales, zeros = _random_qparams(8, 64, 4, 32)
    with pytest.raises(ValueError):
        QuantLinear.from_codes(codes, scales, zeros, 4, 48)  # 48 does not divide 64
    with pytest.raises(ValueError):
        QuantLinear.from_codes(codes, scales.t(), zeros, 4, 32)
    with pytest.raises(ValueError):
        QuantLinear.from_codes(codes + 16, scales, zeros, 4, 32)  # codes out of range
    with pytest.raises(ValueError):
        QuantLinear(64, 8, 4, 32, backend="cuda")


def test_tiny_llama_perplexity_is_unchanged():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    dense = transformers.LlamaForCausalLM(cfg).eval()
    quant = transformers.LlamaForCausalLM(cfg).eval()
    quant.load_state_dict(dense.state_dict())
    bits_of = {"q_proj": 4, "k_proj": 3, "v_proj": 8, "o_proj": 2, "gate_proj": 4, "up_proj": 3, "down_proj": 4}
    n_replaced = 0
    for name, module in list(quant.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] in bits_of:
            bits = bits_of[name.split(".")[-1]]
            codes, scales, zeros = _rtn(module.weight.data, bits, 32)
            ql = QuantLinear.from_codes(codes, scales, zeros, bits, 32)
            parent = quant.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], ql)
            dense.get_submodule(name).weight.data.copy_(ql.dequantize(torch.float32))
            n_replaced += 1
    assert n_replaced == 14
    tokens = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ppl_dense = math.exp(dense(tokens, labels=tokens).loss.item())
        ppl_quant = math.exp(quant(tokens, labels=tokens).loss.item())
    assert abs(ppl_quant - ppl_dense) / ppl_dense < 1e-3
