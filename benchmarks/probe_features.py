"""Benchmark: a kNN then a linear probe task on one ViT, sharing the feature cache or not (prints JSON).

    python benchmarks/probe_features.py [--size 224 --depth 12 --dim 192 --images 96 --rounds 4]

A DINO-layout ViT (random weights; DINO's probes ask for the class token of the last block for kNN and,
on a ViT-S or smaller, the class tokens of the last 4 blocks for the linear probe) and random images.
Each task is a process of its own, as ``run_all`` runs it. ``shared``: both tasks use one cache folder,
so the linear task finds the features the kNN task's pass stored for it; ``separate`` (the control,
which removes only the sharing): each task its own cache folder, so each runs the network, as every
task did before one pass filled every feature set. Reported per arm: the images that went through the
ViT's blocks (counted in each task process), CPU and wall seconds of the ``features()`` calls and of
the whole processes, and the shared/separate ratio per round. The arms alternate; on a shared
machine compare the CPU ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(work: Path, size: int, depth: int, dim: int, images: int) -> tuple[Path, Path]:
    """A DINO checkpoint (``teacher``/``student`` with ``backbone.``) and an ImageFolder of random images."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=size, patch_size=16, num_classes=0, global_pool="", embed_dim=dim,
                            depth=depth, num_heads=max(dim // 64, 1))
    state = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    ckpt = work / "dino_vit.pth"
    torch.save({"teacher": state, "student": {f"module.{k}": v for k, v in state.items()}}, ckpt)
    rng = np.random.default_rng(0)
    for split, n in (("train", images - images // 3), ("test", images // 3)):
        for i in range(n):
            folder = work / "data" / split / f"c{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return ckpt, work / "data"


def run_task(ckpt: str, data: str, cache: str, task: str) -> dict:
    """One probe task's feature extraction in this process: images through the ViT and seconds."""
    from timm.models.vision_transformer import VisionTransformer

    from transfer.probes.features import FeatureExtractor

    counted = {"images": 0}
    for name in ("forward_features", "forward_intermediates"):
        original = getattr(VisionTransformer, name)

        def count(model, x, *args, _original=original, **kwargs):
            counted["images"] += len(x)
            return _original(model, x, *args, **kwargs)

        setattr(VisionTransformer, name, count)
    extractor = FeatureExtractor(ckpt, cache_dir=cache, progress=False, linear=task == "linear", batch_size=32)
    wall, cpu = time.perf_counter(), time.process_time()
    hits = [extractor.features(data, split).from_cache for split in ("train", "test")]
    return {"task": task, "features": [extractor.vit_pool, extractor.vit_last_blocks], "cache_hits": hits,
            "images_through_vit": counted["images"], "features_wall_s": time.perf_counter() - wall,
            "features_cpu_s": time.process_time() - cpu}


def run_arm(arm: str, ckpt: Path, data: Path, work: Path, threads: int) -> dict:
    """Both tasks, each in a fresh process; ``separate`` gives each its own cache folder."""
    caches = [work / f"cache_{arm}_{i}" for i in range(2)] if arm == "separate" else [work / f"cache_{arm}"] * 2
    for cache in caches:
        shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    tasks, start = [], time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for task, cache in zip(("knn", "linear"), caches):
        out = subprocess.run([sys.executable, __file__, "--task", task, "--ckpt", str(ckpt), "--data", str(data),
                              "--cache", str(cache), "--threads", str(threads)],
                             env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"probe_features: the {task} task failed:\n{out.stderr[-2000:]}")
        tasks.append(json.loads(out.stdout.splitlines()[-1]))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"tasks": tasks, "images_through_vit": sum(t["images_through_vit"] for t in tasks),
            "features_cpu_s": sum(t["features_cpu_s"] for t in tasks),
            "features_wall_s": sum(t["features_wall_s"] for t in tasks),
            "process_cpu_s": cpu, "process_wall_s": time.perf_counter() - start}


def summarize(rounds: list[dict], key: str) -> dict:
    ratios = [r["shared"][key] / r["separate"][key] for r in rounds]
    return {"per_round": [round(x, 3) for x in ratios], "mean": round(statistics.mean(ratios), 3),
            "min": round(min(ratios), 3), "max": round(max(ratios), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image size the ViT sees (its training size)")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--dim", type=int, default=192, help="ViT width (192: ViT-Ti; DINO's linear default "
                        "for <= 384 is the last 4 blocks' class tokens)")
    parser.add_argument("--images", type=int, default=96, help="images in all (two thirds train, a third test)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--task", choices=("knn", "linear"), help=argparse.SUPPRESS)  # one task process
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.task:
        print(json.dumps(run_task(args.ckpt, args.data, args.cache, args.task)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, data = write_inputs(work, args.size, args.depth, args.dim, args.images)
        rounds = []
        for i in range(args.rounds):  # alternate which arm goes first
            order = ("separate", "shared") if i % 2 == 0 else ("shared", "separate")
            rounds.append({arm: run_arm(arm, ckpt, data, work, args.threads) for arm in order})
    print(json.dumps({"benchmark": "probe_features", "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "threads": args.threads, "vit": {"size": args.size, "depth": args.depth,
                      "dim": args.dim}, "images": args.images, "rounds": rounds,
                      "ratio_shared_over_separate": {k: summarize(rounds, k) for k in
                                                     ("features_cpu_s", "process_cpu_s", "features_wall_s",
                                                      "process_wall_s", "images_through_vit")}}, indent=1))


if __name__ == "__main__":
    main()
