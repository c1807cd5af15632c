"""Family tables in the papers' shape (reports/families.py, reports/family_render.py), from a paper-scale
results file: one record per task of the paper suite and checkpoint group, of every family."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

import latex_check
from reports import build, families, family_render, tables
from reports.results import load_results
from transfer.stats import mean_interval
from transfer.orchestrate.suite import load_suite

# The papers' column orders this report follows, each with its source table. The first list is the
# dataset (group) headers of the family table in order, the second the metric headers in order.
PAPER_ORDERS = {
    # AugSelf (Lee et al., NeurIPS 2021) Table 1, linear evaluation; our suite adds CUB200 and STL-10 after them
    "linear": ("AugSelf Table 1", ["CIFAR-10", "CIFAR-100", "Food", "MIT67", "Pets", "Flowers", "Caltech-101",
                                   "Cars", "Aircraft", "DTD", "SUN397"], None),
    "knn": ("AugSelf Table 1's datasets", ["CIFAR-10", "CIFAR-100", "Food", "MIT67", "Pets", "Flowers",
                                           "Caltech-101", "Cars", "Aircraft", "DTD", "SUN397"], None),
    # AugSelf Table 2, 5-way few-shot: FC100, CUB200, Plant Disease, each 1-shot then 5-shot
    "fewshot": ("AugSelf Table 2", ["FC100", "CUB200", "Plant Disease"], ["1-shot", "5-shot"] * 3),
    # MoCo (He et al., CVPR 2020) Table 2: VOC07+12 AP50, AP, AP75; Table 5: COCO AP^bb, AP^bb_50, AP^bb_75
    "detection": ("MoCo Tables 2 and 5", ["VOC07+12", "COCO C4 1x", "COCO FPN 1x"],
                  ["AP50", "AP", "AP75"] + ["AP^bb", "AP^bb_50", "AP^bb_75"] * 2),
    # MoCo Table 5: COCO AP^mk, AP^mk_50, AP^mk_75
    "instance_segmentation": ("MoCo Table 5", ["COCO C4 1x", "COCO FPN 1x"], ["AP^mk", "AP^mk_50", "AP^mk_75"] * 2),
    # VOC12aug then Cityscapes mIoU (issue 38's listing of the segmentation tables)
    "semantic_segmentation": ("MoCo's segmentation table", ["VOC12aug", "Cityscapes"], None),
    # VICReg (Bardes et al., ICLR 2022) Table 1: linear Top-1 Top-5, semi-supervised 1 % and 10 % Top-1 Top-5
    "imagenet": ("VICReg Table 1", ["ImageNet linear", "Semi-sup. 1%", "Semi-sup. 10%"], ["Top-1", "Top-5"] * 3),
    # VICReg Table 2, linear classification: Places205, VOC07, iNat18
    "linear_transfer": ("VICReg Table 2", ["Places205", "VOC07", "iNat18"], None),
}
GROUPS = {"vicreg": ("vicreg", {}), "mast": ("mast", {}), "dino_r50": (None, {"codebase": "DINO"})}
SKIPPED = "segmentation_cityscapes"  # its dataset is missing: a column that says so
N_ITEMS = 500


def _metrics(task, rng: random.Random) -> tuple[dict, dict]:
    """(metrics, intervals) as each task type writes them (PROTOCOLS.md names)."""
    v = lambda: round(rng.uniform(20, 80), 2)  # noqa: E731
    if task.task == "detection":
        voc = "voc" in task.name
        names = ["AP", "AP50", "AP75"] if voc else [f"{k}_{m}" for k in ("bbox", "segm") for m in ("AP", "AP50", "AP75")]
        return {m: v() for m in names}, {}
    if task.task == "segmentation":
        return {"mIoU": v(), "mAcc": v(), "aAcc": v()}, {}
    if task.task == "svm":  # the VOC07 SVM (transfer.probes.svm)
        x = v()
        return {"mAP": x}, {"mAP": {"lo": x - 1.0, "hi": x + 1.5, "level": 0.95}}
    if task.task == "fewshot":
        metrics = {f"acc_5way_{k}shot": v() for k in (1, 5)}
    elif task.task == "classification":
        metrics = {"top1": v(), "top5": v()}
    elif task.task == "linear":
        metrics = {"top1": v(), "class_avg": v()}
    else:
        metrics = {f"top1_k{k}": v() for k in (10, 20, 100, 200)} | {"class_avg_k20": v()}
    return metrics, {m: {"lo": x - 1.0, "hi": x + 1.5, "level": 0.95} for m, x in metrics.items()}


def _headline(task) -> str | None:
    avg = task.args.get("dataset") in ("pets", "flowers102", "aircraft", "caltech101")
    return {"linear": "class_avg" if avg else "top1", "knn": "class_avg_k20" if avg else "top1_k20",
            "svm": "mAP", "classification": "top1"}.get(task.task)


def _dataset(task) -> str:
    config = str(task.args.get("config", ""))
    if task.task == "detection":
        return "voc_2007_test" if "voc" in config else "coco_2017_val"
    if task.task == "segmentation":
        return next(d for d in ("voc12aug", "cityscapes", "ade20k") if d in config)
    if task.task == "classification":  # the engine's records name the ImageNet protocol they ran
        return {"linear": "imagenet", "semisup_1pct": "imagenet_1pct", "semisup_10pct": "imagenet_10pct",
                "linear_places205": "places205", "linear_inat18": "inat18"}[task.args["protocol"]]
    return str(task.args["dataset"])


def paper_records(root: Path, seed: int = 0) -> list[dict]:
    """Records of every ResNet task of the paper suite for GROUPS, plus ImageNet linear / semi-supervised
    (the classification engine's), in a shuffled order: the columns must come from the papers, not the file."""
    rng = random.Random(seed)
    specs = [t for t in load_suite("paper").tasks if t.backbones != "vit"]
    records = []
    for name, (method, ck_extra) in GROUPS.items():
        sha = hashlib.sha256(name.encode()).hexdigest()
        checkpoint = {"path": f"/ckpts/{name}.pth", "sha256": sha, "arch": "resnet50", "family": "resnet", **ck_extra}
        if method:
            checkpoint["method"] = method
        for task in specs:
            metrics, intervals = _metrics(task, rng)
            rec = {"task": task.task, "task_name": task.name, "dataset": _dataset(task), "scale": "paper",
                   "status": "ok", "metrics": metrics, "intervals": intervals, "name": name, "method": method,
                   "checkpoint": checkpoint, "task_config_hash": "h", "headline": _headline(task)}
            if task.name == "detection_voc07_12_C4":  # MoCo's 5 fine-tuning runs: mean and std
                rec.update(seeds=[0, 1, 2, 3, 4], metrics_std={m: 0.3 for m in metrics})
            if task.name == SKIPPED:
                rec.update(status="skipped", metrics={}, intervals={}, error="dataset not found: cityscapes")
            records.append(rec)
        for key in families.IMAGENET:  # the classification engine's records, where the suite has none
            if any(_dataset(t) == key for t in specs):
                continue
            records.append({"task": "linear" if key == "imagenet" else "semisup", "task_name": f"in1k_{key}",
                            "dataset": key, "scale": "paper", "status": "ok", "name": name, "method": method,
                            "metrics": {"top1": round(rng.uniform(50, 75), 2), "top5": round(rng.uniform(75, 92), 2)},
                            "checkpoint": checkpoint, "task_config_hash": "h"})
        for key in families.LINEAR_TRANSFER:
            if any(_dataset(t) == key for t in specs):  # the paper suite's own (svm_voc07, linear_places205, ...)
                continue
            metric = "mAP" if key == "voc07" else "top1"
            records.append({"task": "svm" if key == "voc07" else "linear", "task_name": f"transfer_{key}",
                            "dataset": key, "scale": "paper", "status": "ok", "name": name, "method": method,
                            "metrics": {metric: round(rng.uniform(40, 85), 2)}, "checkpoint": checkpoint,
                            "task_config_hash": "h", "headline": metric})
    # per-item scores for one task: a difference the table must mark as distinguishable (†)
    truth = np.random.default_rng(0).random(N_ITEMS)
    for rec in records:
        if rec["task_name"] == "linear_cifar10":
            scores = (truth < {"vicreg": 0.5, "mast": 0.7, "dino_r50": 0.52}[rec["name"]]).astype(np.float32)
            rel = f"{rec['name']}/linear_cifar10/predictions.npz"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.savez(root / rel, top1=scores)
            iv = mean_interval(scores)
            rec.update(predictions=rel, metrics={"top1": 100 * iv.value, "class_avg": 100 * iv.value},
                       intervals={"top1": {"lo": 100 * iv.lo, "hi": 100 * iv.hi}})
    rng.shuffle(records)
    return records


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in paper_records(root)))
    return root / "results.jsonl"


