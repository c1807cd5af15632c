"""Backbone, expander, subspace masks and uncertainty heads (METHOD.md §2); one model for VICReg and MAST.

A method takes its encoder, as moco-v3's builder does: :class:`MAST` wraps ANY backbone f and
expander g (modules) with the loss of eq. (6); :class:`MASTModel` is its use on a torchvision ResNet
(the pretraining trainer's model). θ and δ come from any source that supplies them per pair
(:class:`PairBatch`: the image pipeline's ``AugmentedBatch`` is one, ``benchmarks/mechanism.py``'s
synthetic factors another).

API (stable, the trainer codes against it)::

    MethodConfig(method, uncertainty, masks, mask_init_logit, head_hidden, tau, u_bar_momentum)
    ModelConfig(MethodConfig's fields..., arch, expander, zero_init_residual)   # a MethodConfig on a ResNet
    model = MASTModel(ModelConfig, LossConfig, AugmentConfig)            # ResNet + VICReg expander
    model = MAST(backbone, expander, dim, param_slices, MethodConfig, LossConfig)   # any encoder
    out = model(batch: PairBatch)   # dict: "loss" (eq. 6, backprop this); detached "inv", "var",
                                         # "cov", "unc", "mask_prior"; MAST only: "u_mean" [K],
                                         # "subspace_size" [K], "mask_mean" [K], "w_min", "w_mean", "w_max"
    model.main_parameters()      # backbone + expander (LARS)
    model.subspace_parameters()  # masks φ + uncertainty heads h (own Adam, METHOD §2); [] for vicreg
    model.sensitivities() [K,d] (eq. 1'); model.subspaces() bool [K,d]; model.masks() [K,d]
    model.subspace.effective_logits() [K,d]: logit(m), what mast_state.pth stores as "mask_logits"
    model.uncertainty(theta1, theta2, delta) -> u [N,K] (eq. 1)
    model.mast_state() -> dict for mast_state.pth (without "heldout"/"config")
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torchvision
from torch import Tensor, nn

from mast.augment import AugmentConfig, param_layout
from mast.loss import LossConfig, float32_region, objective

# torchvision's ResNets; their block table lives in transfer.backbones.resnet.load.RESNET_LAYERS, not here.
ARCHS = tuple(sorted((n for n in torchvision.models.list_models(torchvision.models) if n.startswith("resnet")),
                     key=lambda n: int(n.removeprefix("resnet"))))


class PairBatch(Protocol):
    """Two views and what made them, per pair: x1, x2 [N, ...]; θ¹, θ² [N, P] (columns per augmentation
    as the model's ``param_slices``); δ [N, K] in [0, 1] (METHOD.md §1). ``AugmentedBatch`` is one."""

    x1: Tensor
    x2: Tensor
    theta1: Tensor
    theta2: Tensor
    delta: Tensor


#: How the masks m_kj of eq. (2) are parametrised (``model.masks``). Only "dims" is METHOD.md's method.
#: - "dims":   φ [K, d], m_kj = sigmoid(φ_kj) (METHOD.md §2: each augmentation chooses its dimensions);
#: - "tied":   φ [K, 1], m_kj = sigmoid(φ_k) for every j: one relief weight per augmentation, the same
#:             uncertainty head. The control that removes exactly the per-dimension choice (issue 35).
#: - "budget": φ [K, d], 1 − m_kj = softmax_k([φ_1j, ..., φ_Kj, 0]): the reliefs of one dimension share a
#:             budget, Σ_k (1 − m_kj) < 1, so augmentations compete for dimensions (a variant designed to make
#:             the per-dimension choice matter; docs/MECHANISM.md says why);
#: - "budget_tied": the same softmax with φ [K, 1]: the budget variant's own tied-mask control.
MASK_FORMS = ("dims", "tied", "budget", "budget_tied")


@dataclass
class MethodConfig:
    """The method's own settings (METHOD.md §2), independent of the encoder."""

    method: str = "mast"  # "vicreg" | "mast"
    uncertainty: str = "head"  # "head" (h_k MLPs) | "none" (one scalar a_k per augmentation)
    masks: str = "dims"  # MASK_FORMS: "dims" is METHOD.md §2 (the default); the others are controls/variants
    mask_init_logit: float = 3.0  # m ≈ 0.95 at start, close to VICReg
    head_hidden: int = 32
    tau: float = 0.5  # subspace threshold of eq. (1')
    u_bar_momentum: float = 0.99  # running mean ū_k of eq. (1')

    def __post_init__(self) -> None:
        if self.masks not in MASK_FORMS:
            raise ValueError(f"model.masks: expected one of {list(MASK_FORMS)}, got {self.masks!r}")
        if self.method not in ("vicreg", "mast"):
            raise ValueError(f"model.method: expected 'vicreg' or 'mast', got {self.method!r}")
        if self.uncertainty not in ("head", "none"):
            raise ValueError(f"model.uncertainty: expected 'head' or 'none', got {self.uncertainty!r}")
        if not (0.0 <= self.u_bar_momentum < 1.0 and self.tau > 0 and self.head_hidden >= 1):
            raise ValueError("model: expected 0 <= u_bar_momentum < 1, tau > 0, head_hidden >= 1")


@dataclass
class ModelConfig(MethodConfig):
    """The trainer's model: the method's settings (:class:`MethodConfig`) on a torchvision ResNet with a
    VICReg expander. YAML section ``model:``; its ``method`` comes from the config's top-level ``method``."""

    arch: str = "resnet50"
    expander: tuple[int, ...] = (8192, 8192, 8192)
    zero_init_residual: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.expander = tuple(int(x) for x in self.expander)
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch: expected one of {list(ARCHS)}, got {self.arch!r}")
        if not self.expander or min(self.expander) < 1:
            raise ValueError(f"model.expander: expected positive layer widths, got {list(self.expander)}")


def build_expander(in_dim: int, widths: tuple[int, ...]) -> nn.Sequential:
    """VICReg projector: Linear-BN-ReLU blocks, last Linear without bias (METHOD §2)."""
    dims = [in_dim, *widths]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
    return nn.Sequential(*layers)


class UncertaintyHeads(nn.Module):
    """All K heads h_k: [θ_k¹, θ_k², |θ_k¹ − θ_k²|] → hidden → 1, evaluated at once (no loop over k).

    Each op's parameters are padded to P_max with zeros, so padded inputs never contribute.
    """

    def __init__(self, slices: dict[str, slice], hidden: int) -> None:
        super().__init__()
        sizes = [s.stop - s.start for s in slices.values()]
        k, p = len(sizes), max(sizes)
        total = sum(sizes)
        index = torch.full((k, p), total, dtype=torch.long)  # ``total`` = the appended zero column
        for i, s in enumerate(slices.values()):
            index[i, : s.stop - s.start] = torch.arange(s.start, s.stop)
        self.register_buffer("index", index, persistent=False)
        self.w1 = nn.Parameter(torch.empty(k, 3 * p, hidden))
        self.b1 = nn.Parameter(torch.empty(k, hidden))
        self.w2 = nn.Parameter(torch.empty(k, hidden))
        self.b2 = nn.Parameter(torch.zeros(k))
        for i, size in enumerate(sizes):  # nn.Linear's default init, with each head's true fan-in
            bound1, bound2 = 1 / math.sqrt(3 * size), 1 / math.sqrt(hidden)
            nn.init.uniform_(self.w1.data[i], -bound1, bound1)
            nn.init.uniform_(self.b1.data[i], -bound1, bound1)
            nn.init.uniform_(self.w2.data[i], -bound2, bound2)

    def forward(self, theta1: Tensor, theta2: Tensor) -> Tensor:
        """Raw head outputs h_k(θ¹, θ²) [N, K] (before softplus)."""
        pad = theta1.new_zeros(theta1.shape[0], 1)
        a = torch.cat([theta1, pad], 1)[:, self.index]  # [N, K, P]
        b = torch.cat([theta2, pad], 1)[:, self.index]
        feats = torch.cat([a, b, (a - b).abs()], dim=2)
        hidden = torch.relu(torch.einsum("nki,kih->nkh", feats, self.w1) + self.b1)
        return torch.einsum("nkh,kh->nk", hidden, self.w2) + self.b2


class ConstantUncertainty(nn.Module):
    """Ablation ``uncertainty: none``: h_k ≡ a_k, one learned scalar per augmentation."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(k))

    def forward(self, theta1: Tensor, theta2: Tensor) -> Tensor:
        return self.a.expand(theta1.shape[0], -1)


def batch_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson r per column of two [N, K] tensors (the training log's u_k vs δ_k); NaN where a column
    is constant (r undefined, e.g. an augmentation whose δ_k is the same for the whole batch)."""
    a, b = a - a.mean(dim=0), b - b.mean(dim=0)
    norm = (a.pow(2).sum(dim=0) * b.pow(2).sum(dim=0)).sqrt()
    return torch.where(norm > 0, (a * b).sum(dim=0) / norm.clamp(min=1e-30), torch.full_like(norm, math.nan))


def sensitivities(u_bar: Tensor, mask_logits: Tensor) -> Tensor:
    """Eq. (1'): e_kj = ū_k · (1 − m_kj) with m = sigmoid(φ), [K, d] (also read by reports/ from mast_state.pth)."""
    return u_bar[:, None] * (1.0 - torch.sigmoid(mask_logits))


class SubspaceModule(nn.Module):
    """Mask logits φ [K, d] and uncertainty heads h (METHOD §2), plus the running mean ū_k."""

    def __init__(self, cfg: MethodConfig, slices: dict[str, slice], dim: int) -> None:
        super().__init__()
        self.tau, self.momentum = cfg.tau, cfg.u_bar_momentum
        k = len(slices)
        self.form, self.dim = cfg.masks, dim
        width = 1 if cfg.masks.endswith("tied") else dim  # a tied mask: one logit per augmentation
        init = float(cfg.mask_init_logit)
        if cfg.masks.startswith("budget"):  # the raw logit whose softmax gives 1 − m = 1 − sigmoid(init), capped
            free = min(1.0 - 1.0 / (1.0 + math.exp(-init)), 0.5 / k)
            init = math.log(free / (1.0 - k * free))
        self.mask_logits = nn.Parameter(torch.full((k, width), init))
        self.head = UncertaintyHeads(slices, cfg.head_hidden) if cfg.uncertainty == "head" else ConstantUncertainty(k)
        self.register_buffer("u_bar", torch.zeros(k))
        self.register_buffer("u_bar_count", torch.zeros((), dtype=torch.long))

    def masks(self) -> Tensor:
        """m [K, d] of eq. (2): sigmoid(φ) (METHOD.md §2), broadcast over d when tied, softmax-budgeted
        for the "budget" forms (MASK_FORMS)."""
        phi = self.mask_logits
        if self.form.startswith("budget"):
            logits = torch.cat([phi, phi.new_zeros(1, phi.shape[1])], dim=0)  # row K: "invariant to all"
            m = 1.0 - torch.softmax(logits, dim=0)[:-1]
        else:
            m = torch.sigmoid(phi)
        return m.expand(-1, self.dim)

    def effective_logits(self) -> Tensor:
        """logit(m) [K, d], detached: φ itself for "dims"; what mast_state.pth and every report read
        as ``mask_logits`` (eq. 1', §5: D_k, the logit spread), whatever the form."""
        if self.form == "dims":
            return self.mask_logits.detach()
        m = self.masks().detach().double().clamp(1e-12, 1 - 1e-12)
        return (m.log() - (1 - m).log()).to(self.mask_logits.dtype)

    def uncertainty(self, theta1: Tensor, theta2: Tensor, delta: Tensor) -> Tensor:
        """Eq. (1): u_ik = δ_ik · softplus(h_k(θ_ik¹, θ_ik²)) ≥ 0; exactly 0 where δ_ik = 0."""
        return delta * nn.functional.softplus(self.head(theta1, theta2))

    @torch.no_grad()
    def update_u_bar(self, u: Tensor) -> None:
        """Running mean of ū_k (eq. 1'); the first batch initialises it (no zero bias)."""
        mean = u.detach().float().mean(dim=0)
        first = (self.u_bar_count == 0).float()
        self.u_bar.copy_(first * mean + (1 - first) * (self.momentum * self.u_bar + (1 - self.momentum) * mean))
        self.u_bar_count.add_(1)

    @torch.no_grad()
    def sensitivities(self) -> Tensor:
        """Eq. (1') on this module's ū and masks, [K, d]."""
        return sensitivities(self.u_bar, self.effective_logits())

    def subspaces(self) -> Tensor:
        """S_k = {j : e_kj < τ} as a bool [K, d]."""
        return self.sensitivities() < self.tau


class MAST(nn.Module):
    """Any backbone f and expander g + optional subspaces; forward = eq. (6) (moco-v3 builder style).

    ``dim`` is the width of g's output (the embedding), ``param_slices`` the columns of θ per
    augmentation (its keys name the K augmentations), ``aug_spec`` plain data describing where θ and
    δ came from (stored in mast_state.pth).
    """

    def __init__(self, backbone: nn.Module, expander: nn.Module, dim: int, param_slices: dict[str, slice],
                 method: MethodConfig, loss: LossConfig, aug_spec: dict | None = None) -> None:
        super().__init__()
        if not param_slices or dim < 1:
            raise ValueError(f"MAST: expected >= 1 augmentation and dim >= 1, got {list(param_slices)} and {dim}")
        self.method_cfg, self.loss_cfg, self.aug_spec = method, loss, dict(aug_spec or {})
        self.backbone, self.expander = backbone, expander
        self.param_slices = dict(param_slices)
        self.aug_names = list(param_slices)
        self.subspace = SubspaceModule(method, self.param_slices, dim) if method.method == "mast" else None

    def embed(self, x: Tensor) -> Tensor:
        """z = g(f(x))."""
        return self.expander(self.backbone(x))

    def forward(self, batch: PairBatch) -> dict[str, Tensor]:
        # Two separate passes, as official VICReg (BatchNorm statistics per view).
        z1, z2 = self.embed(batch.x1), self.embed(batch.x2)
        if self.subspace is None:
            return objective(z1, z2, self.loss_cfg)
        with float32_region(z1.device):
            u = self.uncertainty(batch.theta1, batch.theta2, batch.delta)
            masks = self.subspace.masks()
        if self.training:
            self.subspace.update_u_bar(u)
        out = objective(z1, z2, self.loss_cfg, u=u, masks=masks)
        out["u_mean"] = u.detach().mean(dim=0)
        out["u_delta_corr"] = batch_correlation(u.detach(), batch.delta.detach().float())
        out["mask_mean"] = masks.detach().mean(dim=1)
        out["mask_logit_spread"] = self.subspace.effective_logits().float().std(dim=1)
        out["subspace_size"] = self.subspace.subspaces().sum(dim=1)
        return out

    def _require_subspace(self) -> SubspaceModule:
        if self.subspace is None:
            raise ValueError("model.method is 'vicreg': there are no subspaces, masks or uncertainties")
        return self.subspace

    def uncertainty(self, theta1: Tensor, theta2: Tensor, delta: Tensor) -> Tensor:
        """u [N, K], eq. (1), in float32."""
        return self._require_subspace().uncertainty(theta1.float(), theta2.float(), delta.float())

    def masks(self) -> Tensor:
        return self._require_subspace().masks()

    def sensitivities(self) -> Tensor:
        return self._require_subspace().sensitivities()

    def subspaces(self) -> Tensor:
        return self._require_subspace().subspaces()

    def main_parameters(self) -> list[nn.Parameter]:
        """Backbone + expander parameters (trained by L_inv, v and c; the LARS optimizer)."""
        return list(self.backbone.parameters()) + list(self.expander.parameters())

    def subspace_parameters(self) -> list[nn.Parameter]:
        """Masks φ and heads h (trained by L_unc and L_mask only; their own Adam, METHOD §2)."""
        return [] if self.subspace is None else list(self.subspace.parameters())

    def mast_state(self) -> dict:
        """mast_state.pth content (weights_only-loadable), without "heldout" and "config"."""
        cfg = self.method_cfg
        state: dict = {"method": cfg.method, "aug_names": list(self.aug_names), "tau": float(cfg.tau),
                       "uncertainty": cfg.uncertainty, "masks": cfg.masks, "aug_spec": dict(self.aug_spec)}
        if self.subspace is not None:
            state.update(mask_logits=self.subspace.effective_logits().cpu().clone(),
                         u_bar=self.subspace.u_bar.detach().cpu().clone(),
                         uncertainty_state={k: v.detach().cpu().clone()
                                            for k, v in self.subspace.head.state_dict().items()})
        return state


class MASTModel(MAST):
    """The trainer's model: f = torchvision ResNet (fc = Identity), g = VICReg expander (METHOD §2)."""

    def __init__(self, cfg: ModelConfig, loss: LossConfig, aug: AugmentConfig) -> None:
        backbone = torchvision.models.get_model(cfg.arch, weights=None, zero_init_residual=cfg.zero_init_residual)
        feat_dim = backbone.fc.in_features
        backbone.fc = nn.Identity()
        super().__init__(backbone, build_expander(feat_dim, cfg.expander), cfg.expander[-1], param_layout(aug.ops),
                         cfg, loss, aug.spec())
        self.cfg, self.aug_cfg = cfg, aug
