"""Throughput benchmark (prints JSON; not a test).

1. ``step``: images/s of a VICReg training step and a MAST step (eq. 6: masks + uncertainty heads, their
   own Adam) on the same model weights and the same batch, measured interleaved in one run; target
   ratio mast/vicreg ≥ 0.95 (METHOD.md §4, "Cost").
2. ``augment``: images/s of this project's pipeline (SpatialTwoView in DataLoader workers +
   batched PhotometricAugment, either on the device in the main process or, on a CPU, inside the
   workers' collate) against VICReg's per-image torchvision pipeline (two views per image) at the same
   resolution and worker count; target ≥ 2x on a 2-core CPU. On a CPU the main process runs with one
   torch thread while workers are busy: two OpenMP threads competing with the workers for two cores
   made the batched ops ~10x slower.

    python benchmarks/pretrain_step.py            # CPU: resnet18, 32 px, batch 64, expander 1024-1024-1024
    python benchmarks/pretrain_step.py --device cuda --dtype bf16 --channels-last --arch resnet50 \
        --size 224 --batch 256 --expander 8192-8192-8192
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

from mast.augment import AugmentConfig, PhotometricAugment, SpatialTwoView
from mast.loss import LossConfig, objective
from mast.model import MASTModel, ModelConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=32, help="view resolution (px)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--expander", default="1024-1024-1024")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bf16"], default="float32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=9, help="interleaved blocks per method (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for both augmentation pipelines")
    p.add_argument("--aug-images", type=int, default=512, help="images per augmentation pass")
    p.add_argument("--source-size", type=int, default=0, help="decoded image side (default 1.5 x --size)")
    p.add_argument("--skip-step", action="store_true")
    p.add_argument("--skip-augment", action="store_true")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- training step
def bench_step(args: argparse.Namespace, device: torch.device) -> dict:
    aug = AugmentConfig(size=args.size)
    expander = tuple(int(x) for x in args.expander.split("-"))
    models, opts = {}, {}
    for method in ("vicreg", "mast"):
        torch.manual_seed(0)  # same initial weights for both
        model = MASTModel(ModelConfig(arch=args.arch, expander=expander, method=method), LossConfig(), aug).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[method] = model.train()
        opts[method] = [torch.optim.SGD(model.main_parameters(), lr=1e-4, momentum=0.9)]
        if model.subspace_parameters():
            opts[method].append(torch.optim.Adam(model.subspace_parameters(), lr=1e-2))
    g = torch.Generator(device=device).manual_seed(0)
    views = torch.randint(0, 256, (args.batch, 2, 3, args.size, args.size), dtype=torch.uint8, device=device)
    spatial = torch.rand(args.batch, 2, 5, device=device)
    spatial[..., 2:4] = 0.3 + 0.7 * spatial[..., 2:4]
    spatial[..., 4] = spatial[..., 4].round()
    batch = PhotometricAugment(aug).to(device)(views, spatial, generator=g)
    if args.channels_last:
        batch.x1 = batch.x1.contiguous(memory_format=torch.channels_last)
        batch.x2 = batch.x2.contiguous(memory_format=torch.channels_last)
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()

    def step(method: str) -> None:
        for opt in opts[method]:
            opt.zero_grad(set_to_none=True)
        with autocast():
            out = models[method](batch)
        out["loss"].backward()
        for opt in opts[method]:
            opt.step()

    def block(method: str, n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            step(method)
        sync(device)
        return args.batch * n / (time.perf_counter() - t0)

    for method in ("vicreg", "mast"):
        block(method, args.warmup)
    rates: dict[str, list[float]] = {"vicreg": [], "mast": []}
    for rep in range(args.repeats):  # interleaved, alternating which goes first
        for method in (("vicreg", "mast") if rep % 2 == 0 else ("mast", "vicreg")):
            rates[method].append(block(method, args.steps))
    vic, mast = statistics.median(rates["vicreg"]), statistics.median(rates["mast"])
    heads = loss_overhead(models["mast"], batch, expander[-1], device, args)
    return {**heads, "vicreg_img_s": round(vic, 2), "mast_img_s": round(mast, 2), "ratio_mast_over_vicreg": round(mast / vic, 4),
            "target_ratio": 0.95, "vicreg_samples": [round(r, 2) for r in rates["vicreg"]],
            "mast_samples": [round(r, 2) for r in rates["mast"]], "optimizer": "SGD(main) + Adam(subspace, mast only)"}


def loss_overhead(model: MASTModel, batch, dim: int, device: torch.device, args: argparse.Namespace) -> dict:
    """The extra MAST work alone (eqs. 1-5 forward + backward + the subspace Adam step), timed against the
    VICReg loss on the same embeddings: a noise-robust view of the O(N·d·K) overhead."""
    z1 = torch.randn(args.batch, dim, device=device, requires_grad=True)
    z2 = torch.randn(args.batch, dim, device=device, requires_grad=True)
    adam = torch.optim.Adam(model.subspace_parameters(), lr=1e-2)

    def run(mast: bool) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            if mast:
                u = model.uncertainty(batch.theta1, batch.theta2, batch.delta)
                out = objective(z1, z2, model.loss_cfg, u=u, masks=model.masks())
            else:
                out = objective(z1, z2, model.loss_cfg)
            out["loss"].backward()
            if mast:
                adam.step()
                adam.zero_grad(set_to_none=True)
        sync(device)
        return (time.perf_counter() - t0) / 10 * 1e3

    run(False), run(True)
    vic, mast = [], []
    for _ in range(5):
        vic.append(run(False))
        mast.append(run(True))
    return {"loss_vicreg_ms": round(statistics.median(vic), 3), "loss_mast_ms": round(statistics.median(mast), 3),
            "mast_extra_ms_per_step": round(statistics.median(mast) - statistics.median(vic), 3)}


# ----------------------------------------------------------------------------- augmentation
class _GaussianBlur:
    """Official VICReg augmentations.py."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if np.random.rand() < self.p:
            sigma = np.random.rand() * 1.9 + 0.1
            return img.filter(ImageFilter.GaussianBlur(sigma))
        return img


