"""docs/COMPUTE.md: the GPU-hours a paper-scale run needs, estimated from the engines' published figures.

    python -m reports.compute            # write docs/COMPUTE.md
    python -m reports.compute --check    # exit 1 (one line) when docs/COMPUTE.md is not what this writes

The figures and their sources are data (reports/compute_sources.yaml); the work each job does (iterations,
batch, crop, epochs, images, seeds) is read from the project's own configs and transfer/suites/paper.yaml,
so a changed schedule changes the estimate. Nothing here is measured: the project had no GPU.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from plumbing.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "reports" / "compute_sources.yaml"
SUITE = REPO / "transfer" / "suites" / "paper.yaml"
DOC = REPO / "docs" / "COMPUTE.md"
PROBE_TASKS = ("fewshot", "linear", "knn")  # the suite's cached-feature probe tasks (the "probes" row)


@dataclass
class Work:
    """What one job does, read from the project's configs."""
    text: str  # how the work is described in the table
    iterations: int = 0  # per run
    batch: int = 0  # images per iteration
    runs: int = 1  # seeds
    pixels: int = 0  # crop pixels, 0 when the figure needs none
    images: int = 0  # training images seen (img_per_s)
    val_images: int = 0  # validation images seen (img_per_s)
    epochs: int = 0  # (hours_per_epoch)


def detectron2_work(config: Path, seeds: int) -> Work:
    """Iterations and batch of a detectron2 yaml or (ViTDet) LazyConfig file."""
    if config.suffix == ".py":  # a LazyConfig: importing it needs detectron2, the two assignments do not
        text = config.read_text()
        found = [re.search(rf"^{key}\s*=\s*(\d+)", text, re.M) for key in
                 (r"train\.max_iter", r"dataloader\.train\.total_batch_size")]
        if not all(found):
            raise ValueError(f"{config}: expected 'train.max_iter = N' and 'dataloader.train.total_batch_size = N'")
        iters, batch = (int(m.group(1)) for m in found)
    else:
        from detectron2.config import get_cfg  # detectron2's own _BASE_ merge and defaults

        cfg = get_cfg()
        cfg.merge_from_file(str(config), allow_unsafe=False)
        iters, batch = int(cfg.SOLVER.MAX_ITER), int(cfg.SOLVER.IMS_PER_BATCH)
    runs = f" x {seeds} seeds" if seeds > 1 else ""
    return Work(f"{iters:,} iter x {batch} img{runs}", iterations=iters, batch=batch, runs=seeds)


def _mm_config(path: Path) -> Any:
    from mmengine.config import Config  # reads the file and its _base_ chain; registers nothing
    return Config.fromfile(str(path))


def mmseg_work(config: Path) -> Work:
    cfg = _mm_config(config)
    iters, batch, crop = int(cfg.train_cfg["max_iters"]), int(cfg.global_batch), tuple(cfg.crop_size)
    return Work(f"{iters:,} iter x {batch} img, {crop[0]}x{crop[1]} crop", iterations=iters, batch=batch,
                pixels=crop[0] * crop[1])


def classification_work(config: Path, datasets: dict[str, Any], seeds: int = 1) -> Work:
    """Images seen in training (epochs x the train split, or the shipped subset list) and in validation, per
    fine-tuning seed (``runs``)."""
    cfg = _mm_config(config)
    epochs, name, subset = int(cfg.train_cfg["max_epochs"]), cfg.dataset_name, cfg.get("subset")
    sizes = datasets[name]
    train = sizes["train"]
    if subset:  # SimCLR's list, shipped: its length is the training set
        train = len((REPO / "transfer" / "imagenet_subsets" / f"{subset}.txt").read_text().split())
    rounds = epochs // int(cfg.train_cfg.get("val_interval", 1))
    text = f"{epochs} ep x {train:,} img + {rounds} val x {sizes['val']:,}" + (f", x {seeds} seeds" if seeds > 1 else "")
    return Work(text, images=epochs * train, val_images=rounds * sizes["val"], epochs=epochs,
                iterations=epochs * math.ceil(train / int(cfg.global_batch)), batch=int(cfg.global_batch), runs=seeds)


def pretrain_work(config: Path) -> Work:
    optim = yaml.safe_load(config.read_text())["optim"]
    return Work(f"{optim['epochs']} ep, batch {optim['batch_size']}", epochs=int(optim["epochs"]))


