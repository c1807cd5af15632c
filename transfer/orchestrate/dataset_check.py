"""Is every dataset of a suite on disk and readable? Per task: found, missing or unreadable, with the
layout the task's reader expects and the path it tried.

    python -m transfer.orchestrate.dataset_check --root /data [--suite paper]
    python transfer/run_all.py --suite paper --check --var datasets=/data

Detection reads the detectron2 config's dataset names (a YAML's ``DATASETS``, a ViTDet LazyConfig's data
loaders; builtin COCO/VOC layouts under
``$DETECTRON2_DATASETS``, which run_all sets from the suite unless the user did); segmentation the
mmseg config's data roots, folders and split files. A probe's dataset is opened through the same
reader the task uses (:func:`transfer.probes.datasets.load_split` with the task's own options):
its index, its first item and its class count, so a wrong format (CIFAR batches that are not the
python version, Food-101 one level too high, DTD without its inner ``dtd/``) is caught here, not
an hour into the suite. run_all runs the same check before it starts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from transfer.orchestrate.suite import Suite, SuiteError, TaskSpec, load_suite, project_path

# detectron2's builtin names (detectron2/data/datasets/builtin.py) -> files under DETECTRON2_DATASETS
COCO = {f"coco_2017_{s}": [f"coco/{s}2017", f"coco/annotations/instances_{s}2017.json"] for s in ("train", "val")}
VOC = {f"voc_{y}_{s}": [f"VOC{y}/Annotations", f"VOC{y}/JPEGImages", f"VOC{y}/ImageSets/Main/{s}.txt"]
       for y in ("2007", "2012") for s in ("train", "val", "trainval", "test")}
HINTS = {
    "coco": "unpack train2017.zip, val2017.zip and annotations_trainval2017.zip into ROOT/coco",
    "voc": "unpack VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar and VOCtrainval_11-May-2012.tar "
           "and move VOCdevkit/VOC2007, VOCdevkit/VOC2012 to ROOT (detectron2's layout)",
}


def detection_paths(spec: TaskSpec) -> tuple[list[Path], str]:
    """Files the detectron2 config's datasets need, and how to get them."""
    import yaml

    path = project_path(spec.args["config"])
    if path.suffix == ".py":  # a ViTDet LazyConfig: its data loaders name the datasets
        from transfer.detection.vitdet import dataset_names, load_lazy_config

        names = dataset_names(load_lazy_config(path, []))
    else:
        names = _tuple_names(yaml.safe_load(path.read_text()) or {})
    root = Path(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS") or spec.env.get("DETECTRON2_DATASETS")
                                   or "datasets"))
    paths = [root / p for n in names for p in COCO.get(n, VOC.get(n, []))]
    hint = " ; ".join(HINTS[k] for k in ("coco", "voc") if any(n.startswith(k) for n in names))
    return paths, hint


def _tuple_names(config: dict) -> list[str]:
    """``DATASETS.TRAIN: ("a", "b")`` is a string in detectron2's YAML: read the names out of it."""
    out = []
    for key in ("TRAIN", "TEST"):
        value = (config.get("DATASETS") or {}).get(key, ())
        text = value if isinstance(value, str) else ",".join(map(str, value))
        out += [n.strip(" '\"") for n in text.strip("()").split(",") if n.strip(" '\"")]
    return out


def segmentation_paths(spec: TaskSpec) -> tuple[list[Path], str]:
    """Folders and split files of every dataset in the mmseg config, under the task's data root."""
    from mmengine.config import Config

    from transfer.segmentation.data import dataset_cfgs, set_data_root

    cfg = Config.fromfile(str(project_path(spec.args["config"])))
    if spec.args.get("data_root"):
        set_data_root(cfg, spec.args["data_root"])
    paths = []
    for _, dataset in dataset_cfgs(cfg):
        root = Path(str(dataset.get("data_root") or "."))
        prefix = dataset.get("data_prefix") or {}
        paths += [root / p for p in (prefix.get("img_path"), prefix.get("seg_map_path"), dataset.get("ann_file")) if p]
    return list(dict.fromkeys(paths)), str(cfg.get("data_hint") or "")


