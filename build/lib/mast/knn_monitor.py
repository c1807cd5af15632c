"""Online kNN monitor: how well frozen backbone features separate a labeled task, during training.

Weighted kNN as in InstDisc/DINO (:func:`knn_predict`, also PROTOCOLS.md's kNN probe): cosine
similarity of L2-normalised backbone features, the k nearest train features vote with weight
``exp(sim / T)``; top-1 accuracy on the test split, in percent. The labeled images are decoded
once (``ROOT/train/<class>/*``, ``ROOT/test/<class>/*``, resized to the pretraining size), so an
evaluation costs two forward passes over small tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mast.config import KnnConfig
from mast.weighted_knn import knn_predict
from mast.data.folder import DatasetError, load_labeled_split


class KnnMonitor:
    """Holds a labeled task in memory; :meth:`evaluate` returns kNN top-1 (%) of a backbone."""

    def __init__(self, cfg: KnnConfig, size: int, mean: tuple, std: tuple, seed: int = 0) -> None:
        root = Path(cfg.root)
        for split in ("train", "test"):
            if not (root / split).is_dir():
                raise DatasetError(f"knn.root={root}: expected {root}/train/<class>/ and "
                                   f"{root}/test/<class>/ image folders (missing {split}/)")
        self.cfg = cfg
        self.x_train, self.y_train, self.classes, _ = load_labeled_split(
            root / "train", size, cfg.max_train, seed, what="knn.root")
        self.x_test, self.y_test, _, self.test_files = load_labeled_split(
            root / "test", size, cfg.max_test, seed, classes=self.classes, what="knn.root")
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def features(self, backbone: nn.Module, images: Tensor, device: torch.device,
                 channels_last: bool = False) -> Tensor:
        """Backbone features of uint8 images (backbone put in eval mode)."""
        was_training = backbone.training
        backbone.eval()
        mean, std = self.mean.to(device), self.std.to(device)
        out = []
        for start in range(0, images.shape[0], self.cfg.batch_size):
            x = images[start:start + self.cfg.batch_size].to(device).float().div_(255).sub_(mean).div_(std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(backbone(x).float().flatten(1))
        backbone.train(was_training)
        return torch.cat(out)

    def evaluate(self, backbone: nn.Module, device: torch.device, channels_last: bool = False) -> float:
        """kNN top-1 accuracy (%) of ``backbone`` on the test split."""
        f_train = self.features(backbone, self.x_train, device, channels_last)
        f_test = self.features(backbone, self.x_test, device, channels_last)
        pred = knn_predict(f_train, self.y_train.to(device), f_test, self.cfg.k, len(self.classes),
                           self.cfg.temperature)
        return 100.0 * (pred.cpu() == self.y_test).float().mean().item()