def job_work(job: dict[str, Any], task: dict[str, Any] | None, datasets: dict[str, Any]) -> Work | None:
    """The work of ``job`` from the configs; None for a job without a figure."""
    kind = job["figure"]["kind"]
    if kind == "none":
        return None
    if job["job"] == "knn_imagenet":
        imagenet = datasets["imagenet"]
        return Work(f"1 pass x {imagenet['train'] + imagenet['val']:,} img",
                    images=imagenet["train"] + imagenet["val"])
    if task is None:  # pretraining: not a suite task
        return pretrain_work(REPO / job["config"])
    args = task.get("args", {})
    if task["task"] == "detection":
        return detectron2_work(REPO / args["config"], len(args.get("seeds", [0])))
    if task["task"] == "segmentation":
        return mmseg_work(REPO / args["config"])
    if task["task"] == "classification":
        return classification_work(REPO / job["config"], datasets, len(args.get("seeds", [0])))
    raise ValueError(f"{SOURCES.name}: job {job['job']}: no rule reads the work of a {task['task']!r} task")


def gpu_hours(figure: dict[str, Any], work: Work) -> float:
    """GPU-hours of ``work`` at the published ``figure`` (compute_sources.yaml's header gives each formula)."""
    kind = figure["kind"]
    if kind == "s_per_iter":
        per_image = figure["value"] * figure["gpus"] / figure["batch"]  # GPU-seconds per image
        ratio = work.pixels / math.prod(figure["pixels"]) if "pixels" in figure else 1.0
        return work.runs * work.iterations * work.batch * per_image * ratio / 3600
    if kind == "img_per_s":
        val = work.val_images / figure["val_img_per_s"] if work.val_images else 0.0
        return work.runs * (work.images / figure["value"] + val) / 3600
    if kind == "hours_per_epoch":
        return work.epochs * figure["value"] * figure["gpus"]
    raise ValueError(f"{SOURCES.name}: figure kind {kind!r} is not one of s_per_iter, img_per_s, hours_per_epoch, none")


@dataclass
class Row:
    job: str
    family: str  # "vit" for ViT-only tasks, "resnet" otherwise, "pretrain"
    work: Work | None
    hours: float | None
    job_spec: dict[str, Any]


def load(sources: Path = SOURCES, suite: Path = SUITE) -> tuple[dict[str, Any], list[Row], list[str]]:
    """The data file, one row per job, and the suite's probe tasks the "probes" row stands for."""
    data = yaml.safe_load(sources.read_text())
    tasks = {t["name"]: t for t in yaml.safe_load(suite.read_text())["tasks"]}
    named = {j["job"] for j in data["jobs"]}
    probes = [n for n, t in tasks.items() if n not in named and t["task"] in PROBE_TASKS]
    missing = sorted(set(tasks) - named - set(probes))
    if missing:
        raise ValueError(f"{sources.name}: paper-suite tasks with no job row: {', '.join(missing)}")
    rows = []
    for job in data["jobs"]:
        name, kind = job["job"], job["figure"]["kind"]
        if kind != "none" and job.get("source") not in data["sources"]:
            raise ValueError(f"{sources.name}: job {name}: source {job.get('source')!r} is not one of "
                             f"{', '.join(data['sources'])}")
        task = tasks.get(name)
        family = "pretrain" if task is None and name != "probes" else \
            "vit" if task is not None and task.get("backbones") == "vit" else "resnet"
        work = job_work(job, task, data["datasets"])
        rows.append(Row(name, family, work, None if work is None else gpu_hours(job["figure"], work), job))
    return data, rows, probes