# What each probe reader expects under --data (or --data is the named folder itself); docs/PAPER_SUITE.md.
PROBE_LAYOUTS = {
    "cifar10": "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta: the 'python version')",
    "cifar100": "cifar-100-python/ (train, test, meta: the 'python version')",
    "stl10": "stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt)",
    "food101": "food-101/ (images/, meta/)",
    "pets": "oxford-iiit-pet/ (images/, annotations/)",
    "dtd": "dtd/ (images/, labels/, imdb/: the archive's own dtd/ folder inside --data)",
    "flowers102": "flowers-102/ (jpg/, imagelabels.mat, setid.mat)",
    "aircraft": "fgvc-aircraft-2013b/ (data/)",
    "caltech101": "caltech101/ (101_ObjectCategories/, Annotations/)",
    "cars": "stanford_cars/ (devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat)",
    "sun397": "SUN397/ (ClassName.txt, Training_01.txt, Testing_01.txt, <letter>/<class>/ images)",
    "cub200": "CUB_200_2011/ (images/, images.txt, train_test_split.txt)",
    "mit67": "Images/<class>/ with TrainImages.txt and TestImages.txt (or train/, test/ class folders)",
    "voc07": "JPEGImages/, Annotations/, ImageSets/Main/{trainval,test}.txt and <class>_{trainval,test}.txt "
             "(VOCdevkit/VOC2007 of VOCtrainval_06-Nov-2007.tar + VOCtest_06-Nov-2007.tar)",
    "places205": "trainvalsplit_places205/{train,val}_places205.csv and data/vision/torralba/deeplearning/images256/"
                 "<l>/<class>/ (MIT's imagesPlaces205_resize.tar.gz + trainvalsplit_places205.tar.gz)",
    "inat18": "train2018.json, val2018.json and train_val2018/<supercategory>/<category id>/*.jpg",
}
IMAGEFOLDER = "<split>/<class>/<image> folders (an ImageFolder tree)"


@dataclass(frozen=True)
class Verdict:
    """One task's dataset: ``found`` / ``missing`` / ``unreadable``, and the one line that says so."""

    task: str
    status: str
    detail: str  # "found ...", "missing PATH; expected ...", "unreadable PATH (...); expected ..."

    @property
    def line(self) -> str:
        return f"{self.task}: {self.detail}"


def probe_layout(dataset: str | None) -> str:
    return PROBE_LAYOUTS.get(dataset or "", IMAGEFOLDER)


def probe_splits(spec: TaskSpec) -> tuple[argparse.Namespace, list[tuple[str, bool, bool]]]:
    """The task's own options (its parser, its defaults) and the splits it reads: (split, fewshot, carve_val)."""
    import importlib

    from transfer.probes.datasets import REGISTRY
    from transfer.orchestrate.suite import TASK_MODULES

    parser = importlib.import_module(TASK_MODULES[spec.task]).build_parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            args, _ = parser.parse_known_args(spec.command("python", "CKPT", "OUT")[3:])
    except SystemExit:  # argparse's way to refuse: the task would refuse the same, in its own record
        raise ValueError(f"its options do not parse ({' '.join(err.getvalue().split())[-200:]})") from None
    if spec.task == "fewshot":
        split = args.split or (REGISTRY[args.dataset].fewshot if args.dataset in REGISTRY else None) or "test"
        return args, [(split, True, False)]
    if spec.task in ("knn", "svm"):
        return args, [(args.train_split, False, False), (args.test_split, False, False)]
    return args, [(s, False, True) for s in (args.train_split, args.val_split, args.test_split)]


def check_probe(spec: TaskSpec) -> Verdict:
    """Open the probe's dataset as the task will: every split's index, its first item, its classes."""
    from transfer.probes.datasets import LayoutError, load_split

    args, splits = probe_splits(spec)
    data, layout = Path(args.data), probe_layout(args.dataset)
    if not data.is_dir():
        return Verdict(spec.name, "missing", f"missing {data}; expected {data}/{layout}")
    sizes, classes = [], 0
    for split, fewshot, carve_val in splits:
        try:
            items = load_split(data, split, args.dataset, args.split_file, fewshot, carve_val)
            _first_item(items)
        except Exception as e:  # noqa: BLE001 - any reader error is this dataset's verdict, in one line
            what = " ".join(str(e).split())[:300]
            if not isinstance(e, LayoutError):  # the reader's own messages name the file and the layout
                what = f"split {split}: {type(e).__name__}: {what}"
            return Verdict(spec.name, "unreadable", f"unreadable {data} ({what}); "
                           f"expected {data}/{layout}")
        sizes.append(f"{split} {len(items)}")
        classes = len(items.classes)
    return Verdict(spec.name, "found", f"found {data} ({classes} classes; {', '.join(sizes)})")


