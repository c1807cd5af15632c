"""Optimizers and the learning-rate schedule of the VICReg recipe (PROTOCOLS.md, pretraining).

LARS follows facebookresearch/vicreg ``main_vicreg.py``: biases and normalisation parameters
(every 1-D parameter) are excluded from weight decay and from the LARS trust ratio. The
exclusion is expressed as two parameter groups (``lars_exclude`` False/True) rather than filter
callables, so the optimizer state_dict holds plain values and loads with ``weights_only=True``.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from mast.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum, weight decay and the layer-wise trust ratio of LARS.

    Per parameter p with gradient g: ``g += wd * p`` and ``g *= eta * |p| / |g|`` (when both
    norms are positive) unless the group has ``lars_exclude=True``; then ``mu = momentum * mu + g``
    and ``p -= lr * mu``.
    """

    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001, lars_exclude: bool = False) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim API)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if not group["lars_exclude"]:
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0.0,
                                                group["eta"] * param_norm / update_norm, one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])
        return loss


def exclude_bias_and_norm(p: torch.Tensor) -> bool:
    """True for biases and BatchNorm/LayerNorm weights (VICReg's filter: 1-D parameters)."""
    return p.ndim == 1


def split_decay(params: Iterable[torch.Tensor]) -> tuple[list, list]:
    """(weights that get weight decay / LARS adaptation, 1-D params that are excluded)."""
    regular, excluded = [], []
    for p in params:
        if p.requires_grad:
            (excluded if exclude_bias_and_norm(p) else regular).append(p)
    return regular, excluded


def build_optimizer(params: Iterable[torch.Tensor], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Main optimizer over backbone + expander parameters (LARS or AdamW, same exclusion)."""
    regular, excluded = split_decay(params)
    if cfg.name == "lars":
        groups = [dict(params=regular, lars_exclude=False),
                  dict(params=excluded, lars_exclude=True, weight_decay=0.0)]
        return LARS(groups, lr=0.0, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                    eta=cfg.eta)
    groups = [dict(params=regular), dict(params=excluded, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_subspace_optimizer(params: Iterable[torch.Tensor], cfg: OptimConfig) -> torch.optim.Optimizer | None:
    """Adam (lr ``subspace_lr``, no weight decay) for masks and uncertainty heads (METHOD.md §2);
    None when the method has no such parameters (``vicreg``)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return None
    return torch.optim.Adam(params, lr=cfg.subspace_lr, weight_decay=0.0)


def peak_lr(cfg: OptimConfig) -> float:
    """lr = base_lr * global batch / 256 (VICReg's scaling rule)."""
    return cfg.base_lr * cfg.batch_size / 256


def learning_rate(cfg: OptimConfig, step: int, steps_per_epoch: int) -> float:
    """VICReg's schedule: linear warm-up from 0 over ``warmup_epochs``, then cosine from the
    peak to ``peak * final_lr_ratio`` at the last step."""
    base = peak_lr(cfg)
    max_steps = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return base * step / warmup
    end = base * cfg.final_lr_ratio
    span = max(max_steps - warmup, 1)
    q = 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))
    return base * q + end * (1 - q)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
