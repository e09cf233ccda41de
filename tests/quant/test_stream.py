"""The streamed safetensors writer: what the safetensors library reads back, for every dtype."""

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bitsmith.core.quant.stream import write_streamed


def test_round_trip_through_the_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"w.bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
               "w.f32": torch.randn(3, generator=g), "codes": torch.randint(0, 16, (4, 8), dtype=torch.uint8),
               "fp8": torch.randn(6, 2, generator=g).to(torch.float8_e4m3fn), "mask": torch.tensor([True, False]),
               "step": torch.tensor(7, dtype=torch.int64), "empty": torch.zeros(0, 3)}
    calls = {name: 0 for name in tensors}

    def fetch(name):
        calls[name] += 1
        return tensors[name]

    path = tmp_path / "x.safetensors"
    write_streamed(path, [(n, lambda n=n: fetch(n)) for n in tensors], metadata={"format": "test"})
    back = load_file(str(path))
    assert sorted(back) == sorted(tensors) and set(calls.values()) == {2}
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name].view(torch.uint8), t.view(torch.uint8)) if t.dtype == torch.float8_e4m3fn \
            else torch.equal(back[name], t)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "test"}
