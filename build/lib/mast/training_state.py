"""Atomic checkpoint writing and the training state needed to resume exactly.

``last.pth`` holds model, both optimizers, the grad scaler, the schedule position (global step,
from which epoch and sampler position follow), RNG states and the resolved config. Every file is
written to a temp file in the same directory and moved into place with ``os.replace``, so a run
killed at any moment leaves the previous complete file (or the new one), never a torn one.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from plumbing.atomic import torch_save_atomic

from mast.config import ConfigError, config_diff


class ResumeError(RuntimeError):
    """A ``last.pth`` that cannot be resumed from (one-line message naming the file)."""


def rng_state() -> dict:
    """Snapshot of every RNG the loop draws from (python, numpy, torch CPU and CUDA), as tensors
    and plain numbers only, so that ``last.pth`` loads with ``weights_only=True``."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore a snapshot made by :func:`rng_state`."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["mt"].tolist()), py["gauss"]))
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        subspace_optimizer: torch.optim.Optimizer | None,
                        scaler: torch.amp.GradScaler | None, step: int, epoch: int,
                        config: dict, world_size: int, extra: dict | None = None) -> None:
    """Write ``last.pth`` atomically. ``step`` = optimizer steps done (the schedule position);
    ``epoch`` = epochs completed; the sampler position is ``step`` mod steps-per-epoch."""
    torch_save_atomic(path, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "subspace_optimizer": subspace_optimizer.state_dict() if subspace_optimizer else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step, "epoch": epoch, "world_size": world_size,
        "rng": rng_state(), "config": config, "extra": extra or {},
    })


def load_training_state(path: Path, config: dict, world_size: int) -> dict:
    """Load ``last.pth`` and check it belongs to this run: same config (up to
    ``config.RESUME_MAY_DIFFER``) and same world size; one-line errors otherwise."""
    path = Path(path)
    try:  # tensors and plain containers only: a planted file cannot run code (rng_state is tensors)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ResumeError(f"{path}: cannot be read as a mast.pretrain checkpoint with tensors only "
                              f"({type(exc).__name__}); a file from another program or version?") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ResumeError(f"{path}: not a mast.pretrain last.pth (no model/config)")
    diff = config_diff(ckpt["config"], config)
    if diff:
        shown = ", ".join(diff[:8]) + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else "")
        raise ConfigError(f"--resume {path}: checkpoint was written with a different config; "
                          f"differing keys: {shown}")
    if ckpt.get("world_size", world_size) != world_size:
        raise ResumeError(f"--resume {path}: written with {ckpt['world_size']} processes, "
                              f"this run has {world_size}; resume with the same world size")
    return ckpt


def restore(ckpt: dict, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            subspace_optimizer: torch.optim.Optimizer | None,
            scaler: torch.amp.GradScaler | None) -> None:
    """Load a checkpoint's states into live objects (strict: every key must match)."""
    model.load_state_dict(ckpt["model"], strict=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    if subspace_optimizer is not None and ckpt.get("subspace_optimizer") is not None:
        subspace_optimizer.load_state_dict(ckpt["subspace_optimizer"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])


def backbone_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plain torchvision-layout state_dict of a ResNet backbone (no ``fc.*``; CPU, contiguous)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()
            if not k.startswith("fc.")}