def _first_item(items) -> None:
    """Decode the first image (a file, or the first row of the array): a truncated file fails here."""
    if len(items) == 0:
        raise ValueError("no images")
    if items.array is not None:
        if items.array.ndim != 4 or items.array.shape[-1] != 3:
            raise ValueError(f"images array of shape {items.array.shape}, expected [N, H, W, 3]")
        return
    from PIL import Image

    with Image.open(items.paths[0]) as img:
        img.convert("RGB").load()


def check_task(spec: TaskSpec) -> Verdict:
    if spec.task in ("fewshot", "linear", "knn", "svm"):
        return check_probe(spec)
    if spec.task == "classification" and spec.args.get("protocol") in ("linear_places205", "linear_inat18"):
        return _check_vissl(spec, str(spec.args["protocol"]).split("_", 1)[1])
    if spec.task == "classification":  # ImageNet as the task reads it (transfer/imagenet.py), one line
        from transfer.imagenet import LAYOUT_HINT, ImageNetLayoutError, describe

        root = Path(str(spec.args.get("data_root", "")))
        if not root.is_dir():
            return Verdict(spec.name, "missing", f"missing {root}; expected {root}/{LAYOUT_HINT}")
        try:
            # the demo's synthetic twin is not ILSVRC-2012's size (its configs say check_sizes=False)
            found = describe(root, spec.args.get("protocol", "linear"), full=not spec.smoke and spec.scale != "demo")
            return Verdict(spec.name, "found", f"found {root} ({found})")
        except ImageNetLayoutError as e:
            return Verdict(spec.name, "unreadable", f"unreadable {root} ({e}); expected {root}/{LAYOUT_HINT}")
    paths, hint = detection_paths(spec) if spec.task == "detection" else segmentation_paths(spec)
    missing = [p for p in paths if not p.exists()]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        return Verdict(spec.name, "missing", f"missing {missing[0]}{more}" + (f"; {hint}" if hint else ""))
    shown = ", ".join(map(str, paths[:2])) + (", ..." if len(paths) > 2 else "")
    return Verdict(spec.name, "found", f"found ({shown})")


def _check_vissl(spec: TaskSpec, name: str) -> Verdict:
    """Places205 / iNat18 as the classification task reads them (transfer/vissl_datasets.py), one line."""
    from transfer.vissl_datasets import VISSL_READERS, LayoutError

    root, hint = Path(str(spec.args.get("data_root", ""))), PROBE_LAYOUTS[name]
    if not root.is_dir():
        return Verdict(spec.name, "missing", f"missing {root}; expected {hint}")
    try:
        train, val = VISSL_READERS[name](root, "train"), VISSL_READERS[name](root, "val")
    except LayoutError as e:
        return Verdict(spec.name, "unreadable", f"unreadable {root} ({e}); expected {hint}")
    return Verdict(spec.name, "found", f"found {root} ({len(train.labels)} train, {len(val.labels)} val images, "
                                       f"{len(train.classes)} classes)")


def _verdict(spec: TaskSpec) -> Verdict:
    try:
        return check_task(spec)
    except Exception as e:  # noqa: BLE001 - a check that cannot run says so; the task decides when it runs
        return Verdict(spec.name, "unchecked", f"not checked ({type(e).__name__}: {' '.join(str(e).split())[:200]})")


def check_suite(suite: Suite, out=None) -> int:
    """Print one line per task (found / missing / unreadable) to ``out`` (default: the current
    ``sys.stdout``); 0 when every dataset is readable, else 1."""
    out = out or sys.stdout
    verdicts = [_verdict(spec) for spec in suite.tasks]
    for v in verdicts:
        print(v.line, file=out)
    counts = {s: sum(v.status == s for v in verdicts) for s in ("found", "missing", "unreadable", "unchecked")}
    if counts["found"] == len(verdicts):
        print(f"{suite.name}: all {len(verdicts)} datasets found", file=out)
        return 0
    print(f"{suite.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), file=out)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transfer.orchestrate.dataset_check", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="the one folder holding every dataset (the suite's {datasets})")
    p.add_argument("--suite", default="paper", help="suite name or YAML path (default paper)")
    p.add_argument("--var", action="append", default=[], help="other suite variables: NAME=VALUE")
    args = p.parse_args(argv)
    from transfer.orchestrate.suite import parse_vars

    try:
        suite = load_suite(args.suite, {"datasets": args.root, **parse_vars(args.var)})
    except SuiteError as e:
        print(f"dataset_check: error: {e}", file=sys.stderr)
        return 2
    return check_suite(suite)


if __name__ == "__main__":
    sys.exit(main())
