"""The held-out pass stored in ``mast_state.pth``: what the trained model says about unseen pairs.

METHOD.md §5's "uncertainty against augmentation strength" plot reads it (reports/mast_plots.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mast.data.folder import TwoViewFolder, sample_seed
from mast.loss import invariance_weights, mismatch_factor


@torch.no_grad()
def heldout_pass(model: torch.nn.Module, photometric: torch.nn.Module, files: list[Path], root: Path,
                 transform: Any, n: int, seed: int, device: torch.device, source: str) -> dict:
    """δ, u (eq. 1) and each pair's mean invariance weight w (eq. 4, mean over dimensions) for ``n``
    image pairs not used for training (METHOD.md §5 reports); "w_mean" = the mean of w over them."""
    if n == 0 or not files:
        return {"delta": torch.zeros(0, len(model.aug_names)), "source": source}
    files = files[:: max(1, len(files) // n)][:n]
    dataset = TwoViewFolder(root, transform, files=files)
    deltas, us, ws = [], [], []
    for start in range(0, len(files), 256):
        items = [dataset[(i, sample_seed(2, seed, i))]
                 for i in range(start, min(start + 256, len(files)))]
        views = torch.stack([it[0] for it in items]).to(device)
        spatial = torch.stack([it[1] for it in items]).to(device)
        gen = torch.Generator(device=device).manual_seed(sample_seed(3, seed, start))
        batch = photometric(views, spatial, generator=gen)
        deltas.append(batch.delta.float().cpu())
        if model.subspace is not None:
            u = model.uncertainty(batch.theta1, batch.theta2, batch.delta).float()
            us.append(u.cpu())
            ws.append(invariance_weights(mismatch_factor(u, model.masks().float())).mean(dim=1).cpu())
    out = {"delta": torch.cat(deltas), "source": source}
    if us:
        out["u"], out["w_pair"] = torch.cat(us), torch.cat(ws)
        out["w_mean"] = float(out["w_pair"].mean())
    return out
