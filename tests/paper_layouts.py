"""Tiny stand-ins of the official dataset layouts the paper suite reads, all under one root.

COCO 2017 (80 categories with their official, non-contiguous ids; polygon masks), VOC2007/2012
detection (XML, 1-based boxes), VOC2012 + SegmentationClassAug + aug.txt (palette PNGs, 255 =
ignore), Cityscapes (leftImg8bit + *_gtFine_labelTrainIds.png), ADE20K (ADEChallengeData2016). A few 64x48 images each: enough
for every engine's reader, evaluator and a 2-iteration pipeline check. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 64, 48
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def _image(path: Path, seed: int, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _box(i: int) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of one object (pixels, inclusive start)."""
    return 8 + 2 * i, 6 + i, 40 + 2 * i, 36 + i


def make_coco(root: Path, n: int = 2) -> None:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    cats = [{"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in COCO_CATEGORIES if c["isthing"]]
    assert len(cats) == 80 and cats[-1]["id"] == 90
    for split in ("train", "val"):
        images, anns = [], []
        for i in range(n):
            name = f"{split}_{i:012d}.jpg"
            _image(root / "coco" / f"{split}2017" / name, i + (100 if split == "val" else 0))
            images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
            for j, cat in enumerate((cats[0], cats[79])):  # person (1) and toothbrush (90)
                x0, y0, x1, y1 = _box(i + 3 * j)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat["id"], "iscrowd": 0,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                             "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        ann_file = root / "coco" / "annotations" / f"instances_{split}2017.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _voc_xml(name: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, (x0, y0, x1, y1) in objects)
    return (f"<annotation><folder>VOC</folder><filename>{name}.jpg</filename><size><width>{W}</width>"
            f"<height>{H}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>")


def make_voc_detection(root: Path, n: int = 2) -> None:
    for year, splits in (("2007", ("trainval", "test")), ("2012", ("trainval",))):
        base = root / f"VOC{year}"
        for split in splits:
            ids = [f"{year}_{split}_{i:06d}" for i in range(n)]
            for i, img_id in enumerate(ids):
                _image(base / "JPEGImages" / f"{img_id}.jpg", 200 + i)
                (base / "Annotations").mkdir(parents=True, exist_ok=True)
                (base / "Annotations" / f"{img_id}.xml").write_text(
                    _voc_xml(img_id, [("person", _box(i)), ("dog", _box(i + 2))]))
            (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def _voc_palette() -> list[int]:
    palette = []
    for i in range(256):  # the VOC colour map
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _label_map(i: int, classes: int) -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    x0, y0, x1, y1 = _box(i)
    lab[y0:y1, x0:x1] = 1 + i % (classes - 1)
    lab[y0:y0 + 2, x0:x1] = 255  # ignore border, as VOC's
    return lab


def make_voc_segmentation(root: Path, n: int = 2) -> None:
    base = root / "VOCdevkit" / "VOC2012"
    ids = {"train": [f"2012_{i:06d}" for i in range(n)], "aug": [f"2012_{i:06d}" for i in range(n, 2 * n)],
           "val": [f"2012_{i:06d}" for i in range(2 * n, 3 * n)]}
    for k, img_id in enumerate(sum(ids.values(), [])):
        _image(base / "JPEGImages" / f"{img_id}.jpg", 300 + k)
        lab = _label_map(k, 21)
        pal = Image.fromarray(lab, mode="P")
        pal.putpalette(_voc_palette())
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        pal.save(base / "SegmentationClass" / f"{img_id}.png")
        (base / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab).save(base / "SegmentationClassAug" / f"{img_id}.png")  # voc_aug.py: grey
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split, names in ids.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def make_cityscapes(root: Path, n: int = 2) -> None:
    base = root / "cityscapes"
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            _image(base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 400 + i, (2 * W, W))
            lab = np.full((W, 2 * W), 0, np.uint8)
            lab[: W // 2] = 10  # sky
            lab[W // 2:, : W] = 13  # car
            lab[-2:] = 255
            out = base / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(lab).save(out)


def make_ade20k(root: Path, n: int = 2) -> None:
    """ADEChallengeData2016 as unzipped: images/{training,validation}/*.jpg, annotations/.../*.png
    (0 = other, ignored by mmseg's reduce_zero_label; 1..150 the classes)."""
    base = root / "ade" / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i in range(n):
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            _image(base / "images" / split / f"{stem}.jpg", 500 + i)
            lab = np.ones((H, W), np.uint8)  # class 1 (wall) around one object of class 2 + i
            x0, y0, x1, y1 = _box(i)
            lab[y0:y1, x0:x1] = 2 + i
            lab[:2] = 0
            out = base / "annotations" / split / f"{stem}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(lab).save(out)


def make_all(root: Path) -> Path:
    """Every paper detection/segmentation dataset under ``root`` (the suite's ``{datasets}``)."""
    make_coco(root)
    make_voc_detection(root)
    make_voc_segmentation(root)
    make_cityscapes(root)
    make_ade20k(root)
    return root
