"""Tables in the papers' shape: one table per task family, methods as rows, datasets × headline
metrics as columns in the order the papers print them.

A task joins the first :data:`FAMILIES` entry whose record task types (and, for a family restricted
to some datasets, whose dataset) it matches; a task type no family names gets a family of its own.
Within a family, datasets follow the family's paper order (:attr:`Family.order`); a dataset the
paper does not have comes after them, in the order the results list it. Each dataset shows the
metrics the paper shows for it (:func:`_metrics`). A task without a result (skipped, failed) keeps
its column, and its cells say why. The numbers are the per-task tables' numbers (the same
:class:`reports.tables.Cell`); :mod:`reports.family_render` prints them compactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from reports.cells import Table, build_table
from reports.results import Results, headline_metric, metric_names

REFERENCES = Path(__file__).with_name("references.json")


@dataclass(frozen=True)
class Family:
    key: str
    title: str
    types: tuple[str, ...]  # record ``task`` values it holds
    order: tuple[str, ...] = ()  # dataset keys in the papers' column order
    source: str = ""  # the paper table(s) that order follows
    datasets: tuple[str, ...] | None = None  # only these dataset keys (None: any dataset of its types)
    short: str = ""  # the summary's column header

    @property
    def name(self) -> str:
        return self.short or self.title


# AugSelf Table 1's datasets, then the suite's two it does not have (CUB200, STL-10)
LINEAR_ORDER = ("cifar10", "cifar100", "food101", "mit67", "pets", "flowers102", "caltech101", "cars",
                "aircraft", "dtd", "sun397", "cub200", "stl10")
IMAGENET = ("imagenet", "imagenet_1pct", "imagenet_10pct")
# the demo's synthetic twin of Table 1 (mast/data/imagenet_like.py; transfer/suites/demo.yaml): its own table
IMAGENET_TWIN = ("synthetic/imagenet_like", "synthetic/imagenet_like_1pct")
LINEAR_TRANSFER = ("places205", "voc07", "inat18")  # VICReg Table 2's linear classification columns
FAMILIES = (
    Family("imagenet", "ImageNet linear and semi-supervised evaluation", ("linear", "classification", "semisup"),
           IMAGENET, "VICReg (Bardes et al., ICLR 2022) Table 1", datasets=IMAGENET, short="ImageNet"),
    Family("imagenet_twin", "ImageNet protocols on the synthetic twin (demo scale, never a paper number)",
           ("classification",), IMAGENET_TWIN, "VICReg Table 1's linear and 1 % columns, run by the same engine at "
           "CPU size on synthetic/imagenet_like", datasets=IMAGENET_TWIN, short="ImageNet twin"),
    Family("linear_transfer", "Linear classification transfer", ("linear", "classification", "svm"), LINEAR_TRANSFER,
           "VICReg (Bardes et al., ICLR 2022) Table 2", datasets=LINEAR_TRANSFER, short="Linear transfer"),
    Family("detection", "Object detection", ("detection",), ("voc_2007_test", "coco_2017_val"),
           "MoCo (He et al., CVPR 2020) Table 2 (VOC07+12) and Table 5 (COCO)", short="Detection"),
    Family("instance_segmentation", "Instance segmentation", ("detection",), ("coco_2017_val",),
           "MoCo (He et al., CVPR 2020) Table 5 (COCO)", short="Instance seg."),
    Family("semantic_segmentation", "Semantic segmentation", ("segmentation",), ("voc12aug", "cityscapes", "ade20k"),
           "MoCo (He et al., CVPR 2020): VOC, then Cityscapes; ADE20K (ViTs, MAE) after", short="Semantic seg."),
    Family("fewshot", "Few-shot classification (5-way)", ("fewshot",), ("fc100", "cub200", "plant_disease"),
           "AugSelf (Lee et al., NeurIPS 2021) Table 2", short="Few-shot"),
    Family("linear", "Linear evaluation", ("linear",), LINEAR_ORDER, "AugSelf (Lee et al., NeurIPS 2021) Table 1",
           short="Linear"),
    Family("knn", "k-NN classification", ("knn",), LINEAR_ORDER, "AugSelf Table 1's datasets (kNN: DINO's protocol)",
           short="kNN"),
)

# Dataset names as the papers write them (records store the registry key or the detectron2 test split).
DATASET_LABELS = {
    "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "food101": "Food", "mit67": "MIT67", "pets": "Pets",
    "flowers102": "Flowers", "caltech101": "Caltech-101", "cars": "Cars", "aircraft": "Aircraft", "dtd": "DTD",
    "sun397": "SUN397", "cub200": "CUB200", "stl10": "STL-10", "fc100": "FC100", "plant_disease": "Plant Disease",
    "voc_2007_test": "VOC07+12", "coco_2017_val": "COCO", "voc12aug": "VOC12aug", "cityscapes": "Cityscapes",
    "ade20k": "ADE20K", "imagenet": "ImageNet linear", "imagenet_1pct": "Semi-sup. 1%",
    "imagenet_10pct": "Semi-sup. 10%", "synthetic/imagenet_like": "Twin linear",
    "synthetic/imagenet_like_1pct": "Twin semi-sup. \"1%\"", "places205": "Places205", "voc07": "VOC07",
    "inat18": "iNat18",
}
# Metric names as the papers write them: (Markdown, LaTeX).
METRIC_LABELS = {
    "AP": ("AP", "AP"), "AP50": ("AP50", r"AP$_{50}$"), "AP75": ("AP75", r"AP$_{75}$"),
    "bbox_AP": ("AP^bb", r"AP$^{\rm bb}$"), "bbox_AP50": ("AP^bb_50", r"AP$^{\rm bb}_{50}$"),
    "bbox_AP75": ("AP^bb_75", r"AP$^{\rm bb}_{75}$"), "segm_AP": ("AP^mk", r"AP$^{\rm mk}$"),
    "segm_AP50": ("AP^mk_50", r"AP$^{\rm mk}_{50}$"), "segm_AP75": ("AP^mk_75", r"AP$^{\rm mk}_{75}$"),
    "top1": ("Top-1", "Top-1"), "top5": ("Top-5", "Top-5"), "class_avg": ("mean per-class", "mean per-class"),
    "top1_k20": ("top-1, k=20", r"top-1, $k$=20"), "class_avg_k20": ("mean per-class, k=20", r"mean per-class, $k$=20"),
}
_BBOX = ("bbox_AP", "bbox_AP50", "bbox_AP75")
_SEGM = ("segm_AP", "segm_AP50", "segm_AP75")


@dataclass(frozen=True)
class Column:
    task: str
    metric: str | None  # None: the task has no result to take a metric from (its cells say why)
    dataset: str  # the group header: the dataset as the papers write it (+ variant, + [smoke])
    key: str  # dataset key (reference rows match on it)

    def label(self, tex: bool = False) -> str:
        shot = re.fullmatch(r"acc_(\d+)way_(\d+)shot", self.metric or "")
        if shot:  # the title says 5-way (AugSelf's protocol); another way count is spelled out
            return f"{shot[2]}-shot" if shot[1] == "5" else f"{shot[1]}-way {shot[2]}-shot"
        return METRIC_LABELS.get(self.metric or "", (self.metric or "", self.metric or ""))[int(tex)]


@dataclass(frozen=True)
class Reference:
    """A published row: a method's numbers from a paper table, shown apart and never compared."""
    method: str
    arch: str
    source: str
    family: str
    values: dict  # dataset key -> {metric: value}

    def value(self, column: Column) -> float | None:
        v = (self.values.get(column.key) or {}).get(column.metric or "")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class FamilyTable:
    family: Family
    columns: list[Column]
    table: Table  # group rows: the cells of (task, metric) per column
    references: list[Reference] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)  # "row, column: source" where a ViT ran its codebase's own


