"""Train one arm of ``benchmarks/mechanism.py`` on the ground-truth world and measure what it learned.

Every arm is the project's own model (:class:`mast.model.MAST` on a small MLP backbone + VICReg
expander) and loss (:mod:`mast.loss`, eq. 6). MAST-type arms differ from ``mast`` in exactly one setting
(``model.masks`` or ``model.uncertainty``); every MAST-type arm X has its own matched-λ VICReg control
``matched_X`` (w_eff, ``loss.inv_coeff=auto:``) and optionally ``matched_mean_X`` (mean w, ``auto_mean:``),
λ resolved by :func:`mast.matched.matched_inv_coeff` from X's own run folder of the same seed. D_k is
:mod:`mast.differentiation`, the function the image reports use.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from mast import rundir
from plumbing.atomic import torch_save_atomic, write_text_atomic
from mast.differentiation import logit_spread, mask_differentiation, measured_sensitivity
from mast.loss import LossConfig, effective_weight, mismatch_factor
from mast.matched import matched_inv_coeff
from mast.model import MAST, MethodConfig, build_expander
from mechanism_data import (Latents, World, observe, only_k_pairs, pair_batch, sample_latents, sample_theta,
                            subset)

#: MAST-type arm -> (model.uncertainty, model.masks); each differs from "mast" in one setting
MAST_ARMS = {"mast": ("head", "dims"), "mast_tied": ("head", "tied"), "mast_unc_none": ("none", "dims"),
             "mast_budget": ("head", "budget"), "mast_budget_tied": ("head", "budget_tied")}
#: matched control prefix -> the spec prefix of mast/matched.py (w_eff is the control; mean w for comparison)
MATCHED = {"matched_": "auto:", "matched_mean_": "auto_mean:"}
ARMS = ("vicreg", *MAST_ARMS, *(f"matched_{a}" for a in MAST_ARMS), "matched_mean_mast", "matched_mean_mast_tied")


def matched_source(arm: str) -> tuple[str, str] | None:
    """``matched_mast_tied`` -> ("mast_tied", "auto:"); None for an arm that is no matched control."""
    for prefix in sorted(MATCHED, key=len, reverse=True):
        if arm.startswith(prefix) and arm[len(prefix):] in MAST_ARMS:
            return arm[len(prefix):], MATCHED[prefix]
    return None


@dataclass
class Settings:
    steps: int = 1000
    batch: int = 256
    lr: float = 1e-3
    subspace_lr: float = 1e-2  # METHOD.md §2
    train_size: int = 8192
    test_size: int = 2048
    heldout_pairs: int = 16384  # D_k's noise ceiling rises with it (D_known; 4096 in issue 25 left it at 0.76)
    rep_dim: int = 64
    embed_dim: int = 128
    mask_init: float = 3.0  # METHOD.md §2's initial logit
    mask_coeff: float = 0.01  # ρ of eq. (6)
    inv_coeff: float = 25.0  # λ of VICReg and MAST


def build_model(world: World, arm: str, s: Settings, inv_coeff: float) -> MAST:
    """MLP backbone f (obs → 128 → 128 → rep_dim) + VICReg expander g (rep_dim → 2·d → d)."""
    d = world.spec.obs_dim
    backbone = nn.Sequential(nn.Linear(d, 128), nn.BatchNorm1d(128), nn.ReLU(True), nn.Linear(128, 128),
                             nn.BatchNorm1d(128), nn.ReLU(True), nn.Linear(128, s.rep_dim))
    expander = build_expander(s.rep_dim, (2 * s.embed_dim, s.embed_dim))
    unc, masks = MAST_ARMS.get(arm, ("head", "dims"))
    method = MethodConfig(method="mast" if arm in MAST_ARMS else "vicreg", uncertainty=unc, masks=masks,
                          mask_init_logit=s.mask_init)
    loss = LossConfig(inv_coeff=inv_coeff, mask_coeff=s.mask_coeff)
    return MAST(backbone, expander, s.embed_dim, world.param_slices(), method, loss, aug_spec=world.describe())


def train(world: World, train_lat: Latents, arm: str, seed: int, s: Settings, inv_coeff: float,
          run_dir: Path | None = None) -> MAST:
    """``s.steps`` Adam steps on fresh augmentations of the fixed training set; a MAST-type run logs w_mean
    and w_eff per step into ``run_dir`` (config.yaml, metrics.jsonl, mast_state.pth: what matched.py reads)."""
    torch.manual_seed(seed)
    model = build_model(world, arm, s, inv_coeff)
    opt = torch.optim.Adam(model.main_parameters(), lr=s.lr)
    sub = torch.optim.Adam(model.subspace_parameters(), lr=s.subspace_lr) if model.subspace is not None else None
    gen = torch.Generator().manual_seed(10_000 + seed)
    per_epoch = max(1, s.train_size // s.batch)
    lines = []
    model.train()
    for step in range(s.steps):
        idx = torch.randint(s.train_size, (s.batch,), generator=gen)
        theta1, theta2, _ = sample_theta(world, s.batch, gen)
        out = model(pair_batch(world, subset(train_lat, idx), theta1, theta2, gen))
        opt.zero_grad(set_to_none=True)
        if sub is not None:
            sub.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if sub is not None:
            sub.step()
            lines.append(json.dumps({"step": step + 1, "epoch": step // per_epoch, "w_mean": float(out["w_mean"]),
                                     "w_eff": float(out["w_eff"])}))
    if run_dir is not None and model.subspace is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / rundir.CONFIG, yaml.safe_dump({"method": "mast", "loss": {"inv_coeff": inv_coeff}}))
        write_text_atomic(run_dir / rundir.METRICS, "\n".join(lines) + "\n")
        torch_save_atomic(run_dir / rundir.MAST_STATE, model.mast_state())
    return model.eval()


def matched_lambda(run_dir: Path, prefix: str = "auto:") -> tuple[float, str]:
    """λ of a matched control: ``loss.inv_coeff=auto:RUN_DIR`` (or ``auto_mean:``) resolved by mast/matched.py."""
    return matched_inv_coeff(f"{prefix}{run_dir}")


@torch.no_grad()
def features(model: MAST, x: Tensor) -> tuple[Tensor, Tensor]:
    """(backbone output f(x), embedding z = g(f(x))), eval mode."""
    h = model.backbone(x)
    return h, model.expander(h)


def probe_scores(model: MAST, world: World, train_lat: Latents, test_lat: Latents, seed: int) -> dict:
    """Per test item: content-class correctness (logistic regression on standardised f) and, per style
    factor, 1 − e²/Var(y) (least squares on f; its mean over items is the linear R²)."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    tr = features(model, observe(world, train_lat.content, train_lat.style, gen))[0].double()
    te = features(model, observe(world, test_lat.content, test_lat.style, gen))[0].double()
    mu, sd = tr.mean(0), tr.std(0).clamp(min=1e-8)
    tr, te = (tr - mu) / sd, (te - mu) / sd
    clf = LogisticRegression(max_iter=1000, C=1.0).fit(tr.numpy(), train_lat.label.numpy())
    correct = (clf.predict(te.numpy()) == test_lat.label.numpy()).astype(np.float64)
    ones = lambda a: torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)  # noqa: E731
    coef = torch.linalg.lstsq(ones(tr), train_lat.style.double()).solution
    err = (ones(te) @ coef - test_lat.style.double()).pow(2)
    r2_items = 1.0 - err / test_lat.style.double().var(0)
    return {"content_correct": correct, "r2_items": [r2_items[:, k].numpy() for k in range(world.k)]}


