"""Synthetic multi-task benchmark: one seeded generator for pretraining, probes, detection and segmentation.

Layout written under ROOT (field-by-field description: mast/data/README.md)::

    COMPLETE                                   marker JSON, written last
    card.json, CARD.md                         dataset card (counts, raw-pixel baselines)
    unlabeled/images/*.png                     pretraining ImageFolder root = ROOT/unlabeled
    classification/<task>/<split>/<class>/*.png
    scenes/images/{train,val}/*.png
    scenes/annotations/instances_{train,val}.json   COCO instances, RLE masks, category ids 1..8
    scenes/labels/{train,val}/*.png            uint8 semantic labels, 0 background, c = category id
    imagenet_like/{train,val}/<synset>/*.JPEG  the color task in ImageNet's layout + a "1 %" list (imagenet_like.py)

Every image is a pure function of ``np.random.default_rng([seed, stream, index])``, so the output
is byte-identical for a seed whatever the number of worker processes.

CLI: ``python -m mast.data.synthetic --out DIR [--preset demo|tiny|bench10k] [--size 64] [--seed 0]
[--overwrite] [--workers 2]``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from plumbing.atomic import write_text_atomic

from mast.data import scenes
from mast.data.scenes import COLORS, SHAPES, TASKS

GENERATOR_VERSION = 2  # bump whenever the pixels or annotations a spec produces change
SPLITS = ("train", "val", "test")
CARD_THUMB = 16  # raw-pixel baselines read a 16x16 box-filtered copy of each image
_PNG = {"compress_level": 0, "optimize": False}  # fixed encoder settings => byte-identical files
_STREAMS = ("unlabeled", "scenes/train", "scenes/val") + tuple(f"{t}/{s}" for t in TASKS for s in SPLITS)


def shape_color_split(label: int) -> str:
    """'train' or 'heldout' for a shape_color class: 3 colors per shape are held out (Latin pattern),
    so each held-out class is an unseen pairing of a seen shape and a seen color (40 train, 24 held out)."""
    shape, color = divmod(label, len(COLORS))
    return "heldout" if (color - shape) % len(COLORS) < 3 else "train"


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Counts are images per class; ``side`` (2 classes) gets 4x per class so its
    split sizes match the 8-class tasks. shape_color: train split = its 40 train classes; val and
    test = the 24 held-out classes (different images). ``workers`` does not change the output."""

    size: int = 64
    seed: int = 0
    unlabeled: int = 5000
    per_class: tuple[int, int, int] = (80, 20, 40)
    shape_color_per_class: tuple[int, int, int] = (20, 10, 25)
    scenes: tuple[int, int] = (500, 100)
    max_objects: int = 3
    card_baseline: bool = True  # fit the raw-pixel baselines for the card (seconds; off for tiny)
    workers: int = 2

    @classmethod
    def demo(cls, size: int = 64, seed: int = 0) -> "SyntheticSpec":
        """The data ``make demo`` uses (~11k images, well under a minute on 2 cores)."""
        return cls(size=size, seed=seed)

    @classmethod
    def tiny(cls, size: int = 64, seed: int = 0) -> "SyntheticSpec":
        """Test data (a few seconds): 5-way few-shot on held-out classes with 6 images per class."""
        return cls(size=size, seed=seed, unlabeled=64, per_class=(4, 2, 3),
                   shape_color_per_class=(2, 2, 6), scenes=(16, 8), card_baseline=False)

    @classmethod
    def bench10k(cls, size: int = 64, seed: int = 0) -> "SyntheticSpec":
        """10,000 images (speed benchmark): 6,000 unlabeled + 2,000 classification + 2,000 scenes."""
        return cls(size=size, seed=seed, unlabeled=6000, per_class=(40, 10, 20),
                   shape_color_per_class=(5, 3, 9), scenes=(1600, 232))

    def validate(self) -> "SyntheticSpec":
        """Raise a one-line ValueError naming the first bad field."""
        if not isinstance(self.size, int) or not 32 <= self.size <= 1024:
            raise ValueError(f"size: expected an integer in [32, 1024] pixels, got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed!r}")
        counts = {"unlabeled": (self.unlabeled,), "per_class": self.per_class,
                  "shape_color_per_class": self.shape_color_per_class, "scenes": self.scenes,
                  "max_objects": (self.max_objects,), "workers": (self.workers,)}
        lengths = {"per_class": 3, "shape_color_per_class": 3, "scenes": 2}
        for name, values in counts.items():
            if name in lengths and len(values) != lengths[name]:
                raise ValueError(f"{name}: expected {lengths[name]} counts, got {values!r}")
            if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in values):
                raise ValueError(f"{name}: expected positive integer counts, got {values!r}")
        return self

    def content(self) -> dict[str, Any]:
        """The fields that determine the files (what COMPLETE records and ensure_dataset compares)."""
        d = asdict(self)
        d.pop("workers")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ---------------------------------------------------------------- jobs: one per image


