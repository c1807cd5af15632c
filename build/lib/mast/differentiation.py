"""Mask differentiation D_k (METHOD.md §5): does mask k pick out the dimensions augmentation k drives?

The one place this is computed; the image held-out pass (:mod:`mast.heldout`, read by the demo and
study reports) and the ground-truth benchmark (``benchmarks/mechanism.py``) both call it.

Given embedding residuals r = z¹ − z² of held-out pairs that differ ONLY in augmentation k (every
other augmentation applied identically to both views) and of pairs that do not differ at all,

    s_kj = Var_i(r_ij | only k differs) / [Var_i(r_ij | no difference) + floor_j] − 1,
    D_k  = Spearman ρ over dimensions j between (1 − m_kj) and s_kj,

≈ 1: the mask knows which dimensions k moves; ≈ 0: it does not. ``floor_j`` = 1e-6 × the variance of
dimension j over the held-out views: a deterministic encoder maps a no-difference pair to r = 0
exactly, and then s_kj is k's share of the dimension's variance (its ranks are what D_k reads).
An all-or-nothing subspace S_k (eq. 1') with D_k ≈ 0 is a per-augmentation weight, not a subspace.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

FLOOR = 1e-6  # × Var_i(z_ij): the denominator's floor when no-difference residuals vanish


def measured_sensitivity(r_only: Tensor, r_none: Tensor, z: Tensor | None = None, floor: float = FLOOR) -> Tensor:
    """s_kj (METHOD.md §5), [K, d], float64, from r_only [K, N, d] (pairs where only k differs),
    r_none [M, d] (pairs that do not differ) and z [N', d] (held-out embeddings, for the floor)."""
    if r_only.dim() != 3 or r_none.dim() != 2 or r_only.shape[2] != r_none.shape[1]:
        raise ValueError(f"measured_sensitivity: expected r_only [K,N,d] and r_none [M,d], got "
                         f"{tuple(r_only.shape)} and {tuple(r_none.shape)}")
    if r_only.shape[1] < 2 or r_none.shape[0] < 2:
        raise ValueError("measured_sensitivity: expected at least 2 pairs of each kind")
    var_k = r_only.double().var(dim=1)
    base = r_none.double().var(dim=0)
    scale = z.double().var(dim=0) if z is not None and z.shape[0] >= 2 else var_k.mean(dim=0)
    return var_k / (base + floor * scale + 1e-30) - 1.0


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None where either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman: expected two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else None


def mask_differentiation(mask_logits: Tensor, s: Tensor) -> list[float | None]:
    """D_k = Spearman over j of (1 − m_kj), m = sigmoid(φ), against s_kj; None where undefined
    (e.g. every mask logit of k equal: the mask cannot rank dimensions at all)."""
    if mask_logits.shape != s.shape:
        raise ValueError(f"mask_differentiation: mask logits {tuple(mask_logits.shape)} and sensitivities "
                         f"{tuple(s.shape)} must both be [K, d]")
    free = (1.0 - torch.sigmoid(mask_logits.double())).numpy()
    return [spearman(free[k], s[k].double().numpy()) for k in range(free.shape[0])]


def logit_spread(mask_logits: Tensor) -> list[float]:
    """Std of the mask logits φ_k over dimensions, per augmentation (0: the mask is one scalar)."""
    return mask_logits.double().std(dim=1).tolist()


def differentiation_summary(mask_logits: Tensor | None, s: Tensor, n_pairs: int) -> dict:
    """What a report stores: D_k, the logit spread, s_kj's mean per k, the pair count (plain data)."""
    out = {"s_mean": s.mean(dim=1).tolist(), "n_pairs": int(n_pairs)}
    if mask_logits is not None:
        out.update(D=mask_differentiation(mask_logits, s), logit_spread=logit_spread(mask_logits))
    return out
