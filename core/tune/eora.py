"""EoRA (Liu et al., 2024): training-free low-rank compensation of a quantized layer.

For a layer with dense weight W, quantized W_hat, error ΔW = W - W_hat [d_out, d_in] and
calibration inputs X [d_in, N]:

    C = X Xᵀ / N                      running mean, float32       [d_in, d_in]
                                      (= H / 2: core/quant/gptq.HessianAccumulator.C)
    eigh(C) = Q Λ Qᵀ                  float64
    Q' = Q Λ^½                        (the input eigenspace, scaled by importance)
    U S Vᵀ = svd(ΔW Q')               keep rank r
    B = U_r S_r^½                     [d_out, r]
    A = S_r^½ V_rᵀ Q'⁻¹               [r, d_in],  Q'⁻¹ = Λ^-½ Qᵀ with tiny λ zeroed

and the layer serves y = W_hat x + B (A x). Since ‖(ΔW - BA) X‖² = N ‖(ΔW - BA) Q'‖²_F
(when C is full rank), BA is the exact minimiser of the output error at rank r, where a
plain truncated SVD of ΔW only minimises the weight error.
"""

from __future__ import annotations

import torch


def eora_adapters(delta_w: torch.Tensor, C: torch.Tensor, rank: int,
                  rel_eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [d_out, r], A [r, d_in]) float32 compensating delta_w [d_out, d_in] under C [d_in, d_in].

    Eigenvalues below rel_eps · λ_max are treated as zero (dropped from Q' and its inverse).
    """
    dw = delta_w.double()
    lam, Q = torch.linalg.eigh(C.double())                          # ascending λ, Q [d_in, d_in]
    keep = lam > rel_eps * lam.max().clamp(min=1e-300)
    lam, Q = lam[keep], Q[:, keep]                                  # [m], [d_in, m]
    sqrt_lam = lam.sqrt()
    q_prime = Q * sqrt_lam                                          # Q' = Q Λ^½   [d_in, m]
    q_prime_inv = Q.t() / sqrt_lam[:, None]                         # Λ^-½ Qᵀ      [m, d_in]
    U, S, Vh = torch.linalg.svd(dw @ q_prime, full_matrices=False)  # [d_out, k], [k], [k, m]
    r = min(rank, S.numel())
    root = S[:r].sqrt()
    B = U[:, :r] * root                                             # [d_out, r]
    A = (root[:, None] * Vh[:r]) @ q_prime_inv                      # [r, d_in]
    return B.float(), A.float()


def svd_adapters(delta_w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain truncated SVD of delta_w (the baseline EoRA improves on): (B, A) float32."""
    U, S, Vh = torch.linalg.svd(delta_w.double(), full_matrices=False)
    root = S[:rank].sqrt()
    return (U[:, :rank] * root).float(), (root[:, None] * Vh[:rank]).float()