def vit_protocols(results: Results, columns: list[Column]) -> list[str]:
    """Rows whose record ran a ViT codebase's own protocol (``vit_protocol``: DINO eval_linear, MAE
    main_linprobe) instead of the family's ResNet one, each as ``row, column: source (pooling)``."""
    out = []
    for column in dict.fromkeys((c.task, c.dataset) for c in columns):
        for name in results.names:
            protocol = (results.get(name, column[0]) or {}).get("vit_protocol")
            if isinstance(protocol, dict):
                pool = protocol.get("pool")
                n = protocol.get("last_blocks")
                blocks = f" of the last {n} blocks" if isinstance(n, int) and n > 1 else ""
                where = f" (pooling: {pool}{blocks})" if pool else ""
                out.append(f"{name}, {column[1]}: {protocol.get('source') or protocol.get('config')}{where}")
    return out


def _task_type(results: Results, task: str) -> str:
    return next((str(r.get("task")) for (_, t), r in results.records.items() if t == task and r.get("task")), task)


def dataset_key(results: Results, task: str) -> str:
    """The record's dataset (``cifar10``, ``coco_2017_val``, ``synthetic/shape``), else the task name."""
    return next((str(r["dataset"]) for (_, t), r in results.records.items() if t == task and r.get("dataset")), task)


def family_of(results: Results, task: str, families: tuple[Family, ...] = FAMILIES) -> Family:
    kind, key = _task_type(results, task), dataset_key(results, task)
    for family in families:  # a detection task's mask AP joins instance segmentation in family_tables
        if family.key != "instance_segmentation" and kind in family.types \
                and (family.datasets is None or key in family.datasets):
            return family
    return Family(kind, kind.replace("_", " ").capitalize(), (kind,))


