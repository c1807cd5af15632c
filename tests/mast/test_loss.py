"""METHOD.md §4 properties of the loss (eqs. 1-6) and its reduction to official VICReg."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mast.augment import AugmentConfig, AugmentedBatch, PhotometricAugment, discrepancy, param_layout
from mast.loss import (LossConfig, covariance, invariance, invariance_weights, mismatch_factor, objective,
                       uncertainty_fit, variance)
from mast.model import MASTModel, ModelConfig, SubspaceModule, UncertaintyHeads



pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


# --- reference: official VICReg (facebookresearch/vicreg main_vicreg.py), written out inline -------------
def ref_off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def ref_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = ref_off_diagonal(cov_x).pow_(2).sum().div(num_features) + ref_off_diagonal(cov_y).pow_(
        2).sum().div(num_features)
    loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
    return loss, repr_loss, std_loss, cov_loss


# --- helpers ---------------------------------------------------------------------------------------------
AUG = AugmentConfig(size=16)


def make_batch(n: int, seed: int = 0, aug: AugmentConfig = AUG) -> AugmentedBatch:
    g = torch.Generator().manual_seed(seed)
    views = torch.randint(0, 256, (n, 2, 3, aug.size, aug.size), dtype=torch.uint8, generator=g)
    spatial = torch.rand(n, 2, 5, generator=g)
    spatial[..., 2:4] = 0.3 + 0.7 * spatial[..., 2:4]
    spatial[..., 4] = (spatial[..., 4] > 0.5).float()
    return PhotometricAugment(aug)(views, spatial, generator=g)


def tiny_model(method: str = "mast", uncertainty: str = "head", expander=(32, 32), seed: int = 0) -> MASTModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="resnet18", expander=expander, method=method, uncertainty=uncertainty,
                      zero_init_residual=False)
    return MASTModel(cfg, LossConfig(), AUG)


def main_grads(model: MASTModel) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.main_parameters()]


# --- VICReg terms ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d", [(8, 16), (64, 128), (5, 300)])
def test_vicreg_terms_equal_official_formulas(n, d):
    torch.manual_seed(n * d)
    z1, z2 = torch.randn(n, d) * 0.7, torch.randn(n, d) * 1.3 + 0.2
    loss_ref, inv_ref, std_ref, cov_ref = ref_vicreg(z1, z2)
    assert torch.equal(invariance(z1, z2), inv_ref)
    torch.testing.assert_close(variance(z1) / 2 + variance(z2) / 2, std_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(covariance(z1) + covariance(z2), cov_ref, rtol=1e-6, atol=1e-7)
    out = objective(z1, z2, LossConfig())
    torch.testing.assert_close(out["loss"], loss_ref, rtol=1e-6, atol=1e-6)
    assert out["unc"] == 0 and out["mask_prior"] == 0


@pytest.mark.parametrize("case", ["masks_at_one", "delta_zero", "vicreg"])
def test_u_zero_reduces_to_official_vicreg(case):
    model = tiny_model("vicreg" if case == "vicreg" else "mast")
    batch = make_batch(6)
    if case == "masks_at_one":
        model.subspace.mask_logits.data.fill_(100.0)  # sigmoid == 1.0 exactly in float32
        assert torch.equal(model.masks(), torch.ones_like(model.masks()))
    elif case == "delta_zero":
        batch.delta = torch.zeros_like(batch.delta)
    ref_model = copy.deepcopy(model)
    out = model(batch)
    out["loss"].backward()
    z1, z2 = ref_model.embed(batch.x1), ref_model.embed(batch.x2)
    loss_ref, inv_ref, _, _ = ref_vicreg(z1, z2)
    loss_ref.backward()
    assert torch.equal(out["inv"], inv_ref.detach())  # L_inv == F.mse_loss exactly
    if case != "vicreg":
        assert out["w_min"] == 1.0 and out["w_mean"] == 1.0 and out["w_max"] == 1.0  # w ≡ 1
        u = model.uncertainty(batch.theta1, batch.theta2, batch.delta)
        q = mismatch_factor(u, model.masks())
        assert torch.equal(q, torch.ones_like(q))
    for g, g_ref in zip(main_grads(model), main_grads(ref_model)):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-6)


# --- eq. (1) -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uncertainty", ["head", "none"])
def test_u_is_zero_when_an_op_acted_identically(uncertainty):
    model = tiny_model("mast", uncertainty)
    batch = make_batch(32, seed=1)
    for k, (op, sl) in enumerate(param_layout(AUG.ops).items()):
        theta2 = batch.theta2.clone()
        theta2[:, sl] = batch.theta1[:, sl]
        delta = discrepancy(batch.theta1, theta2, AUG)
        u = model.uncertainty(batch.theta1, theta2, delta)
        assert torch.equal(u[:, k], torch.zeros(32)), op
        others = torch.cat([u[:, :k], u[:, k + 1:]], 1)
        assert (others >= 0).all() and (others > 0).any()
    if uncertainty == "none":  # ablation: u_ik = δ_ik · softplus(a_k)
        a = model.subspace.head.a
        expected = batch.delta * F.softplus(a)
        torch.testing.assert_close(model.uncertainty(batch.theta1, batch.theta2, batch.delta), expected)


# --- scale invariance of eq. (3) and (4) -------------------------------------------------------------------
def test_scale_invariance_of_uncertainty_fit_and_weights():
    torch.manual_seed(0)
    slices = {"a": slice(0, 2), "b": slice(2, 3), "c": slice(3, 8)}
    # float64: the property is exact up to ε of eq. (3); float32 cancellation would blur the comparison
    sub = SubspaceModule(ModelConfig(arch="resnet18", expander=(16,)), slices, dim=16).double()
    sub.mask_logits.data.normal_(0.0, 2.0)
    theta1, theta2 = torch.rand(40, 8, dtype=torch.float64), torch.rand(40, 8, dtype=torch.float64)
    delta = torch.rand(40, 3, dtype=torch.float64)
    r = torch.randn(40, 16, dtype=torch.float64) * torch.linspace(0.1, 3.0, 16, dtype=torch.float64)

    def grads_and_w(scale: float):
        sub.zero_grad()
        q = mismatch_factor(sub.uncertainty(theta1, theta2, delta), sub.masks())
        uncertainty_fit(r * scale, q).backward()
        return [p.grad.clone() for p in sub.parameters()], invariance_weights(q)

    base, w = grads_and_w(1.0)
    for scale in (0.05, 7.0, 1e3):  # far from ε = 1e-12 of eq. (3)
        grads, w_scaled = grads_and_w(scale)
        assert torch.equal(w, w_scaled)
        for g, g0 in zip(grads, base):
            torch.testing.assert_close(g, g0, rtol=1e-6, atol=1e-6 * g0.abs().max().item())
    # the same through the full objective: w (via its extremes) ignores the embedding's scale
    z1, z2 = torch.randn(40, 16), torch.randn(40, 16)
    u = sub.uncertainty(theta1, theta2, delta).detach().float()
    o1 = objective(z1, z2, LossConfig(), u=u, masks=sub.masks().detach().float())
    o2 = objective(50 * z1, 50 * z2, LossConfig(), u=u, masks=sub.masks().detach().float())
    for key in ("w_min", "w_mean", "w_max"):
        assert o1[key] == o2[key], key
    assert 0 < o1["w_min"] < o1["w_mean"] < o1["w_max"] <= 1


# --- identifiability toy (METHOD §4) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def identifiability_toy():
    """Masks and heads fitted by (3)+(5) on METHOD §4's synthetic residuals; returns (m, w, δ)."""
    g = torch.Generator().manual_seed(0)
    n, d, k = 512, 64, 3
    theta1, theta2 = torch.rand(n, k, generator=g), torch.rand(n, k, generator=g)
    delta = (theta1 - theta2).abs()
    noise = lambda: torch.randn(n, d, generator=g)  # noqa: E731
    r = 0.1 * noise()
    r[:, 0:10] += 2 * delta[:, 0:1] * noise()[:, 0:10]
    r[:, 10:20] += 2 * delta[:, 1:2] * noise()[:, 10:20]
    r[:, 20:25] += (delta[:, 0:1] + delta[:, 1:2]) * noise()[:, 20:25]
    torch.manual_seed(0)
    slices = {str(i): slice(i, i + 1) for i in range(k)}
    sub = SubspaceModule(ModelConfig(arch="resnet18", expander=(d,), mask_init_logit=3.0), slices, dim=d)
    opt = torch.optim.Adam(sub.parameters(), lr=1e-2)
    for _ in range(1500):
        opt.zero_grad(set_to_none=True)
        masks = sub.masks()
        q = mismatch_factor(sub.uncertainty(theta1, theta2, delta), masks)
        loss = uncertainty_fit(r, q) + 0.01 * (1 - masks).mean()  # (3) + ρ·(5)
        loss.backward()
        opt.step()
    m = sub.masks().detach()
    with torch.no_grad():
        w = invariance_weights(mismatch_factor(sub.uncertainty(theta1, theta2, delta), m))
    return m, w, delta


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return _pearson(a.argsort().argsort().float(), b.argsort().argsort().float())


