"""Weighted k-nearest-neighbour prediction (InstDisc / DINO ``eval_knn``): tensors in, classes out.

Shared by the pretraining monitor (:mod:`mast.knn_monitor`) and the frozen-feature kNN probe
(:mod:`transfer.probes.knn`); it imports nothing but torch, so the probe does not load the method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict(train: Tensor, train_labels: Tensor, query: Tensor, k: int, num_classes: int,
                temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Predicted class [M] of each query: Σ over the k nearest (cosine) of exp(sim/T)·onehot(label).

    k is capped at the size of the bank; features need not be normalised.
    """
    bank = F.normalize(train.float(), dim=1)
    k = min(k, len(bank))
    preds = []
    for start in range(0, len(query), chunk):
        sim, idx = (F.normalize(query[start:start + chunk].float(), dim=1) @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        preds.append(votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp()).argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
