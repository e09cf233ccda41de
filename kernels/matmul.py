"""`quant_matmul`: one entry point over the GEMV and tl.dot kernels (Triton).

Layouts (N = out_features, K = in_features, G = K // group_size):
    x        [..., K]  fp16 / bf16 (fp32 also works; the CPU interpreter takes fp16 / fp32)
    qweight  [ceil(K*bits/32), N] int32, codes packed along K (packing.pack_qweight)
    scales   [G, N], zeros [G, N]  any float dtype, read and converted to fp32 in registers
    returns  [..., N] in x's dtype
Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import torch

from .autotune import Config, choose_config, kernel_supports

__all__ = ["quant_matmul"]


def quant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    out: torch.Tensor | None = None,
    config: Config | None = None,
) -> torch.Tensor:
    """y = x @ W.T with W dequantized on the fly; `config` forces a kernel and tile.

    out, when given, must be a contiguous [M, N] tensor (M = x rows) of x's dtype.
    """
    k = x.shape[-1]
    n = qweight.shape[1]
    if not kernel_supports(bits, group_size, k):
        raise ValueError(f"kernels do not serve bits={bits}, group_size={group_size}, in_features={k}")
    n_groups = k // group_size
    if qweight.dtype != torch.int32 or qweight.shape[0] != -(-k * bits // 32):
        raise ValueError(f"qweight must be int32 [{-(-k * bits // 32)}, N], got {qweight.dtype} {tuple(qweight.shape)}")
    if scales.shape != (n_groups, n) or zeros.shape != (n_groups, n):
        raise ValueError(f"scales/zeros must be [{n_groups}, {n}], got {tuple(scales.shape)}, {tuple(zeros.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    qweight, scales, zeros = qweight.contiguous(), scales.contiguous(), zeros.contiguous()
    m = x2.shape[0]
    if out is not None and (out.shape != (m, n) or out.dtype != x.dtype or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous [{m}, {n}] {x.dtype} tensor")
    if m == 0:
        return torch.empty(*lead, n, dtype=x.dtype, device=x.device)

    from .dequant_gemm import gemm  # triton is imported here, at first launch
    from .dequant_gemv import gemv

    def run(cfg: Config, dst: torch.Tensor | None = out) -> torch.Tensor:
        fn = gemv if cfg.kernel == "gemv" else gemm
        return fn(x2, qweight, scales, zeros, bits, group_size, cfg, dst)

    if config is None:
        scratch: list[torch.Tensor] = []  # timing candidates writes here, allocated on demand

        def trial(cfg: Config) -> torch.Tensor:
            if not scratch:
                scratch.append(torch.empty(m, n, dtype=x.dtype, device=x.device))
            return run(cfg, scratch[0])

        config = choose_config(x2, n, bits, group_size, trial)
    return run(config).reshape(*lead, n)