def known_sensitivity(model: MAST, world: World, lat: Latents, seed: int) -> Tensor:
    """The known answer [K, d], from the world's factors rather than from noisy pairs: the variance of
    r_j when only s_k differs, computed WITHOUT observation noise, over the variance the observation noise
    alone gives r_j (2σ²·E_i|∂z_j/∂x|², by autograd through the encoder in eval mode). In expectation this
    is s_kj + 1 of METHOD.md §5; its ranks over j are the answer a perfect mask k would give."""
    gen = torch.Generator().manual_seed(60_000 + seed)
    with torch.no_grad():
        signal = torch.stack([(features(model, b.x1)[1] - features(model, b.x2)[1]).double().var(0)
                              for b in (only_k_pairs(world, lat, k, gen, noise=False) for k in range(world.k))])
    few = subset(lat, torch.arange(min(1024, lat.label.shape[0])))  # an expectation: 1024 draws suffice
    x = observe(world, few.content, few.style, None).requires_grad_(True)
    z = model.expander(model.backbone(x))
    grad2 = torch.stack([torch.autograd.grad(z[:, j].sum(), x, retain_graph=True)[0].double().pow(2).sum(1).mean()
                         for j in range(z.shape[1])])
    return signal / (2 * world.spec.noise ** 2 * grad2).clamp(min=1e-30)


def measured(model: MAST, world: World, lat: Latents, seed: int) -> tuple[Tensor, Tensor]:
    """s_kj on held-out pairs where only k differs (METHOD.md §5) and the held-out embeddings."""
    gen = torch.Generator().manual_seed(30_000 + seed)
    with torch.no_grad():
        r_only, zs = [], []
        for k in range(world.k):
            b = only_k_pairs(world, lat, k, gen)
            z1, z2 = features(model, b.x1)[1], features(model, b.x2)[1]
            r_only.append(z1 - z2)
            zs.append(z1)
        b = only_k_pairs(world, lat, None, gen)
        r_none = features(model, b.x1)[1] - features(model, b.x2)[1]
    return measured_sensitivity(torch.stack(r_only), r_none, torch.cat(zs)), torch.cat(zs)


