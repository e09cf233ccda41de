"""The quantized-weight container: integer codes on a uniform group grid.

For a layer `y = W x` with W of shape [d_out, d_in], split each row into groups of
`group_size` consecutive input columns. Group j of row o has one scale s[o, j] and one
zero point z[o, j], and

    W_hat[o, i] = s[o, i // g] * (q[o, i] - z[o, i // g]),   q in [0, 2^bits - 1].

Zero points are stored as floats: integer-valued after RTN/GPTQ, possibly fractional
after fine-tuning (PV-Tuning's P step); exporters that need integers check for that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    codes: torch.Tensor    # [d_out, d_in] uint8, values in [0, 2^bits - 1]
    scales: torch.Tensor   # [d_out, d_in // group_size] float32
    zeros: torch.Tensor    # [d_out, d_in // group_size] float32
    bits: int
    group_size: int
    sym: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def n_groups(self) -> int:
        return self.codes.shape[1] // self.group_size

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W_hat [d_out, d_in] in `dtype`, computed in float32 (exact for the stored grid)."""
        d_out, d_in = self.codes.shape
        q = self.codes.to(torch.float32).view(d_out, self.n_groups, self.group_size)
        w = self.scales.float()[..., None] * (q - self.zeros.float()[..., None])
        return w.view(d_out, d_in).to(dtype)

    def to(self, device: torch.device | str) -> "QuantizedWeight":
        return QuantizedWeight(self.codes.to(device), self.scales.to(device), self.zeros.to(device),
                               self.bits, self.group_size, self.sym)

    def clone(self) -> "QuantizedWeight":
        return QuantizedWeight(self.codes.clone(), self.scales.clone(), self.zeros.clone(),
                               self.bits, self.group_size, self.sym)

    def validate(self) -> None:
        d_out, d_in = self.codes.shape
        assert 2 <= self.bits <= 8, self.bits
        assert d_in % self.group_size == 0, (d_in, self.group_size)
        assert self.scales.shape == self.zeros.shape == (d_out, d_in // self.group_size)
        assert int(self.codes.max()) <= 2 ** self.bits - 1