def _h(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 10 else f"{hours:.1f}"


def _source_cell(data: dict[str, Any], job: dict[str, Any]) -> str:
    if job["figure"]["kind"] == "none":
        return "no published figure"
    src = data["sources"][job["source"]]
    where = f"{src['repo']} `{src['path']}` @ {src['commit'][:7]}" if "repo" in src else src["paper"]
    return f"{job['row']} ({where})"


def _totals(data: dict[str, Any], rows: list[Row]) -> list[str]:
    """One line per (family, GPU): the sum, and how much of it stands on proxies."""
    out = []
    labels = {"resnet": "ResNet-50 checkpoint, every transfer task it runs",
              "vit": "ViT-B checkpoint, the ViT-only tasks", "pretrain": "pretraining one checkpoint"}
    for family, label in labels.items():
        mine = [r for r in rows if r.family == family]
        gpus = sorted({data["sources"][r.job_spec["source"]]["gpu"] for r in mine if r.hours is not None})
        for gpu in gpus:
            counted = [r for r in mine if r.hours is not None and data["sources"][r.job_spec["source"]]["gpu"] == gpu]
            total = sum(r.hours for r in counted)
            proxy = sum(r.hours for r in counted if r.job_spec["match"] == "proxy")
            share = f"{_h(proxy)} of them from proxy figures" if proxy else "none from proxy figures"
            jobs = f"{len(counted)} job" + ("s" if len(counted) > 1 else "")
            out.append(f"- **{label}: about {_h(total)} {gpu} GPU-hours** ({share}; {jobs})")
        left = [r.job for r in mine if r.hours is None]
        if left:
            out.append(f"  - not in this total (no published figure): {', '.join(left)}")
    return out


def render(data: dict[str, Any], rows: list[Row], probes: list[str]) -> str:
    lines = [
        "# Compute for a paper-scale run (estimate)", "",
        "**Estimate, from the engines' published figures, not measured here**: this project had no GPU when",
        "this was written. Generated by `python -m reports.compute` from `reports/compute_sources.yaml` (each",
        "figure, its GPU and its source) and the project's own configs (iterations, batch, crop, epochs,",
        "seeds, read from `transfer/suites/paper.yaml` and the files it names); `make test` checks that this",
        "file is what the generator writes. Edit the data file, not this page.", "",
        "GPU-hours = iterations x batch x (published s/iter x GPUs / published batch) x crop-pixel ratio / 3600",
        "for iteration figures; images seen / published single-GPU img/s / 3600 for throughput figures;",
        "epochs x published hours per epoch x GPUs for the pretraining figure. *Match*: `same` = the",
        "published model and schedule are the project's; `close` = same model, another schedule or",
        "normalisation (named in the note); `proxy` = a figure for another model or engine, the closest",
        "published one.", "",
        "| Job | Work (project config) | GPU-hours | GPU | Match | Published figure (source) | Note |",
        "|---|---|--:|---|---|---|---|",
    ]
    for r in rows:
        spec = r.job_spec
        gpu = data["sources"][spec["source"]]["gpu"] if r.hours is not None else "-"
        work = r.work.text if r.work else "-"
        hours = _h(r.hours) if r.hours is not None else "-"
        lines.append(f"| {r.job} | {work} | {hours} | {gpu} | {spec.get('match', '-')} | "
                     f"{_source_cell(data, spec)} | {spec['note']} |")
    lines += ["", f"The `probes` row stands for {len(probes)} suite tasks: {', '.join(probes)}.", "",
              "## Totals (the paper suite on one checkpoint)", "", *_totals(data, rows), "",
              "Not in any total: evaluation passes of detection and segmentation, data-loading stalls, losses",
              "to multi-GPU scaling (the throughput figures are single-GPU), CPU time (SVM, L-BFGS probes), and",
              "conversion to other GPUs: an H100 is faster than the V100/A100 the figures were taken on by a",
              "factor that depends on precision and the input pipeline, so no factor is applied here.", "",
              "## Sources", ""]
    for key, src in data["sources"].items():
        where = f"`{src['repo']}` `{src['path']}` at commit `{src['commit']}`" if "repo" in src else src["paper"]
        lines.append(f"- `{key}` ({src['gpu']}): {where}. It says: \"{src['says']}\".")
    lines += ["", "Dataset sizes (classification jobs): " + "; ".join(
        f"{k} {v['train']:,} train / {v['val']:,} val ({v['source']})" for k, v in data["datasets"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.compute", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when docs/COMPUTE.md differs from the generated text")
    p.add_argument("--out", type=Path, default=DOC, help="where to write (default docs/COMPUTE.md)")
    args = p.parse_args(argv)
    try:
        text = render(*load())
    except (ValueError, KeyError, OSError) as e:
        print(f"reports.compute: {e}", file=sys.stderr)
        return 2
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"reports.compute: {args.out} is not what `python -m reports.compute` writes; rerun it", file=sys.stderr)
            return 1
        return 0
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
