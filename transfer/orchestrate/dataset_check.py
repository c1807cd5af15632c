"""Is every dataset of a suite on disk? Per task: found, or the exact path expected and how to make it.

    python -m transfer.orchestrate.dataset_check --root /data [--suite paper]
    python transfer/run_all.py --suite paper --check --var datasets=/data

Detection reads the detectron2 config's dataset names (builtin COCO/VOC layouts under
``$DETECTRON2_DATASETS``, which run_all sets from the suite unless the user did); segmentation the
mmseg config's data roots, folders and split files; probes their ``--data`` folder. Nothing is
imported from the task packages' engines, so the check takes a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transfer.suite import Suite, SuiteError, TaskSpec, load_suite, project_path

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

    config = yaml.safe_load(project_path(spec.args["config"]).read_text()) or {}
    names = _tuple_names(config)
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


def task_paths(spec: TaskSpec) -> tuple[list[Path], str]:
    if spec.task == "detection":
        return detection_paths(spec)
    if spec.task == "segmentation":
        return segmentation_paths(spec)
    data = Path(str(spec.args.get("data", "")))
    return [data], "an ImageFolder tree <split>/<class>/<image> (PROTOCOLS.md); see transfer/probes"


def check_suite(suite: Suite, out=sys.stdout) -> int:
    """Print one line per task (found / missing PATH; hint); 0 when everything is there, else 1."""
    missing_any = False
    for spec in suite.tasks:
        paths, hint = task_paths(spec)
        missing = [p for p in paths if not p.exists()]
        if missing:
            missing_any = True
            print(f"{spec.name}: missing {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                  + (f"; {hint}" if hint else ""), file=out)
        else:
            print(f"{spec.name}: found ({', '.join(map(str, paths[:2]))}{', ...' if len(paths) > 2 else ''})", file=out)
    n = sum(1 for _ in suite.tasks)
    print(f"{suite.name}: {'some datasets missing' if missing_any else f'all {n} datasets found'}", file=out)
    return 1 if missing_any else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transfer.orchestrate.dataset_check", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="the one folder holding every dataset (the suite's {datasets})")
    p.add_argument("--suite", default="paper", help="suite name or YAML path (default paper)")
    p.add_argument("--var", action="append", default=[], help="other suite variables: NAME=VALUE")
    args = p.parse_args(argv)
    from transfer.suite import parse_vars

    try:
        suite = load_suite(args.suite, {"datasets": args.root, **parse_vars(args.var)})
    except SuiteError as e:
        print(f"dataset_check: error: {e}", file=sys.stderr)
        return 2
    return check_suite(suite)


if __name__ == "__main__":
    sys.exit(main())
