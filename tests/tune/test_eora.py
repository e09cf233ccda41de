"""EoRA on a random layer with correlated inputs, and the KL objective."""

from __future__ import annotations

import torch

from bitsmith.core.quant.grid import quantize_rtn
from bitsmith.core.tune.distill import kl_full, kl_loss, teacher_targets
from bitsmith.core.quant.gptq import HessianAccumulator as CovarianceAccumulator   # one accumulator: C = H / 2
from bitsmith.core.tune.eora import eora_adapters, svd_adapters


def _correlated_inputs(d_in: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """X [n, d_in] with a strongly anisotropic covariance (a few dominant directions)."""
    basis, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))
    spectrum = torch.logspace(1, -3, d_in)                   # eigen-scales 10 ... 1e-3
    return (torch.randn(n, d_in, generator=gen) * spectrum) @ basis.t()


def test_covariance_running_mean_matches_batch():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(100, 8, generator=gen)
    acc = CovarianceAccumulator(8)
    for part in X.split([30, 50, 20]):
        acc.add(part)
    torch.testing.assert_close(acc.C, X.t() @ X / 100, rtol=1e-5, atol=1e-6)


def test_eora_beats_plain_svd_on_output_error():
    gen = torch.Generator().manual_seed(0)
    d_out, d_in, rank = 96, 128, 8
    W = torch.randn(d_out, d_in, generator=gen) * 0.05
    dW = W - quantize_rtn(W, 3, 32).dequantize()
    X = _correlated_inputs(d_in, 2048, gen)                  # [N, d_in]
    acc = CovarianceAccumulator(d_in)
    acc.add(X)
    B, A = eora_adapters(dW, acc.C, rank)
    Bs, As = svd_adapters(dW, rank)
    assert B.shape == (d_out, rank) and A.shape == (rank, d_in)

    def out_err(E: torch.Tensor) -> float:
        return float((X.double() @ E.double().t()).norm())

    none, eora, svd = out_err(dW), out_err(dW - B @ A), out_err(dW - Bs @ As)
    assert eora < svd < none
    assert eora < 0.7 * svd                                  # the eigenspace matters a lot here
    # and it is the optimum: no other rank-r product beats it, e.g. a perturbed one
    assert eora <= out_err(dW - (B + 1e-3 * torch.randn_like(B)) @ A)


def test_eora_zeroes_tiny_eigenvalues():
    """Inputs confined to a subspace: C is singular, the pseudo-inverse stays finite."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(500, 4, generator=gen) @ torch.randn(4, 32, generator=gen)   # rank 4
    acc = CovarianceAccumulator(32)
    acc.add(X)
    dW = torch.randn(16, 32, generator=gen)
    B, A = eora_adapters(dW, acc.C, 4)
    assert torch.isfinite(A).all() and torch.isfinite(B).all()
    residual = X @ (dW - B @ A).t()
    assert float(residual.norm()) < 1e-3 * float((X @ dW.t()).norm())   # rank 4 inputs: exact at r = 4


def test_topk_kl_equals_full_kl_when_k_covers_the_vocabulary_and_bounds_it_below():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 50, generator=gen) * 3
    student = torch.randn(2, 5, 50, generator=gen) * 3
    full = kl_full(student, torch.log_softmax(teacher, -1))
    near_full = kl_loss(student, teacher_targets(teacher, 49))           # tail of one token
    torch.testing.assert_close(near_full, full, rtol=1e-4, atol=1e-5)
    coarse = kl_loss(student, teacher_targets(teacher, 5))
    assert (coarse <= full + 1e-6).all() and (coarse >= 0).all()
    same = kl_loss(teacher, teacher_targets(teacher, 5))
    assert float(same.abs().max()) < 1e-5
