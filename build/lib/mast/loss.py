"""VICReg's loss terms (as official ``main_vicreg.py`` computes them) and MAST's eqs. (2)-(6) (METHOD.md §3).

All terms run in float32 with autocast disabled, so the model may run under bf16 autocast.
Conventions: z1, z2 [N, d] embeddings of the two views on this process; u [N, K] uncertainties
(eq. 1); masks m [K, d] = sigmoid(φ).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mast.distributed import gather_with_grad

EPS_UNC = 1e-12  # ε of eq. (3)
EPS_STD = 1e-4  # VICReg: std = sqrt(var + 1e-4)


@dataclass
class LossConfig:
    """Coefficients of eq. (6): λ (inv), μ (var), ν (cov), ρ (mask prior). ``inv_coeff_source``
    records where λ came from when it was resolved from ``auto:RUN_DIR`` (mast/matched.py)."""

    inv_coeff: float = 25.0
    var_coeff: float = 25.0
    cov_coeff: float = 1.0
    mask_coeff: float = 0.01
    inv_coeff_source: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("inv_coeff", "var_coeff", "cov_coeff", "mask_coeff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"loss.{name}: expected a number >= 0, got {value!r}")
            setattr(self, name, float(value))


def float32_region(device: torch.device) -> torch.autocast:
    """Context that turns autocast off, so loss arithmetic stays float32 under bf16 training."""
    return torch.autocast(device_type=device.type, enabled=False)


# ----------------------------------------------------------------------------- VICReg
def off_diagonal(x: Tensor) -> Tensor:
    """Off-diagonal elements of a square matrix, flattened (official VICReg)."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def invariance(z1: Tensor, z2: Tensor) -> Tensor:
    """VICReg invariance: ``F.mse_loss(z1, z2)``, on this process's batch."""
    return F.mse_loss(z1, z2)


def _variance(zc: Tensor) -> Tensor:
    return torch.mean(F.relu(1 - torch.sqrt(zc.var(dim=0) + EPS_STD)))


def _covariance(zc: Tensor) -> Tensor:
    n, d = zc.shape
    cov = (zc.T @ zc) / (n - 1)
    return off_diagonal(cov).pow(2).sum().div(d)


def variance(z: Tensor) -> Tensor:
    """VICReg v(Z) = mean_j relu(1 − sqrt(Var(z_j) + 1e-4)) on the (gathered) batch."""
    return _variance(z - z.mean(dim=0))


def covariance(z: Tensor) -> Tensor:
    """VICReg c(Z) = Σ_{i≠j} Cov(Z)_ij² / d on the (gathered) batch, Cov with 1/(N − 1)."""
    return _covariance(z - z.mean(dim=0))