def test_identifiability_toy_masks(identifiability_toy):
    m, _, _ = identifiability_toy
    assert (m[0, 0:10] < 0.5).all() and (m[0, 10:20] > 0.9).all(), m[0, :25]
    assert (m[1, 10:20] < 0.5).all() and (m[1, 0:10] > 0.9).all(), m[1, :25]
    assert (m[0, 20:25] < 0.9).all() and (m[1, 20:25] < 0.9).all(), m[:2, 20:25]
    assert (m[2] > 0.9).all(), m[2]


def test_identifiability_toy_weights(identifiability_toy):
    """v2: w relieves the dimensions augmentation 1 drives (dims 0-9: w falls as δ_1 grows) and
    leaves the dimensions of S_1 (dims 10-19, driven by augmentation 2 only) independent of δ_1."""
    _, w, delta = identifiability_toy
    driven, invariant = w[:, 0:10].mean(1), w[:, 10:20].mean(1)
    assert _pearson(driven, delta[:, 0]) < -0.5 and _spearman(driven, delta[:, 0]) < -0.9
    assert abs(_pearson(invariant, delta[:, 0])) < 0.1, _pearson(invariant, delta[:, 0])
    assert abs(_spearman(invariant, delta[:, 0])) < 0.1, _spearman(invariant, delta[:, 0])
    assert _spearman(invariant, delta[:, 1]) < -0.9  # ... while they are relieved of augmentation 2