@pytest.fixture(scope="module")
def fams(paper):
    return {ft.family.key: ft for ft in families.family_tables(load_results(paper), "vicreg", families.load_references())}


def _headers(ft) -> tuple[list[str], list[str]]:
    return [g for g, _, _ in family_render._groups(ft.columns)], [c.label() for c in ft.columns]


def test_every_family_has_its_table_in_the_papers_column_order(fams):
    assert list(fams) == ["imagenet", "linear_transfer", "detection", "instance_segmentation", "semantic_segmentation", "fewshot",
                          "linear", "knn"]
    for key, (source, datasets, metrics) in PAPER_ORDERS.items():
        groups, labels = _headers(fams[key])
        assert groups[:len(datasets)] == datasets, (key, source, groups)
        if metrics is not None:
            assert labels[:len(metrics)] == metrics, (key, source, labels)
    assert _headers(fams["linear"])[0][11:] == ["CUB200", "STL-10"]  # not in AugSelf's table: after it
    # the linear and kNN tables show each dataset's own metric: mean per-class where the literature does
    linear = {c.dataset: c.metric for c in fams["linear"].columns}
    assert linear["Pets"] == "class_avg" and linear["CIFAR-10"] == "top1"
    assert {c.metric for c in fams["knn"].columns} == {"top1_k20", "class_avg_k20"}