def variance_covariance(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
    """[v(Z¹) + v(Z²)]/2 and c(Z¹) + c(Z²), each Z centred once as official VICReg does (so even the
    float rounding of the gradients matches it)."""
    z1c, z2c = z1 - z1.mean(dim=0), z2 - z2.mean(dim=0)
    return _variance(z1c) / 2 + _variance(z2c) / 2, _covariance(z1c) + _covariance(z2c)


# ----------------------------------------------------------------------------- MAST
def mismatch_factor(u: Tensor, masks: Tensor) -> Tensor:
    """Eq. (2): q_ij = 1 + Σ_k (1 − m_kj) · u_ik, [N, d]. O(N·K·d)."""
    return torch.addmm(torch.ones((), dtype=u.dtype, device=u.device), u, 1.0 - masks)


def uncertainty_fit(r: Tensor, q: Tensor) -> Tensor:
    """Eq. (3): L_unc = (1/d) Σ_j [log(ε + (1/N) Σ_i r̄²_ij / q_ij) + (1/N) Σ_i log q_ij], r̄ = sg(r).

    Trains only masks and uncertainty heads (through q); the residual scale s_j² is profiled out,
    so the loss does not depend on the scale of the embedding.
    """
    r2 = r.detach().pow(2)
    scale = (r2 / q).mean(dim=0)
    return (torch.log(EPS_UNC + scale) + torch.log(q).mean(dim=0)).mean()


def invariance_weights(q: Tensor) -> Tensor:
    """Eq. (4) v2: w_ij = sg[q_ij⁻¹], in (0, 1], no normalisation over the batch.

    Not normalised on purpose (METHOD.md §3, §6): v1's mean-1-per-dimension normalisation could not
    relieve a dimension of an augmentation that acts on most pairs, only move weight between pairs.
    """
    return q.detach().reciprocal()


def weighted_invariance(z1: Tensor, z2: Tensor, w: Tensor) -> Tensor:
    """Eq. (4): L_inv = 1/(N·d) Σ_ij w_ij · (z¹_ij − z²_ij)², written as ``F.mse_loss(√w·z¹, √w·z²)`` so
    that with w ≡ 1 it is VICReg's invariance term bit for bit (values and gradients)."""
    s = w.sqrt()
    return F.mse_loss(s * z1, s * z2)


def effective_weight(w: Tensor, r: Tensor) -> Tensor:
    """w_eff = Σ_ij w_ij r_ij² / Σ_ij r_ij² (eq. 4), detached: the factor by which eq. (4) weakens VICReg's
    invariance term at these residuals, L_inv = w_eff · mse(z¹, z²) exactly; 1 when w ≡ 1.

    Unlike mean w it counts each weight by the residual it multiplies: where the small w fall on the large
    residuals (the uncertainty head's point), w_eff < mean w. mast/matched.py matches λ on it.
    """
    r2 = r.detach().pow(2)
    total = r2.sum()
    return torch.where(total > 0, (w.detach() * r2).sum() / total.clamp(min=1e-30), w.detach().mean())


def mask_prior(masks: Tensor) -> Tensor:
    """Eq. (5): L_mask = mean_{k,j} (1 − m_kj)."""
    return (1.0 - masks).mean()


def objective(z1: Tensor, z2: Tensor, cfg: LossConfig, u: Tensor | None = None,
              masks: Tensor | None = None) -> dict[str, Tensor]:
    """Eq. (6): L = λ·L_inv + μ·[v(Z¹) + v(Z²)]/2 + ν·[c(Z¹) + c(Z²)] + L_unc + ρ·L_mask.

    With ``u``/``masks`` None this is official VICReg (L_inv = mse, no L_unc, no L_mask). v and c
    use the batch gathered over all processes (with gradients); L_inv, L_unc and w this process's
    batch. Returns "loss" (backprop this) and the terms (detached): inv, var, cov, unc, mask_prior,
    and for MAST w_min/w_mean/w_max and w_eff (:func:`effective_weight`).
    """
    with float32_region(z1.device):
        z1, z2 = z1.float(), z2.float()
        out: dict[str, Tensor] = {}
        if u is None or masks is None:
            inv = invariance(z1, z2)
            unc = prior = torch.zeros((), device=z1.device)
        else:
            u, masks = u.float(), masks.float()
            q = mismatch_factor(u, masks)
            w = invariance_weights(q)
            inv = weighted_invariance(z1, z2, w)
            unc = uncertainty_fit(z1.detach() - z2.detach(), q)
            prior = mask_prior(masks)
            out["w_min"], out["w_mean"], out["w_max"] = w.min().detach(), w.mean().detach(), w.max().detach()
            out["w_eff"] = effective_weight(w, z1.detach() - z2.detach())
        var, cov = variance_covariance(gather_with_grad(z1), gather_with_grad(z2))
        loss = cfg.inv_coeff * inv + cfg.var_coeff * var + cfg.cov_coeff * cov + unc + cfg.mask_coeff * prior
    out.update(loss=loss, inv=inv.detach(), var=var.detach(), cov=cov.detach(), unc=unc.detach(),
               mask_prior=prior.detach())
    return out