def weight_measures(model: MAST, world: World, lat: Latents, seed: int, n: int = 4096) -> dict:
    """Where the invariance weights w of eq. (4) vary, on ``n`` held-out pairs of the training distribution.

    Two-way decomposition of Var(w) over pairs i × dimensions j: ``var_share`` = the shares of the pair
    effect Var_i(mean_j w), the dimension effect Var_j(mean_i w) and the rest (pair × dimension); ``cv_pairs``
    / ``cv_dims`` = std over pairs / dimensions of those means over the mean w. Across augmentations:
    ``relief_share`` = each k's share of the mismatch inflation q − 1 = Σ_k (1 − m_kj)·u_ik (eq. 2).
    Also mean w and w_eff = Σ w r²/Σ r² on these pairs, and per k the exponent b of u_k ∝ δ_k^b (least
    squares on log-log over pairs with δ_k > 0.01): 1 = the head is δ times a constant (``uncertainty: none``).
    """
    gen = torch.Generator().manual_seed(50_000 + seed)
    few = subset(lat, torch.arange(min(n, lat.label.shape[0])))
    theta1, theta2, delta = sample_theta(world, few.label.shape[0], gen)
    b = pair_batch(world, few, theta1, theta2, gen)
    with torch.no_grad():
        r = (features(model, b.x1)[1] - features(model, b.x2)[1]).double()
        u = model.uncertainty(theta1, theta2, delta).double()
        masks = model.masks().double()
    q = mismatch_factor(u, masks)
    w = q.reciprocal()
    total = w.var(unbiased=False).clamp(min=1e-30)
    pair_m, dim_m = w.mean(1), w.mean(0)
    shares = {"pairs": float(pair_m.var(unbiased=False) / total), "dims": float(dim_m.var(unbiased=False) / total)}
    shares["pair_x_dim"] = 1.0 - shares["pairs"] - shares["dims"]
    relief = (u[:, :, None] * (1 - masks)[None]).mean(dim=(0, 2))  # [K]: mean_ij (1 − m_kj)·u_ik
    exponents = []
    for k in range(world.k):
        keep = (delta[:, k] > 0.01) & (u[:, k] > 0)
        x, y = delta[keep, k].double().log(), u[keep, k].log()
        exponents.append(float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum()))
    return {"w_mean_heldout": float(w.mean()), "w_eff_heldout": float(effective_weight(w, r)),
            "var_share": shares, "cv_pairs": float(pair_m.std() / w.mean()), "cv_dims": float(dim_m.std() / w.mean()),
            "relief_share": (relief / relief.sum().clamp(min=1e-30)).tolist(), "u_exponent": exponents}


def mask_measures(model: MAST, world: World, lat: Latents, s_kj: Tensor, seed: int) -> dict:
    """D_k with the learned masks, with the known answer in their place, with random masks; logit spread
    (of logit(m), METHOD.md §5); |S_k| at τ; the weight measures above."""
    if model.subspace is None:
        return {}
    logits = model.subspace.effective_logits().double()
    known = known_sensitivity(model, world, lat, seed)  # noise-free pairs: all of lat
    rand = torch.randn(logits.shape, generator=torch.Generator().manual_seed(40_000 + seed), dtype=torch.float64)
    return {"D": mask_differentiation(logits, s_kj),
            "D_known": mask_differentiation(-known / known.max(), s_kj),  # 1 − m monotone in the known answer
            "D_random": mask_differentiation(rand, s_kj),
            "logit_spread": logit_spread(logits),
            "subspace_size": model.subspaces().sum(1).tolist(),
            **weight_measures(model, world, lat, seed)}


def run_arm(world: World, lat: dict[str, Latents], arm: str, seed: int, s: Settings, work: Path) -> dict:
    """Train one (arm, seed) and measure it; returns per-item arrays (for the bootstrap) and numbers.

    A MAST-type arm writes its run folder ``work/<arm>_s<seed>``; its matched controls read that folder
    (so each control's λ comes from its own arm's run, never from another arm's)."""
    inv, source = s.inv_coeff, "fixed"
    matched = matched_source(arm)
    if matched is not None:
        inv, source = matched_lambda(work / f"{matched[0]}_s{seed}", matched[1])
    model = train(world, lat["train"], arm, seed, s, inv, work / f"{arm}_s{seed}" if arm in MAST_ARMS else None)
    scores = probe_scores(model, world, lat["train"], lat["test"], seed)
    s_kj, _ = measured(model, world, lat["heldout"], seed)
    out = {"arm": arm, "seed": seed, "inv_coeff": inv, "inv_coeff_source": source, **scores,
           "content_acc": float(scores["content_correct"].mean()),
           "r2": [float(a.mean()) for a in scores["r2_items"]], "s_mean": s_kj.mean(1).tolist()}
    out.update(mask_measures(model, world, lat["heldout"], s_kj, seed))
    return out


def latents(world: World, s: Settings) -> dict[str, Latents]:
    """The fixed training, test and held-out sets (the same for every arm and seed: paired items)."""
    gen = torch.Generator().manual_seed(world.spec.seed + 1)
    return {"train": sample_latents(world, s.train_size, gen), "test": sample_latents(world, s.test_size, gen),
            "heldout": sample_latents(world, s.heldout_pairs, gen)}
