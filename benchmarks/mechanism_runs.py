"""Train one arm of ``benchmarks/mechanism.py`` on the ground-truth world and measure what it learned.

Every arm is the project's own model (:class:`mast.model.MAST` on a small MLP backbone + VICReg
expander) and loss (:mod:`mast.loss`, eq. 6); the matched-λ control resolves λ with
:func:`mast.matched.matched_inv_coeff` from the same-seed MAST run's folder, as ``loss.inv_coeff=auto:``
does; D_k is :mod:`mast.differentiation`, the function the image reports use.
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
from mast.atomic import torch_save_atomic, write_text_atomic
from mast.differentiation import logit_spread, mask_differentiation, measured_sensitivity, spearman
from mast.loss import LossConfig
from mast.matched import matched_inv_coeff
from mast.model import MAST, MethodConfig, build_expander
from mechanism_data import (Latents, World, observe, only_k_pairs, pair_batch, sample_latents, sample_theta,
                            subset)

ARMS = ("vicreg", "vicreg_matched", "mast_unc_none", "mast")


@dataclass
class Settings:
    steps: int = 1000
    batch: int = 256
    lr: float = 1e-3
    subspace_lr: float = 1e-2  # METHOD.md §2
    train_size: int = 8192
    test_size: int = 2048
    heldout_pairs: int = 4096  # D_k's noise ceiling rises with it (D_known in the report)
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
    method = MethodConfig(method="mast" if arm.startswith("mast") else "vicreg",
                          uncertainty="none" if arm == "mast_unc_none" else "head", mask_init_logit=s.mask_init)
    loss = LossConfig(inv_coeff=inv_coeff, mask_coeff=s.mask_coeff)
    return MAST(backbone, expander, s.embed_dim, world.param_slices(), method, loss, aug_spec=world.describe())


def train(world: World, train_lat: Latents, arm: str, seed: int, s: Settings, inv_coeff: float,
          run_dir: Path | None = None) -> MAST:
    """``s.steps`` Adam steps on fresh augmentations of the fixed training set; a MAST run logs w_mean
    per step into ``run_dir`` (config.yaml, metrics.jsonl, mast_state.pth: what matched.py reads)."""
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
            lines.append(json.dumps({"step": step + 1, "epoch": step // per_epoch, "w_mean": float(out["w_mean"])}))
    if run_dir is not None and model.subspace is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / rundir.CONFIG, yaml.safe_dump({"method": "mast", "loss": {"inv_coeff": inv_coeff}}))
        write_text_atomic(run_dir / rundir.METRICS, "\n".join(lines) + "\n")
        torch_save_atomic(run_dir / rundir.MAST_STATE, model.mast_state())
    return model.eval()


def matched_lambda(run_dir: Path) -> tuple[float, str]:
    """λ of the matched control: ``loss.inv_coeff=auto:RUN_DIR`` resolved by mast/matched.py."""
    return matched_inv_coeff(f"auto:{run_dir}")


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


def mask_measures(model: MAST, world: World, lat: Latents, s_kj: Tensor, seed: int) -> dict:
    """D_k with the learned masks, with the known answer in their place, with random masks; logit
    spread; |S_k| at τ; ρ(u_k, δ_k) on held-out pairs of the training distribution."""
    if model.subspace is None:
        return {}
    logits = model.subspace.mask_logits.detach().double()
    known = known_sensitivity(model, world, lat, seed)  # noise-free pairs: all of lat
    rand = torch.randn(logits.shape, generator=torch.Generator().manual_seed(40_000 + seed), dtype=torch.float64)
    gen = torch.Generator().manual_seed(50_000 + seed)
    theta1, theta2, delta = sample_theta(world, lat.label.shape[0], gen)
    with torch.no_grad():
        u = model.uncertainty(theta1, theta2, delta).double()
    return {"D": mask_differentiation(logits, s_kj),
            "D_known": mask_differentiation(-known / known.max(), s_kj),  # 1 − m monotone in the known answer
            "D_random": mask_differentiation(rand, s_kj),
            "logit_spread": logit_spread(logits),
            "subspace_size": model.subspaces().sum(1).tolist(),
            "rho_u_delta": [spearman(delta[:, k].numpy(), u[:, k].numpy()) for k in range(world.k)]}


def run_arm(world: World, lat: dict[str, Latents], arm: str, seed: int, s: Settings, work: Path) -> dict:
    """Train one (arm, seed) and measure it; returns per-item arrays (for the bootstrap) and numbers."""
    run_dir = work / f"mast_s{seed}"
    inv, source = s.inv_coeff, "fixed"
    if arm == "vicreg_matched":
        inv, source = matched_lambda(run_dir)
    model = train(world, lat["train"], arm, seed, s, inv, run_dir if arm == "mast" else None)
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
