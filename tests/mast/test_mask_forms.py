"""``model.masks`` (issue 35): the tied-mask control removes exactly the per-dimension choice of the masks.

With every per-dimension logit of augmentation k equal to the tied logit of k, MAST (METHOD.md eqs. 2-6)
and its tied control are the same function: equal loss, equal gradients for f, g and the uncertainty heads,
and the tied logit's gradient is the sum of the per-dimension ones. The same holds for the budget variant
and its tied control. With unequal logits the two differ (so the comparison can fail).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mast.loss import LossConfig, objective
from mast.model import MAST, MethodConfig, build_expander

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)

SLICES = {"a": slice(0, 1), "b": slice(1, 3), "c": slice(3, 4)}
D = 16


def model(masks: str, seed: int = 0) -> MAST:
    torch.manual_seed(seed)  # same seed -> same backbone, expander and heads whatever the mask form
    backbone = nn.Sequential(nn.Linear(10, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 12))
    return MAST(backbone, build_expander(12, (32, D)), D, SLICES, MethodConfig(masks=masks), LossConfig())


def batch(n: int = 64, seed: int = 1) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    theta1, theta2 = torch.rand(n, 4, generator=g), torch.rand(n, 4, generator=g)
    delta = torch.stack([(theta1[:, s] - theta2[:, s]).abs().mean(1) for s in SLICES.values()], 1)
    return SimpleNamespace(x1=torch.randn(n, 10, generator=g), x2=torch.randn(n, 10, generator=g),
                           theta1=theta1, theta2=theta2, delta=delta)


def grads(m: MAST) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def run(m: MAST, b) -> tuple[dict, dict]:
    m.zero_grad(set_to_none=True)
    out = m(b)
    out["loss"].backward()
    return out, grads(m)


@pytest.mark.parametrize("untied, tied", [("dims", "tied"), ("budget", "budget_tied")])
def test_tied_control_equals_the_masks_forced_equal(untied, tied):
    full, ctrl = model(untied), model(tied)
    tied_logits = torch.tensor([[0.7], [-1.3], [2.1]])
    with torch.no_grad():
        ctrl.subspace.mask_logits.copy_(tied_logits)
        full.subspace.mask_logits.copy_(tied_logits.expand(-1, D))  # every per-dimension logit of k equal
    b = batch()
    out_f, g_f = run(full, b)
    out_c, g_c = run(ctrl, b)
    for key in ("loss", "inv", "unc", "mask_prior", "w_mean", "w_eff"):
        assert torch.allclose(out_f[key], out_c[key], rtol=1e-6, atol=1e-7), key
    shared = [n for n in g_f if n != "subspace.mask_logits"]
    assert set(shared) == {n for n in g_c if n != "subspace.mask_logits"} and any("head" in n for n in shared)
    for name in shared:  # backbone, expander, uncertainty heads
        assert torch.allclose(g_f[name], g_c[name], rtol=1e-5, atol=1e-7), name
    summed = g_f["subspace.mask_logits"].sum(dim=1, keepdim=True)  # d(loss)/dφ_k = Σ_j d(loss)/dφ_kj
    assert torch.allclose(summed, g_c["subspace.mask_logits"], rtol=1e-5, atol=1e-8)
    assert torch.equal(full.masks(), ctrl.masks())

    with torch.no_grad():  # the comparison can fail: unequal per-dimension logits give another loss
        full.subspace.mask_logits.add_(torch.linspace(-2, 2, D))
    assert not torch.allclose(run(full, b)[0]["loss"], out_c["loss"], rtol=1e-4)


def test_mask_forms_shapes_budget_and_reports():
    for form, width in (("dims", D), ("tied", 1), ("budget", D), ("budget_tied", 1)):
        m = model(form)
        assert m.subspace.mask_logits.shape == (3, width) and m.masks().shape == (3, D)
        m0 = m.masks()
        assert torch.allclose(m0, torch.full_like(m0, float(torch.sigmoid(torch.tensor(3.0)))), atol=1e-6), form
        state = m.mast_state()
        assert state["masks"] == form and state["mask_logits"].shape == (3, D)  # reports read [K, d] logit(m)
        assert torch.allclose(torch.sigmoid(state["mask_logits"]), m0, atol=1e-6)
    budget = model("budget")
    with torch.no_grad():
        budget.subspace.mask_logits.normal_(0, 3)
    free = 1 - budget.masks()
    assert (free.sum(0) < 1).all() and (free > 0).all()  # Σ_k (1 − m_kj) < 1: the dimensions' relief is shared
    with pytest.raises(ValueError, match="model.masks: expected one of"):
        MethodConfig(masks="per-dim")


def test_w_eff_is_the_factor_that_weakens_vicregs_invariance_term():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    u, masks = torch.rand(32, 3, generator=g) * 4, torch.rand(3, 8, generator=g)
    out = objective(z1, z2, LossConfig(), u=u, masks=masks)
    mse = torch.nn.functional.mse_loss(z1, z2)
    assert torch.allclose(out["inv"], out["w_eff"] * mse, rtol=1e-5)  # eq. (4): L_inv = w_eff · mse
    assert not torch.allclose(out["w_eff"], out["w_mean"], rtol=1e-3)
    ones = objective(z1, z2, LossConfig(), u=torch.zeros(32, 3), masks=masks)
    assert float(ones["w_eff"]) == pytest.approx(1.0)
