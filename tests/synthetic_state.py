"""A fabricated but realistic ``mast_state.pth`` (contract format), for testing the report plots.

Each augmentation drives a block of dimensions (some blocks overlap, one augmentation drives
nothing, as solarize with p = 0 in view 1 often does); held-out uncertainties grow with the
discrepancy δ with noise. Only the format is realistic; the numbers mean nothing.

    python tests/synthetic_state.py --out /tmp/run/mast_state.pth [--dim 64] [--pairs 512]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

AUG_NAMES = ["crop", "flip", "color", "gray", "blur", "solarize"]


def make_state(dim: int = 64, pairs: int = 512, seed: int = 0, method: str = "mast") -> dict:
    g = torch.Generator().manual_seed(seed)
    K = len(AUG_NAMES)
    logits = torch.full((K, dim), 3.0) + 0.3 * torch.randn(K, dim, generator=g)
    block = max(1, dim // (K + 1))
    for k in range(K - 1):  # the last augmentation drives nothing
        lo, hi = k * block, min(dim, k * block + block + block // 2)  # 50% overlap with the next block
        logits[k, lo:hi] = -2.0 + 0.5 * torch.randn(hi - lo, generator=g)
    delta = torch.rand(pairs, K, generator=g)
    delta[:, 1] = (delta[:, 1] > 0.5).float()  # flip: XOR bit
    delta[:, 3] = (delta[:, 3] > 0.7).float()  # gray
    delta[:, 5] = (delta[:, 5] > 0.8).float()  # solarize
    scale = torch.tensor([2.0, 1.5, 1.5, 2.5, 1.5, 0.0])
    u = delta * scale * torch.nn.functional.softplus(1.0 + 0.5 * torch.randn(pairs, K, generator=g))
    state = {
        "method": method,
        "aug_names": list(AUG_NAMES),
        "mask_logits": logits,
        "u_bar": u.mean(0),
        "tau": 0.5,
        "uncertainty": "head",
        "uncertainty_state": {},
        "aug_spec": {},
        "heldout": {"delta": delta, "u": u},
        "config": {"method": method},
    }
    if method != "mast":  # vicreg: masks absent, no uncertainty
        for key in ("mask_logits", "u_bar"):
            state.pop(key)
        state["uncertainty"] = "none"
        state["heldout"] = {"delta": delta, "u": torch.zeros_like(u)}
    return state


def save_state(path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(make_state(**kwargs), path)
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--method", default="mast", choices=["mast", "vicreg"])
    a = p.parse_args()
    print(save_state(a.out, dim=a.dim, pairs=a.pairs, method=a.method))