def test_weights_are_inverse_mismatch_without_normalisation():
    """Eq. (4) v2: w = 1/q exactly, in (0, 1]; an augmentation that acts on every pair lowers w in the
    dimensions it may disturb for every pair (v1's per-dimension mean-1 normalisation could not)."""
    u = torch.full((16, 2), 2.0)
    u[:, 1] = 0.0                      # augmentation 2 acted identically on every pair
    masks = torch.ones(2, 4)
    masks[0, :2] = 0.5                 # augmentation 1 may disturb dims 0-1
    masks[1, 2] = 0.0                  # augmentation 2 could disturb dim 2, but u_i2 = 0
    w = invariance_weights(mismatch_factor(u, masks))
    torch.testing.assert_close(w[:, :2], torch.full((16, 2), 0.5))  # 1 / (1 + 0.5 · 2)
    assert torch.equal(w[:, 2:], torch.ones(16, 2))
    q = mismatch_factor(torch.rand(32, 3) * 5, torch.rand(3, 8))
    assert torch.equal(invariance_weights(q), q.reciprocal())
    assert not invariance_weights(q).requires_grad
    z1, z2 = torch.randn(16, 4), torch.randn(16, 4)
    out = objective(z1, z2, LossConfig(), u=u, masks=masks)
    torch.testing.assert_close(out["w_mean"], w.mean())
    assert out["w_min"] == 0.5 and out["w_max"] == 1.0