def test_cells_are_compact_with_a_footnote_and_marked_differences(fams, paper):
    results = load_results(paper)
    md = family_render.to_markdown(fams["linear"], results, "vicreg")
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    mast = fams["linear"].table.cells[("mast", 0)]  # column 0: CIFAR-10
    hw = (mast.stat.hi - mast.stat.lo) / 2
    assert rows["mast"].split(" | ")[1] == f"**{mast.value:.1f}**±{hw:.1f}"  # best in the column: bold
    assert rows["Δ vs vicreg"].split(" | ")[1].endswith("†")  # 70 % vs 50 % right on 500 paired items
    assert re.fullmatch(r"\(\+?-?\d+\.\d\)", rows["Δ vs vicreg"].split(" | ")[2])  # no per-item scores: no interval
    assert "±: half-width of the 95% bootstrap interval" in md and "†: its 95% interval excludes 0" in md
    assert "mean per-class: Pets, Flowers, Caltech-101, Aircraft" in md
    det = family_render.to_markdown(fams["detection"], results, "vicreg")
    assert "±: std over fine-tuning runs" in det and "no ±: no interval" in det  # VOC: 5 runs; COCO: 1 run
    assert re.search(r"\| vicreg \| \**\d+\.\d\**±0\.3 \|", det)
    seg = family_render.to_markdown(fams["semantic_segmentation"], results, "vicreg")
    group_rows = [r for r in seg.splitlines() if r.startswith("| ") and not r.startswith(("| method", "| Δ"))]
    assert "| VOC12aug | Cityscapes |" in seg  # a skipped task keeps its column, and it says so
    assert len(group_rows) == len(GROUPS) and all(r.endswith(" | skipped |") for r in group_rows)


def test_references_are_marked_apart_and_only_where_they_have_a_column(fams, paper):
    results = load_results(paper)
    refs = fams["imagenet"].references
    assert [(r.method, r.arch) for r in refs] == [("VICReg", "ResNet-50")]
    assert "Table 1" in refs[0].source and "Table 2" in fams["linear_transfer"].references[0].source
    md = family_render.to_markdown(fams["imagenet"], results, "vicreg")
    last = md.split("\n\n")[0].splitlines()[-1]
    assert last == "| *VICReg ResNet-50 (published)* | *73.2* | *91.1* | *54.8* | *79.4* | *69.5* | *89.5* |"
    tex = family_render.to_latex(fams["imagenet"], results, "vicreg")
    assert tex.split(r"\midrule")[-1].strip().startswith(r"\textit{VICReg ResNet-50 (published)} & \textit{73.2}")
    transfer = family_render.to_markdown(fams["linear_transfer"], results, "vicreg").split("\n\n")[0]
    assert transfer.splitlines()[-1] == "| *VICReg ResNet-50 (published)* | *54.3* | *86.6* | *47.0* |"
    assert not any(ft.references for k, ft in fams.items() if k not in ("imagenet", "linear_transfer"))
    with pytest.raises(ValueError, match="entry 0: expected values"):
        bad = Path(paper).parent / "refs.json"
        bad.write_text(json.dumps([{"method": "X", "arch": "R50", "source": "s", "family": "linear"}]))
        families.load_references(bad)
    bad.write_text("{}")
    with pytest.raises(ValueError, match="expected a JSON list of reference rows, got a dict"):
        families.load_references(bad)