def _class_counts(spec: SyntheticSpec, task: str, split: str) -> list[tuple[int, int]]:
    """[(label, images)] for one task split."""
    i = SPLITS.index(split)
    if task == "shape_color":
        want = "train" if split == "train" else "heldout"
        return [(c, spec.shape_color_per_class[i]) for c in range(len(TASKS[task]))
                if shape_color_split(c) == want]
    per = spec.per_class[i] * (4 if task == "side" else 1)
    return [(c, per) for c in range(len(TASKS[task]))]


def _jobs(spec: SyntheticSpec) -> list[tuple]:
    """(stream, index, kind, relative path, task, label) for every image, in a fixed order."""
    jobs: list[tuple] = []
    for i in range(spec.unlabeled):
        jobs.append(("unlabeled", i, "free", f"unlabeled/images/{i:06d}.png", None, None))
    for split, count in zip(("train", "val"), spec.scenes):
        for i in range(count):
            jobs.append((f"scenes/{split}", i, "scene", f"scenes/images/{split}/{i:06d}.png", None, None))
    for task, names in TASKS.items():
        for split in SPLITS:
            counts = _class_counts(spec, task, split)
            # interleave classes so a truncated run or a prefix is still balanced
            labels = [c for k in range(max(n for _, n in counts)) for c, n in counts if k < n]
            for i, label in enumerate(labels):
                rel = f"classification/{task}/{split}/{names[label]}/{i:06d}.png"
                jobs.append((f"{task}/{split}", i, "labelled", rel, task, label))
    return jobs


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", **_PNG)


def _render_job(args: tuple) -> Any:
    """Render, write and summarise one image (runs in a worker process)."""
    root, spec, (stream, index, kind, rel, task, label) = args
    rng = np.random.default_rng([spec.seed, _STREAMS.index(stream), index])
    if kind == "labelled":
        scene = scenes.labelled_scene(rng, spec.size, task, label, spec.max_objects)
    else:
        scene = scenes.free_scene(rng, spec.size, (0.08, 0.3) if kind == "free" else (0.1, 0.25),
                                  spec.max_objects)
    path = Path(root) / rel
    _save_png(scene.image, path)
    if kind == "labelled":
        thumb = Image.fromarray(scene.image).resize((CARD_THUMB, CARD_THUMB), Image.BOX)
        return np.asarray(thumb).reshape(-1)
    if kind == "scene":
        _save_png(scene.semantic_label(), Path(root) / rel.replace("scenes/images/", "scenes/labels/", 1))
        return [_coco_annotation(obj, mask) for obj, mask in zip(scene.objects, scene.masks)]
    return None