# --- gradients -----------------------------------------------------------------------------------------------
def test_gradients_flow_to_backbone_expander_masks_and_heads():
    model = tiny_model("mast", expander=(64, 128))
    out = model(make_batch(4, seed=3))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    for name, params in [("backbone", model.backbone.parameters()), ("expander", model.expander.parameters()),
                         ("masks", [model.subspace.mask_logits]), ("heads", model.subspace.head.parameters())]:
        grads = [p.grad for p in params]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


@pytest.mark.slow  # one 8192 x 8192 covariance (VICReg's formula), forward and backward
def test_gradients_finite_for_d8192_n2():
    torch.manual_seed(0)
    slices = param_layout(AUG.ops)
    sub = SubspaceModule(ModelConfig(arch="resnet18", expander=(8192,)), slices, dim=8192)
    batch = make_batch(2, seed=5)
    z1, z2 = torch.randn(2, 8192, requires_grad=True), torch.randn(2, 8192, requires_grad=True)
    u = sub.uncertainty(batch.theta1, batch.theta2, batch.delta)
    out = objective(z1, z2, LossConfig(), u=u, masks=sub.masks())
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    grads = [z1.grad, z2.grad] + [p.grad for p in sub.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sub.mask_logits.grad.abs().sum() > 0 and sub.head.w1.grad.abs().sum() > 0


@pytest.mark.parametrize("uncertainty", ["head", "none"])
def test_gradients_finite_for_all_zero_embedding(uncertainty):
    model = tiny_model("mast", uncertainty, expander=(16, 32))
    torch.nn.init.zeros_(model.expander[-1].weight)
    out = model(make_batch(4, seed=4))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["inv"] == 0
    for p in list(model.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    z = torch.zeros(8, 256, requires_grad=True)
    u = torch.rand(8, 6, requires_grad=True)
    phi = torch.zeros(6, 256, requires_grad=True)
    out = objective(z, z, LossConfig(), u=u, masks=torch.sigmoid(phi))
    out["loss"].backward()
    assert all(torch.isfinite(t.grad).all() for t in (z, u, phi))


# --- ablations and model API ---------------------------------------------------------------------------------
def test_ablations_by_config():
    vic, none, full = tiny_model("vicreg"), tiny_model("mast", "none"), tiny_model("mast", "head")
    assert vic.subspace is None and vic.subspace_parameters() == []
    assert "u_mean" not in vic(make_batch(4))
    assert set(vic.mast_state()) == {"method", "aug_names", "tau", "uncertainty", "masks", "aug_spec"}
    with pytest.raises(ValueError, match="vicreg"):
        vic.sensitivities()
    assert [p.shape for p in none.subspace_parameters()] == [torch.Size([6, 32]), torch.Size([6])]
    assert isinstance(full.subspace.head, UncertaintyHeads)
    n_main = len(full.main_parameters())
    assert n_main + len(full.subspace_parameters()) == len(list(full.parameters()))
    out = full(make_batch(8))
    assert out["u_mean"].shape == (6,) and out["subspace_size"].shape == (6,)
    torch.testing.assert_close(full.subspace.u_bar, out["u_mean"])  # first batch initialises ū
    e = full.sensitivities()
    torch.testing.assert_close(e, full.subspace.u_bar[:, None] * (1 - full.masks()))  # eq. (1')
    assert torch.equal(full.subspaces(), e < 0.5)
    state = full.mast_state()
    assert state["mask_logits"].shape == (6, 32) and state["aug_names"] == list(AUG.ops)
    with pytest.raises(ValueError, match="model.method"):
        ModelConfig(method="simclr")


def test_bf16_autocast_keeps_loss_float32():
    model = tiny_model("mast")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch(4))  # augmentation inside autocast too: it keeps float32
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(model.subspace.mask_logits.grad).all()