def test_method_names_are_never_a_question_mark(paper, tmp_path):
    index = build.build(paper, tmp_path / "report", baseline="vicreg", command="pytest").read_text()
    rows = [line for line in index.splitlines() if line.startswith("| dino_r50 |")]
    assert rows and rows[0].startswith("| dino_r50 | DINO | resnet50 |")  # the codebase that wrote the file
    assert tables.method_label({}, "my_ckpt") == "my_ckpt"
    assert "| ? |" not in index


def test_reports_build_writes_the_family_tables_and_they_compile(paper, tmp_path):
    build.build(paper, tmp_path / "report", baseline="vicreg", command="pytest")
    md = (tmp_path / "report" / "tables.md").read_text()
    tex = (tmp_path / "report" / "tables.tex").read_text()
    heads = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert heads[:10] == ["Summary: one headline per family", "ImageNet linear and semi-supervised evaluation",
                         "Linear classification transfer (Top-1)", "Object detection", "Instance segmentation", "Semantic segmentation (mIoU)",
                         "Few-shot classification (5-way)", "Linear evaluation (Top-1)", "k-NN classification (top-1, k=20)",
                         "Per-task tables: every metric, full intervals, every seed"]
    summary = md.split("## Summary")[1].split("\n## ")[0]
    table = [line for line in summary.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(GROUPS) and table[0].count(" | ") == 8  # method + one column per family
    found = latex_check.check_structure(tex)
    assert [t["columns"] - 1 for t in found] == [6, 3, 9, 6, 2, 6, 13, 14]  # kNN: ImageNet after AugSelf's 13
    first = tex.splitlines()[0]  # what to \usepackage: the 7+ column tables are \resizebox'ed
    assert r"\usepackage{booktabs}" in first and r"\usepackage{graphicx}" in first
    assert tex.count(r"\resizebox{\textwidth}{!}{%") == 3  # detection (9 columns), linear (13) and kNN (14)
    assert all(t["labels"][0] == "vicreg" for t in found)
    assert r"\multicolumn{3}{c}{VOC07+12}" in tex and r"\cmidrule(lr){2-4}" in tex


def test_tables_tex_compiles_with_pdflatex(paper, tmp_path):
    if latex_check.pdflatex() is None:
        pytest.skip("no pdflatex on this machine (Debian: apt-get install texlive-latex-base "
                    "texlive-latex-recommended); the structure is checked by the test above")
    build.build(paper, tmp_path / "report", baseline="vicreg", command="pytest")
    ok, log = latex_check.compile_pdf(tmp_path / "report" / "tables.tex", tmp_path / "latex")
    assert ok, log


def test_a_vit_row_names_the_protocol_it_ran(paper, tmp_path):
    """A ViT's ImageNet linear row ran its codebase's protocol (transfer/classification/vit.py): the Table-1
    footnote says which, for that row only; a table without such a row says nothing of it."""
    records = [json.loads(line) for line in paper.read_text().splitlines()]
    linear = next(r for r in records if r["name"] == "dino_r50" and r["task_name"] == "linear_imagenet")
    vit = {**linear, "name": "dino_vits16", "checkpoint": {**linear["checkpoint"], "family": "vit", "sha256": "v" * 64},
           "vit_protocol": {"config": "vit_linear_imagenet_dino_eval_linear.py", "pool": "cls",
                            "source": "facebookresearch/dino eval_linear.py @ 7c446df", "last_blocks": 4}}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*records, vit]))
    results = load_results(tmp_path / "results.jsonl")
    fams = {ft.family.key: ft for ft in families.family_tables(results, "vicreg")}
    md = family_render.to_markdown(fams["imagenet"], results, "vicreg")
    assert ("ViT rows ran their codebase's own protocol: dino_vits16, ImageNet linear: facebookresearch/dino "
            "eval_linear.py @ 7c446df (pooling: cls of the last 4 blocks)") in md
    assert fams["imagenet"].protocols == [md.split("own protocol: ")[1].split(";")[0]]  # that row alone
    assert not any(ft.protocols for key, ft in fams.items() if key != "imagenet")
    assert "own protocol" not in family_render.to_markdown(fams["linear"], results, "vicreg")
    tex = family_render.to_latex(fams["imagenet"], results, "vicreg")
    assert r"dino\_vits16, ImageNet linear: facebookresearch/dino eval\_linear.py" in tex
    latex_check.check_structure(tex)
