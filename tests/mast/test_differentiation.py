"""Mask differentiation D_k (METHOD.md §5, mast/differentiation.py): the measure, the image held-out
pairs where only one augmentation differs, and D_k beside the subspaces in the demo and study reports."""
from __future__ import annotations

import torch
from PIL import Image

from mast.augment import AugmentConfig, PhotometricAugment, SpatialTwoView
from mast.differentiation import mask_differentiation, measured_sensitivity, spearman
from mast.heldout import only_k_differs
from reports import build, mast_plots, study_runs as study


def test_measure_reads_one_for_the_true_masks_and_about_zero_for_random_ones():
    g = torch.Generator().manual_seed(0)
    k, n, d = 3, 4000, 48
    drive = torch.rand(k, d, generator=g) * 3  # how strongly k moves each dimension
    r_only = torch.randn(k, n, d, generator=g) * (1 + drive[:, None, :]).sqrt()
    r_none = torch.randn(n, d, generator=g)
    s = measured_sensitivity(r_only, r_none)
    assert all(v > 0.9 for v in mask_differentiation(-drive, s))  # 1 − m larger where k drives more
    rand = mask_differentiation(torch.randn(k, d, generator=g), s)
    assert all(abs(v) < 0.4 for v in rand)
    assert mask_differentiation(torch.full((k, d), 3.0), s) == [None] * k  # one scalar per mask: undefined
    assert spearman([1, 2, 3], [3, 2, 1]) == -1.0


def test_deterministic_encoder_uses_the_floor():
    r_none = torch.zeros(10, 4)
    r_only = torch.stack([torch.randn(10, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0])])
    s = measured_sensitivity(r_only, r_none, z=torch.randn(10, 4))
    assert torch.isfinite(s).all()


def test_only_k_differs_changes_exactly_one_augmentation(synthetic_root):
    cfg = AugmentConfig(size=32, blur_kernel_size=5)
    spatial_aug, photo = SpatialTwoView(cfg), PhotometricAugment(cfg)
    files = sorted((synthetic_root / "unlabeled").rglob("*.png"))[:8]
    items = [spatial_aug(Image.open(f)) for f in files]
    views, spatial = torch.stack([v for v, _ in items]), torch.stack([s for _, s in items])
    spatial[:, 1, 4] = 1 - spatial[:, 0, 4]  # flips differ on every pair
    p = photo.sample(len(files), torch.device("cpu"), torch.Generator().manual_seed(0))
    p["blur_sigma"][:] = 1.0  # blur on in both views: a pair can differ only through its σ
    p["blur_sigma"][len(files):] = 0.5
    slices = photo.param_slices
    for op in [*cfg.ops, None]:
        batch = photo.render(*only_k_differs(views, spatial, p, op))
        differs = {o for o, sl in slices.items() if not torch.equal(batch.theta1[:, sl], batch.theta2[:, sl])}
        assert differs <= ({op} if op else set()), (op, differs)
        if op is None:
            assert torch.equal(batch.x1, batch.x2)
    blur_only = photo.render(*only_k_differs(views, spatial, p, "blur"))
    assert not torch.equal(blur_only.theta1[:, slices["blur"]], blur_only.theta2[:, slices["blur"]])
    crop_only = photo.render(*only_k_differs(views, spatial, p, "crop"))
    assert torch.equal(crop_only.theta1[:, slices["flip"]], crop_only.theta2[:, slices["flip"]])


def test_held_out_pass_stores_d_k_and_the_reports_show_it(full_run):
    state = mast_plots.load_state(full_run / "mast_state.pth")
    diff = state["heldout"]["differentiation"]
    assert len(diff["D"]) == 6 and len(diff["logit_spread"]) == 6 and diff["n_pairs"] == 8
    assert all(v is None or -1 <= v <= 1 for v in diff["D"])
    res = mast_plots.mast_figures(state, full_run / "figs", "m")
    lines = "\n".join(build._mast_numbers(res))
    assert "| D_k | mask-logit spread |" in lines and "per-augmentation weight" in lines
    facts = study.run_facts(full_run)
    assert len(facts["learned"]["D"]) == 6
    assert "mask differentiation D_k" in "\n".join(study.learned_tables({"mast_s0": facts}))