def _coco_annotation(obj: scenes.SceneObject, mask: np.ndarray) -> dict[str, Any]:
    """COCO fields of one visible instance: compressed RLE, area = pixel count, tight bbox."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {"category_id": obj.shape + 1, "segmentation": {"size": [int(s) for s in rle["size"]],
            "counts": rle["counts"].decode("ascii")}, "area": int(mask.sum()),
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1], "iscrowd": 0,
            "color": COLORS[obj.color][0]}


def _run_jobs(root: Path, spec: SyntheticSpec, jobs: list[tuple]) -> list[Any]:
    args = [(str(root), spec, job) for job in jobs]
    if spec.workers == 1 or len(jobs) < 256:
        return [_render_job(a) for a in args]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(spec.workers) as pool:
        return pool.map(_render_job, args, chunksize=64)


# ---------------------------------------------------------------- files




def _coco_json(jobs: list[tuple], results: list[Any], split: str, size: int) -> dict[str, Any]:
    images, annotations = [], []
    for job, anns in zip(jobs, results):
        if job[0] != f"scenes/{split}":
            continue
        image_id = job[1] + 1
        images.append({"id": image_id, "file_name": Path(job[3]).name, "width": size, "height": size})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    info = {"description": "MAST synthetic scenes", "version": str(GENERATOR_VERSION)}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _make_dirs(root: Path, jobs: list[tuple]) -> None:
    for d in sorted({str(Path(job[3]).parent) for job in jobs}):
        (root / d).mkdir(parents=True, exist_ok=True)
        if d.startswith("scenes/images/"):
            (root / d.replace("scenes/images/", "scenes/labels/")).mkdir(parents=True, exist_ok=True)
    (root / "scenes/annotations").mkdir(parents=True, exist_ok=True)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"out: {out} exists and is not empty; pass --overwrite (overwrite=True) to replace it")
        if out.resolve() == Path(out.resolve().anchor) or (out / ".git").exists():
            raise ValueError(f"out: refusing to overwrite {out} (a filesystem root or a git checkout)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def generate(out: Path, spec: SyntheticSpec, overwrite: bool = False) -> Path:
    """Write the whole dataset to ``out`` and return it; the COMPLETE marker is written last."""
    from mast.data.card import build_card, write_card  # sklearn import stays off the fast path

    spec.validate()
    out = Path(out)
    _prepare_out(out, overwrite)
    write_text_atomic(out / ".generating", json.dumps(spec.content()))
    jobs = _jobs(spec)
    _make_dirs(out, jobs)
    results = _run_jobs(out, spec, jobs)
    for split in ("train", "val"):
        coco = _coco_json(jobs, results, split, spec.size)
        write_text_atomic(out / f"scenes/annotations/instances_{split}.json", json.dumps(coco))
    write_card(out, build_card(spec, jobs, results))
    from mast.data.imagenet_like import ensure_imagenet_like  # its own marker (version): not GENERATOR_VERSION's

    ensure_imagenet_like(out, spec.seed)
    (out / ".generating").unlink()
    files = sum(len(names) for _, _, names in os.walk(out))
    marker = {"generator_version": GENERATOR_VERSION, "spec": spec.content(), "images": len(jobs), "files": files}
    write_text_atomic(out / "COMPLETE", json.dumps(marker, indent=1) + "\n")
    return out


def is_complete(out: Path, spec: SyntheticSpec) -> bool:
    """True when ``out`` holds a finished dataset generated from ``spec`` by this generator version."""
    try:
        marker = json.loads((Path(out) / "COMPLETE").read_text())
    except (OSError, ValueError):
        return False
    return marker.get("generator_version") == GENERATOR_VERSION and marker.get("spec") == spec.content()


def ensure_dataset(out: Path, spec: SyntheticSpec) -> Path:
    """Reuse ``out`` if it holds a COMPLETE dataset for ``spec``; otherwise generate it.

    The ImageNet-layout twin (``ROOT/imagenet_like``, :mod:`mast.data.imagenet_like`) is added to a dataset
    finished before it existed.
    Only a generation this code left unfinished (its ``.generating`` marker, no COMPLETE) is
    replaced. A finished dataset of another spec, or any other non-empty folder, is never deleted
    (the CLI's rule without ``--overwrite``): a one-line ValueError says what to do.
    """
    out = Path(out)
    spec.validate()
    from mast.data.imagenet_like import ensure_imagenet_like

    if not is_complete(out, spec):
        if (out / "COMPLETE").exists():
            raise ValueError(f"{out} holds a synthetic dataset built from another spec or generator version; "
                             f"choose another folder, or delete it to regenerate")
        generate(out, spec, overwrite=(out / ".generating").exists())
    ensure_imagenet_like(out, spec.seed)
    return out


# ---------------------------------------------------------------- CLI

PRESETS = {"demo": SyntheticSpec.demo, "tiny": SyntheticSpec.tiny, "bench10k": SyntheticSpec.bench10k}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mast.data.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (ROOT)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes (does not change the output)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        spec = replace(PRESETS[args.preset](size=args.size, seed=args.seed), workers=args.workers)
        start = time.time()
        out = generate(args.out, spec, overwrite=args.overwrite)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    card = json.loads((out / "card.json").read_text())
    summary = {"out": str(out), "preset": args.preset, "images": card["counts"]["images"],
               "workers": spec.workers, "seconds": round(time.time() - start, 2),
               "cpu_seconds": round(sum(u.ru_utime + u.ru_stime for u in usage), 2),
               "raw_pixel_logreg_accuracy": card["raw_pixel_logreg"]["accuracy"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
