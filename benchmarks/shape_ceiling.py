"""Diagnostic: how far can a *supervised* ResNet-18 get on the synthetic `shape` task (prints JSON)?

    python benchmarks/shape_ceiling.py [--size 32] [--stem torchvision|cifar] [--epochs 15]

Trains the demo's backbone (torchvision ResNet-18, random init) with the `shape` labels themselves
(train split, random flips, Adam) and reports, per epoch, test accuracy of its classifier and the
online kNN monitor's metric (cosine kNN, k=20, T=0.07, the demo's `KnnMonitor`) on its features.
No self-supervised run can use the labels, so this bounds what the demo's kNN on `shape` can show
with this network, data and a CPU-minutes budget. ``--stem cifar`` (3x3 stride-1 conv, no max-pool,
the usual small-image ResNet) is a contrast only: it is not a layout the transfer engines accept.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from mast.config import KnnConfig
from mast.data.synthetic import SyntheticSpec, ensure_dataset
from mast.knn_monitor import KnnMonitor

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(stem: str, classes: int) -> torch.nn.Module:
    net = torchvision.models.resnet18(weights=None, num_classes=classes)
    if stem == "cifar":
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
    return net


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic", help="synthetic benchmark root (the demo data is generated there if absent)")
    p.add_argument("--size", type=int, default=32, help="input side in px (the demo's views: 32)")
    p.add_argument("--stem", choices=["torchvision", "cifar"], default="torchvision")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = Path(args.data)
    if not (data / "COMPLETE").exists():  # any complete synthetic dataset is used as it is
        ensure_dataset(data, SyntheticSpec.demo())
    root = data / "classification" / "shape"
    monitor = KnnMonitor(KnnConfig(root=str(root)), args.size, MEAN, STD, seed=args.seed)
    net = build(args.stem, len(monitor.classes))
    classifier, net.fc = net.fc, torch.nn.Identity()  # the monitor reads the pooled features
    params = list(net.parameters()) + list(classifier.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    norm = lambda x: x.float().div(255).sub_(mean).div_(std)  # noqa: E731
    x_test = norm(monitor.x_test)
    history, device, t0 = [], torch.device("cpu"), time.perf_counter()
    knn_init = monitor.evaluate(net, device)
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(monitor.y_train))
        for start in range(0, len(order), args.batch):
            idx = order[start:start + args.batch]
            x = norm(monitor.x_train[idx])
            flip = torch.rand(len(idx)) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(classifier(net(x)), monitor.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            test_acc = 100.0 * (classifier(net(x_test)).argmax(1) == monitor.y_test).float().mean().item()
        history.append({"epoch": epoch, "seconds": round(time.perf_counter() - t0, 1), "loss": round(loss.item(), 3),
                        "test_top1": round(test_acc, 2), "knn_top1": round(monitor.evaluate(net, device), 2)})
    print(json.dumps({"benchmark": "shape_ceiling", "size": args.size, "stem": args.stem, "epochs": args.epochs,
                      "train_images": len(monitor.y_train), "test_images": len(monitor.y_test),
                      "knn_top1_init": round(knn_init, 2),
                      "best_test_top1": max(h["test_top1"] for h in history),
                      "best_knn_top1": max(h["knn_top1"] for h in history),
                      "history": history, "torch": torch.__version__, "machine": platform.machine(),
                      "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