class _Solarization:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if np.random.rand() < self.p else img


class VICRegTwoView:
    """VICReg's TrainTransform (per image, PIL), at a configurable resolution."""

    def __init__(self, size: int) -> None:
        def make(blur_p: float, sol_p: float) -> transforms.Compose:
            return transforms.Compose([
                transforms.RandomResizedCrop(size, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.RandomHorizontalFlip(p=0.5),
                transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                transforms.RandomGrayscale(p=0.2), _GaussianBlur(blur_p), _Solarization(sol_p),
                transforms.ToTensor(),
                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
        self.t1, self.t2 = make(1.0, 0.0), make(0.1, 0.2)

    def __call__(self, img: Image.Image):
        return self.t1(img), self.t2(img)


class EncodedImages(torch.utils.data.Dataset):
    """PNG-encoded images held in memory: decoding is part of the per-image work, as with a folder."""

    def __init__(self, n: int, side: int, transform) -> None:
        rng = np.random.default_rng(0)
        self.blobs = []
        for _ in range(min(n, 64)):
            low = rng.random((6, 6, 3)) * 255
            img = Image.fromarray(low.astype(np.uint8)).resize((side, side), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            self.blobs.append(buf.getvalue())
        self.n, self.transform = n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        img = Image.open(io.BytesIO(self.blobs[i % len(self.blobs)])).convert("RGB")
        return self.transform(img)


class PhotometricInWorkers:
    """collate_fn that also runs the batched PhotometricAugment inside each DataLoader worker (the CPU
    layout: on a GPU the photometric stage runs on the device in the main process instead)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.photometric = PhotometricAugment(cfg)

    def __call__(self, items):
        views, spatial = torch.utils.data.default_collate(items)
        return self.photometric(views, spatial)


def bench_augment(args: argparse.Namespace, device: torch.device) -> dict:
    cfg = AugmentConfig(size=args.size)
    side = args.source_size or int(args.size * 1.5)
    photometric = PhotometricAugment(cfg).to(device)
    pin = device.type == "cuda"

    def run(transform, mode: str) -> float:
        collate = PhotometricInWorkers(cfg) if mode == "workers" else None
        loader = torch.utils.data.DataLoader(EncodedImages(args.aug_images, side, transform), batch_size=args.batch,
                                             num_workers=args.workers, pin_memory=pin, collate_fn=collate,
                                             prefetch_factor=4 if args.workers else None)
        threads = torch.get_num_threads()
        if device.type == "cpu":  # main process shares the cores with the workers: no OpenMP oversubscription
            torch.set_num_threads(1)
        sync(device)
        t0 = time.perf_counter()
        for item in loader:
            if mode == "device":
                out = photometric(item[0].to(device, non_blocking=True), item[1].to(device, non_blocking=True))
                if args.channels_last:
                    out.x1.contiguous(memory_format=torch.channels_last)
            elif mode == "workers":
                item.to(device, non_blocking=True)
            else:
                item[0].to(device, non_blocking=True), item[1].to(device, non_blocking=True)
        sync(device)
        torch.set_num_threads(threads)
        return args.aug_images / (time.perf_counter() - t0)

    modes = [("mast_photometric_on_device", SpatialTwoView(cfg), "device"),
             ("torchvision", VICRegTwoView(args.size), "reference")]
    if device.type == "cpu":
        modes.append(("mast_photometric_in_workers", SpatialTwoView(cfg), "workers"))
    rates: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    for rep in range(3):  # interleaved, alternating the order
        for name, transform, mode in (modes if rep % 2 == 0 else modes[::-1]):
            rates[name].append(run(transform, mode))
    med = {name: statistics.median(r) for name, r in rates.items()}
    ref = med.pop("torchvision")
    best = max(med, key=med.get)
    return {"mast_pipeline_img_s": round(med[best], 2), "mast_pipeline": best,
            "torchvision_reference_img_s": round(ref, 2), "speedup": round(med[best] / ref, 3), "target_speedup": 2.0,
            **{f"{name}_img_s": round(v, 2) for name, v in med.items()}, "source_side": side,
            "workers": args.workers, "images_per_pass": args.aug_images,
            "samples": {name: [round(x, 2) for x in r] for name, r in rates.items()}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.dtype == "bf16" and device.type != "cuda":
        raise SystemExit("--dtype bf16: expected --device cuda (bf16 autocast is the GPU setting)")
    result = {"arch": args.arch, "size": args.size, "batch": args.batch, "expander": args.expander,
              "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": args.dtype, "channels_last": args.channels_last, "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__}
    if not args.skip_step:
        result["step"] = bench_step(args, device)
    if not args.skip_augment:
        result["augment"] = bench_augment(args, device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