def _metrics(results: Results, task: str, family: Family) -> list[str]:
    """The metrics a family's paper shows for one task, in its order; [] when the task has none."""
    names = metric_names(results, task)
    if family.key == "detection":
        voc = [m for m in ("AP50", "AP", "AP75") if m in names]
        return voc or [m for m in _BBOX if m in names]
    if family.key == "instance_segmentation":
        return [m for m in _SEGM if m in names]
    if family.key in ("imagenet", "imagenet_twin"):
        return [m for m in ("top1", "top5") if m in names] or names[:1]
    if family.key == "fewshot":
        shots = [m for m in names if re.fullmatch(r"acc_\d+way_\d+shot", m)]
        return sorted(shots, key=lambda m: tuple(int(x) for x in re.findall(r"\d+", m)))
    if family.key == "semantic_segmentation":
        return [m for m in ("mIoU",) if m in names]
    head = headline_metric(results, task)
    return [head] if head else []


def _label(key: str, family: Family | None = None) -> str:
    if key == "imagenet" and family is not None and family.key != "imagenet":
        return "ImageNet"  # kNN on ImageNet: "ImageNet linear" names Table 1's column only
    return DATASET_LABELS.get(key) or key.split("/")[-1]  # synthetic/shape -> shape


def _variant(task: str, kind: str, key: str) -> str:
    """What tells two tasks of one dataset apart: the task name less its type and dataset words
    (``detection_coco_FPN_1x`` -> ``FPN 1x``)."""
    drop = {kind, *re.split(r"[_/]", key), "coco", "voc07", "voc", "12"}
    return " ".join(t for t in task.split("_") if t.lower() not in drop) or task


def family_columns(results: Results, family: Family, tasks: list[str]) -> list[Column]:
    """The family's columns: datasets in the papers' order, then the others as the results list them."""
    base = {t: t.split(" [")[0] for t in tasks}
    keys = {t: dataset_key(results, t) for t in tasks}
    labels = {t: _label(keys[t], family) for t in tasks}
    shared = [t for t in tasks if any(labels[u] == labels[t] and base[u] != base[t] for u in tasks)]
    for t in shared:  # two tasks on one dataset (COCO C4 and FPN): each says which
        labels[t] = f"{labels[t]} {_variant(base[t], _task_type(results, t), keys[t])}"
    seen = list(dict.fromkeys(keys[t] for t in tasks))  # datasets no paper orders: as the results list them
    rank = {t: (family.order.index(keys[t]) if keys[t] in family.order else len(family.order),
                seen.index(keys[t]), base[t], t) for t in tasks}
    columns = []
    for t in sorted(tasks, key=rank.get):
        tag = t[len(base[t]):]  # " [smoke]", " [config 1a2b3c]": never a paper number
        columns += [Column(t, m, labels[t] + tag, keys[t]) for m in (_metrics(results, t, family) or [None])]
    return columns


def family_tables(results: Results, baseline: str | None, references: list[Reference] | None = None
                  ) -> list[FamilyTable]:
    """One :class:`FamilyTable` per family that has a task in ``results``, in :data:`FAMILIES` order."""
    members: dict[str, tuple[Family, list[str]]] = {}
    for task in results.tasks:
        fam = family_of(results, task)
        members.setdefault(fam.key, (fam, []))[1].append(task)
        if fam.key == "detection":  # Mask R-CNN tasks: their mask AP is the instance segmentation table's
            inst = next(f for f in FAMILIES if f.key == "instance_segmentation")
            if _metrics(results, task, inst):
                members.setdefault(inst.key, (inst, []))[1].append(task)
    order = [f.key for f in FAMILIES]
    out = []
    for key in sorted(members, key=lambda k: (order.index(k) if k in order else len(order), k)):
        fam, tasks = members[key]
        columns = family_columns(results, fam, tasks)
        table = build_table(results, [(c.task, c.metric) for c in columns], baseline, fam.title)
        refs = [r for r in (references or []) if r.family == fam.key and any(r.value(c) is not None for c in columns)]
        out.append(FamilyTable(fam, columns, table, refs, vit_protocols(results, columns)))
    return out


def load_references(path: str | Path = REFERENCES) -> list[Reference]:
    """The published rows of ``path`` (reports/references.json): a list of objects with method, arch,
    source (paper and table), family and values {dataset key: {metric: number}}."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable reference rows ({type(e).__name__}); expected a JSON list") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of reference rows, got a {type(rows).__name__}")
    need = {"method": str, "arch": str, "source": str, "family": str, "values": dict}
    out = []
    for i, row in enumerate(rows):
        bad = [k for k, t in need.items() if not isinstance(row.get(k) if isinstance(row, dict) else None, t)]
        if bad:
            raise ValueError(f"{path}: entry {i}: expected {', '.join(f'{k} ({need[k].__name__})' for k in bad)}")
        out.append(Reference(row["method"], row["arch"], row["source"], row["family"], row["values"]))
    return out
