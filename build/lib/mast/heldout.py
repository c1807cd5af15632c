"""The held-out pass stored in ``mast_state.pth``: what the trained model says about unseen pairs.

METHOD.md §5's "uncertainty against augmentation strength" plot and the mask differentiation D_k
(:mod:`mast.differentiation`) read it (reports/mast_plots.py, the demo and study reports).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mast.augment import PHOTOMETRIC_KEYS
from mast.data.folder import TwoViewFolder, sample_seed
from mast.differentiation import differentiation_summary, measured_sensitivity
from mast.loss import invariance_weights, mismatch_factor


def only_k_differs(views: Tensor, spatial: Tensor, p: dict[str, Tensor], op: str | None
                   ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Pairs that differ ONLY in augmentation ``op`` (every other op applied identically to both views), or
    not at all (``op`` None), from two sampled views: view 2 keeps its own parameters of ``op`` and takes
    view 1's for every other op. views uint8 [N,2,3,S,S], spatial [N,2,5] (cx, cy, w, h, flip), ``p`` as
    ``PhotometricAugment.sample`` returns it (rows 0..N-1 view 1, N..2N-1 view 2)."""
    n = views.shape[0]
    v, sp = views.clone(), spatial.clone()
    q = {key: val.clone() for key, val in p.items()}
    for key, val in q.items():
        if key not in PHOTOMETRIC_KEYS.get(op or "", ()):
            val[n:] = val[:n]
    flips_differ = spatial[:, 0, 4] != spatial[:, 1, 4]
    if op == "crop":  # view 2: its own crop with view 1's flip (the flip acts last: toggling it flips pixels)
        v[flips_differ, 1] = v[flips_differ, 1].flip(-1)
        sp[:, 1, 4] = sp[:, 0, 4]
    elif op == "flip":  # view 2: view 1's crop with its own flip
        v[:, 1] = torch.where(flips_differ.view(-1, 1, 1, 1), v[:, 0].flip(-1), v[:, 0])
        sp[:, 1, :4] = sp[:, 0, :4]
    else:  # a photometric op, or no difference: view 2's pixels before photometric ops are view 1's
        v[:, 1], sp[:, 1] = v[:, 0], sp[:, 0]
    return v, sp, q


@torch.no_grad()
def residuals_by_op(model: torch.nn.Module, photometric: torch.nn.Module, views: Tensor, spatial: Tensor,
                    generator: torch.Generator) -> tuple[list[Tensor], Tensor, Tensor]:
    """r = z¹ − z² for pairs where only op k differs (one [N, d] per ``model.aug_names``), for pairs
    that do not differ, and the view-1 embeddings z [N, d] (model in eval mode)."""
    p = photometric.sample(views.shape[0], views.device, generator)
    rs = []
    for op in [*model.aug_names, None]:
        batch = photometric.render(*only_k_differs(views, spatial, p, op))
        z1 = model.embed(batch.x1).float()
        rs.append((z1 - model.embed(batch.x2).float()).cpu())
    return rs[:-1], rs[-1], z1.cpu()


@torch.no_grad()
def heldout_pass(model: torch.nn.Module, photometric: torch.nn.Module, files: list[Path], root: Path,
                 transform: Any, n: int, seed: int, device: torch.device, source: str) -> dict:
    """δ, u (eq. 1) and each pair's mean invariance weight w (eq. 4, mean over dimensions) for ``n``
    image pairs not used for training (METHOD.md §5 reports); "w_mean" = the mean of w over them; for
    MAST, "differentiation": D_k, mask-logit spread and mean s_kj per augmentation on the same images
    (METHOD.md §5, :func:`mast.differentiation.differentiation_summary`)."""
    if n == 0 or not files:
        return {"delta": torch.zeros(0, len(model.aug_names)), "source": source}
    files = files[:: max(1, len(files) // n)][:n]
    dataset = TwoViewFolder(root, transform, files=files)
    deltas, us, ws, r_only, r_none, zs = [], [], [], [], [], []
    was_training = model.training
    model.eval()  # embeddings per image, BatchNorm with its running statistics
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
            gen = torch.Generator(device=device).manual_seed(sample_seed(4, seed, start))
            only, none, z = residuals_by_op(model, photometric, views, spatial, gen)
            r_only.append(torch.stack(only)), r_none.append(none), zs.append(z)
    model.train(was_training)
    out = {"delta": torch.cat(deltas), "source": source}
    if us:
        out["u"], out["w_pair"] = torch.cat(us), torch.cat(ws)
        out["w_mean"] = float(out["w_pair"].mean())
        if len(files) >= 2:
            s = measured_sensitivity(torch.cat(r_only, dim=1), torch.cat(r_none), torch.cat(zs))
            out["differentiation"] = differentiation_summary(model.subspace.effective_logits().cpu(), s, len(files))
    return out
