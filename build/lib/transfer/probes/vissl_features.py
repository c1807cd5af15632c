"""VISSL's VOC07 SVM feature of a ResNet: res5 average-pooled to 2 x 2, flattened (8,192-d for ResNet-50).

``configs/config/benchmark/linear_image_classification/voc07/eval_resnet_8gpu_transfer_voc07_svm.yaml``
(facebookresearch/vissl 09270ed): images through ``Resize 256`` then ``Resize [224, 224]`` (the
whole image, squashed: no crop), ``ToTensor``, ImageNet ``Normalize`` (l. 10-18, 27-35); the trunk's
res5 map through ``AvgPool2d([6, 6], 1, 0)`` and flattened (l. 49-55, ``SHOULD_FLATTEN_FEATS``
l. 48): 7 x 7 -> 2 x 2 at 224 px. The same torchvision transforms are used here, with the
extractor's size (224 unless ``--image-size``) and normalisation (ImageNet unless the run config or
``--normalize`` says otherwise; the record stores it).

The network is the one the feature cache builds (:class:`transfer.probes.features.FeatureExtractor`),
and the result is cached beside its entries under a key that adds this feature's name to the
extractor's own key (checkpoint, images, split, transform), written atomically.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from plumbing.atomic import torch_save_atomic
from mast.data.folder import DatasetError, open_rgb

__all__ = ["FEATURE", "vissl_res5_features", "supports"]

FEATURE = "vissl-voc07-res5-avgpool6-flatten/v1"
RESIZE_RATIO = 256 / 224  # the config's Resize 256 before Resize [224, 224]


MIN_SIZE = 6 * 32 - 31  # the smallest image whose res5 map (stride 32) is 6 x 6, the pooling window


def supports(extractor) -> bool:
    """A ResNet with the ImageNet stem at >= 161 px (a res5 map of at least 6 x 6); not a ViT or a CIFAR stem."""
    return (not extractor.vit and getattr(extractor.info, "stem", "imagenet") == "imagenet"
            and extractor.image_size >= MIN_SIZE)


class _Squashed(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], size: int, mean: tuple, std: tuple) -> None:
        import torchvision.transforms as T

        self.paths = paths
        self.transform = T.Compose([T.Resize(round(size * RESIZE_RATIO)), T.Resize([size, size]), T.ToTensor(),
                                    T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        from transfer.probes.features import FeatureError

        try:
            return self.transform(open_rgb(self.paths[i]))
        except DatasetError as e:
            raise FeatureError(str(e)) from None
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated/corrupt files
            raise FeatureError(f"image {self.paths[i]} cannot be read as an image ({type(e).__name__})") from None


def _res5(model: nn.Module, x: Tensor) -> Tensor:
    """torchvision ResNet up to layer4 (res5), then VISSL's AvgPool2d([6, 6], 1, 0), flattened."""
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(model, name)(x)
    return torch.nn.functional.avg_pool2d(x, kernel_size=6, stride=1, padding=0).flatten(1)


def vissl_res5_features(extractor, root: str | Path, split: str) -> Tensor:
    """[N, 2048 * 2 * 2] float32 features of ``split`` (a ResNet-50 at 224 px), through the cache."""
    from transfer.probes.features import _read_cache, _safe_iter

    root = Path(root)
    items = extractor.items(root, split)
    extractor.splits[split] = {**items.info, "n": len(items), "classes": len(items.classes)}
    base = extractor.cache_key(root, split, items)
    key = hashlib.sha256(f"{base}/{FEATURE}".encode()).hexdigest()
    path = extractor.cache_dir / f"{key}.pt"
    cached = _read_cache(path, key, len(items))
    if cached is not None:
        return cached["features"]
    model = extractor._network()
    pre = extractor.preprocess
    loader = torch.utils.data.DataLoader(_Squashed(items.paths, pre.size, pre.mean, pre.std),
                                         batch_size=extractor.batch_size, num_workers=extractor.num_workers)
    parts = []
    with torch.no_grad():
        for batch in _safe_iter(loader):
            parts.append(_res5(model, batch.to(extractor.device)).float().cpu())
    feats = torch.cat(parts)
    try:
        torch_save_atomic(path, {"key": key, "features": feats, "labels": torch.tensor(items.labels)})
    except OSError as e:  # a cache that cannot be written only costs time next run
        print(f"svm: feature cache not written ({' '.join(str(e).split())})", file=sys.stderr)
    return feats
