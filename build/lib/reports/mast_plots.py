"""What MAST lets a user look at (METHOD.md §5), from a run's ``mast_state.pth``.

- subspaces: heat map of the sensitivities e_kj = ū_k·(1 − m_kj) (eq. 1'), dimensions ordered by
  which augmentations they are sensitive to; subspace sizes |S_k|, S_k = {j : e_kj < τ}, and unique
  (in exactly one S_k) / shared (in several) counts;
- how augmentations relate: K × K correlation of the profiles e_k, Jaccard of the non-invariant
  sets {j : e_kj ≥ τ};
- how uncertainty reflects difficulty: u_k against δ_k per augmentation on held-out pairs (binned
  mean with quartile band, Spearman ρ);
- mask differentiation D_k beside the subspaces: does mask k rank the dimensions augmentation k moves
  on held-out pairs (computed by :mod:`mast.differentiation` in the held-out pass, stored in
  ``heldout["differentiation"]``)? An all-or-nothing S_k with D_k ≈ 0 is a per-augmentation weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from mast import model  # noqa: E402
from reports.plots import save_figure  # noqa: E402


class StateError(ValueError):
    """A ``mast_state.pth`` that cannot be read as one (one line naming the file)."""


def load_state(path: str | Path) -> dict[str, Any]:
    """A ``mast_state.pth``, read as data (:func:`transfer.backbones.read.read_torch_file`: weights_only; a pickle
    that names code is refused, never run); anything else is one :class:`StateError` line naming it."""
    from transfer.backbones.read import FileReadError, read_torch_file

    path = Path(path)
    if not path.is_file():  # also a FIFO: never opened
        raise StateError(f"{path}: not a regular file (expected a mast_state.pth written by mast.pretrain)")
    try:
        state = read_torch_file(path)
    except FileReadError as e:
        raise StateError(f"{str(e).replace('checkpoint ', 'MAST state ', 1)}") from None
    if not isinstance(state, dict):
        raise StateError(f"{path}: holds a {type(state).__name__}, expected the dict mast.pretrain writes")
    return state


def has_masks(state: dict) -> bool:
    return isinstance(state.get("mask_logits"), torch.Tensor) and isinstance(state.get("u_bar"), torch.Tensor)


def sensitivities(state: dict) -> np.ndarray:
    """e_kj of a run (eq. 1', :func:`mast.model.sensitivities`), shape [K, d]."""
    return model.sensitivities(state["u_bar"].double(), state["mask_logits"].double()).numpy()


def subspace_stats(e: np.ndarray, tau: float) -> dict[str, Any]:
    """|S_k|, its unique part, and how many dimensions lie in 0, 1 or several subspaces (eq. 1')."""
    invariant = e < tau  # [K, d]: j ∈ S_k
    membership = invariant.sum(0)
    return {
        "size": invariant.sum(1).tolist(),
        "non_invariant": (~invariant).sum(1).tolist(),
        "unique": (invariant & (membership == 1)[None, :]).sum(1).tolist(),
        "unique_total": int((membership == 1).sum()),
        "shared_total": int((membership >= 2).sum()),
        "in_none": int((membership == 0).sum()),
        "d": int(e.shape[1]),
    }


def dimension_order(e: np.ndarray, tau: float) -> np.ndarray:
    """Dimensions grouped by their pattern of non-invariance, then by total sensitivity (a cheap clustering)."""
    pattern = ((e >= tau) * (2 ** np.arange(e.shape[0]))[:, None]).sum(0)
    return np.lexsort((-e.sum(0), -(e >= tau).sum(0), pattern))


def relations(e: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(K×K Pearson correlation of sensitivity profiles, K×K Jaccard of non-invariant sets); NaN = undefined."""
    K = e.shape[0]
    corr = np.full((K, K), np.nan)
    std = e.std(1)
    ok = std > 1e-12
    if ok.any():
        corr[np.ix_(ok, ok)] = np.corrcoef(e[ok])
    np.fill_diagonal(corr, 1.0)
    active = e >= tau
    jac = np.full((K, K), np.nan)
    for a in range(K):
        for b in range(K):
            union = (active[a] | active[b]).sum()
            if union:
                jac[a, b] = (active[a] & active[b]).sum() / union
    return corr, jac


def plot_sensitivities(e: np.ndarray, names: list[str], tau: float, path: Path) -> Path:
    order = dimension_order(e, tau)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.4))
    im = ax.imshow(e[:, order], aspect="auto", interpolation="nearest", cmap="magma")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(f"embedding dimension (d = {e.shape[1]}, ordered by non-invariance pattern)")
    ax.set_title(f"sensitivity e_kj = ū_k·(1 − m_kj); S_k = {{j : e_kj < τ = {tau:g}}}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    return save_figure(fig, path)


def plot_subspaces(stats: dict, names: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(names))
    size, unique = np.array(stats["size"]), np.array(stats["unique"])
    ax.bar(x, size - unique, color="tab:blue", label="shared with other subspaces")
    ax.bar(x, unique, bottom=size - unique, color="tab:orange", label="unique to this subspace")
    ax.set_xticks(x, names)
    ax.set_ylabel("dimensions in S_k")
    ax.set_ylim(0, stats["d"] * 1.08)
    ax.set_title(f"subspace sizes (d = {stats['d']}: {stats['unique_total']} unique, "
                 f"{stats['shared_total']} shared, {stats['in_none']} in none)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def plot_relations(corr: np.ndarray, jac: np.ndarray, names: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, mat, title, vmin in ((axes[0], corr, "correlation of sensitivity profiles e_k", -1),
                                 (axes[1], jac, "Jaccard of non-invariant sets {j : e_kj ≥ τ}", 0)):
        im = ax.imshow(np.ma.masked_invalid(mat), vmin=vmin, vmax=1, cmap="coolwarm" if vmin < 0 else "viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for (a, b), v in np.ndenumerate(mat):
            dark = vmin == 0 and not np.isnan(v) and v < 0.5  # viridis is dark at the bottom
            ax.text(b, a, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def uncertainty_curves(delta: np.ndarray, u: np.ndarray, bins: int = 8) -> list[dict]:
    """Per augmentation: bin centres, median/quartiles of u per δ-bin, Spearman ρ (None if undefined)."""
    out = []
    edges = np.linspace(0.0, 1.0, bins + 1)
    for k in range(delta.shape[1]):
        d, v = delta[:, k], u[:, k]
        idx = np.clip(np.digitize(d, edges) - 1, 0, bins - 1)
        centres, med, lo, hi, count = [], [], [], [], []
        for b in range(bins):
            sel = v[idx == b]
            if sel.size:
                centres.append((edges[b] + edges[b + 1]) / 2)
                q = np.percentile(sel, [25, 50, 75])
                lo.append(q[0]), med.append(q[1]), hi.append(q[2]), count.append(int(sel.size))
        rho = None
        if np.ptp(d) > 0 and np.ptp(v) > 0:
            rho = float(spearmanr(d, v).statistic)
        out.append({"centres": centres, "median": med, "q25": lo, "q75": hi, "count": count, "rho": rho,
                    "n": int(d.size), "frac_nonzero": float((d > 0).mean())})
    return out


def plot_uncertainty(curves: list[dict], names: list[str], path: Path) -> Path:
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    for ax, name, c in zip(axes.flat, names, curves):
        ax.fill_between(c["centres"], c["q25"], c["q75"], alpha=0.3, color="tab:blue")
        ax.plot(c["centres"], c["median"], "o-", color="tab:blue", ms=3)
        rho = "n/a" if c["rho"] is None else f"{c['rho']:.2f}"
        ax.set_title(f"{name}: Spearman ρ = {rho}", fontsize=9)
        ax.set_xlabel("δ_k (discrepancy between views)", fontsize=8)
        ax.set_ylabel("u_k", fontsize=8)
        ax.set_xlim(0, 1)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return save_figure(fig, path)


def mast_figures(state: dict, out_dir: Path, prefix: str) -> dict[str, Any]:
    """All §5 figures for one run; returns file names and the numbers index.md prints."""
    names = [str(n) for n in state.get("aug_names") or []]
    tau = float(state.get("tau", 0.5))
    result: dict[str, Any] = {"figures": [], "tau": tau, "aug_names": names}
    if has_masks(state):
        e = sensitivities(state)
        names = names if len(names) == e.shape[0] else [f"aug{k}" for k in range(e.shape[0])]
        stats = subspace_stats(e, tau)
        corr, jac = relations(e, tau)
        result.update(stats=stats, corr=corr.tolist(), jaccard=jac.tolist(), aug_names=names)
        result["figures"] += [
            ("Sensitivities e (eq. 1')", plot_sensitivities(e, names, tau, out_dir / f"{prefix}_sensitivity.png")),
            ("Subspace sizes, unique and shared", plot_subspaces(stats, names, out_dir / f"{prefix}_subspaces.png")),
            ("How augmentations relate", plot_relations(corr, jac, names, out_dir / f"{prefix}_relations.png")),
        ]
    held = state.get("heldout") or {}
    diff = held.get("differentiation")
    if isinstance(diff, dict) and isinstance(diff.get("D"), list) and len(diff["D"]) == len(names):
        result["differentiation"] = {"D": dict(zip(names, diff["D"])),
                                     "logit_spread": dict(zip(names, diff.get("logit_spread") or [None] * len(names))),
                                     "n_pairs": diff.get("n_pairs")}
    if isinstance(held.get("w_mean"), float):
        result["w_mean_heldout"] = held["w_mean"]  # mean invariance weight w (eq. 4) over the held-out pairs
    delta, u = held.get("delta"), held.get("u")
    if isinstance(delta, torch.Tensor) and isinstance(u, torch.Tensor) and u.numel() and float(u.abs().max()) > 0:
        curves = uncertainty_curves(delta.double().numpy(), u.double().numpy())
        if len(names) != len(curves):
            names = [f"aug{k}" for k in range(len(curves))]
        result["rho"] = {n: c["rho"] for n, c in zip(names, curves)}
        result["figures"].append(("Uncertainty against augmentation strength (held-out pairs)",
                                  plot_uncertainty(curves, names, out_dir / f"{prefix}_uncertainty.png")))
    return result
