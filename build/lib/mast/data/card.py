"""Dataset card for the synthetic benchmark: counts and raw-pixel baselines (card.json + CARD.md).

The baseline is multinomial logistic regression on standardised 16x16 RGB thumbnails (768 raw
pixel features), with its inverse regularisation C chosen on the val split from a fixed grid. It
says how far each task is from being solvable without a learned representation.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from plumbing.atomic import write_text_atomic
from mast.data.scenes import SHAPES, TASKS

C_GRID = (0.001, 0.01, 0.1, 1.0)


def _split_features(jobs: list[tuple], results: list[Any], task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[list, list]] = {}
    for job, feats in zip(jobs, results):
        if job[2] == "labelled" and job[4] == task:
            xs, ys = out.setdefault(job[0].split("/")[1], ([], []))
            xs.append(feats)
            ys.append(job[5])
    return {s: (np.stack(x).astype(np.float32) / 255.0, np.array(y)) for s, (x, y) in out.items()}


def raw_pixel_accuracy(data: dict[str, tuple[np.ndarray, np.ndarray]], fit: str, select: str,
                       evaluate: str) -> dict[str, Any]:
    """Fit on ``fit`` for each C, pick C by accuracy on ``select``, report accuracy (%) on ``evaluate``."""
    (x_fit, y_fit), (x_sel, y_sel), (x_ev, y_ev) = data[fit], data[select], data[evaluate]
    scaler = StandardScaler().fit(x_fit)
    best = None
    for c in C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=100).fit(scaler.transform(x_fit), y_fit)
        score = model.score(scaler.transform(x_sel), y_sel)
        if best is None or score > best[0]:
            best = (score, c, model)
    _, c, model = best
    acc = 100.0 * model.score(scaler.transform(x_ev), y_ev)
    return {"accuracy": round(acc, 2), "C": c, "fit_split": fit, "eval_split": evaluate,
            "chance": round(100.0 / len(np.unique(y_ev)), 2)}


def build_card(spec: Any, jobs: list[tuple], results: list[Any]) -> dict[str, Any]:
    """Counts per task/split/class and per scene split, plus the raw-pixel baselines."""
    per_stream = Counter(job[0] for job in jobs)
    classification: dict[str, Any] = {}
    for task, names in TASKS.items():
        classification[task] = {}
        for split in ("train", "val", "test"):
            per_class = Counter(names[job[5]] for job in jobs if job[0] == f"{task}/{split}")
            classification[task][split] = {"images": sum(per_class.values()), "classes": len(per_class),
                                           "per_class": dict(sorted(per_class.items()))}
    scene_counts = {}
    for split in ("train", "val"):
        anns = [a for job, res in zip(jobs, results) if job[0] == f"scenes/{split}" for a in res]
        cats = Counter(SHAPES[a["category_id"] - 1] for a in anns)
        scene_counts[split] = {"images": per_stream[f"scenes/{split}"], "instances": len(anns),
                               "instances_per_category": {s: cats.get(s, 0) for s in SHAPES}}
    accuracy, details = {}, {}
    # limits the BLAS libraries loaded by now (sklearn/scipy are imported above): more threads
    # only oversubscribe the CPU these small fits share, and one thread keeps the fits reproducible
    with threadpool_limits(limits=1):
        for task in TASKS if spec.card_baseline else ():
            data = _split_features(jobs, results, task)
            # shape_color's train classes are disjoint from val/test: fit on val (held-out classes).
            fit, select = ("val", "val") if task == "shape_color" else ("train", "val")
            details[task] = raw_pixel_accuracy(data, fit, select, "test")
            accuracy[task] = details[task]["accuracy"]
    return {
        "name": "mast-synthetic", "spec": spec.content(),
        "counts": {"images": len(jobs), "unlabeled": per_stream["unlabeled"],
                   "classification": classification, "scenes": scene_counts},
        "classes": {task: list(names) for task, names in TASKS.items()},
        "categories": {i + 1: name for i, name in enumerate(SHAPES)},
        "raw_pixel_logreg": {"features": "16x16 RGB box-downsampled, standardised", "C_grid": list(C_GRID),
                             "accuracy": accuracy, "details": details},
    }


def card_markdown(card: dict[str, Any]) -> str:
    """Human-readable CARD.md from the card dict."""
    spec, counts = card["spec"], card["counts"]
    lines = [f"# MAST synthetic benchmark (seed {spec['seed']}, {spec['size']}x{spec['size']} px)", "",
             f"{counts['images']} images; {counts['unlabeled']} unlabeled (pretraining).",
             "Field descriptions: mast/data/README.md.", "",
             "## Classification tasks (images per split, classes in brackets)", "",
             "| task | train | val | test | raw-pixel logreg test acc. (%) | chance (%) |",
             "|---|---|---|---|---|---|"]
    for task, splits in counts["classification"].items():
        det = card["raw_pixel_logreg"]["details"].get(task)
        cells = [f"{splits[s]['images']} ({splits[s]['classes']})" for s in ("train", "val", "test")]
        acc = "not computed | -" if det is None else f"{det['accuracy']:.1f} | {det['chance']:.1f}"
        lines.append(f"| {task} | {' | '.join(cells)} | {acc} |")
    lines += ["", "Raw-pixel baseline: " + card["raw_pixel_logreg"]["features"] + "; C chosen on val from "
              f"{card['raw_pixel_logreg']['C_grid']}. shape_color is fitted on val (its held-out classes) "
              "because its train classes are disjoint from test.", "", "## Scenes (detection / segmentation)", "",
              "| split | images | instances |", "|---|---|---|"]
    for split, c in counts["scenes"].items():
        lines.append(f"| {split} | {c['images']} | {c['instances']} |")
    return "\n".join(lines) + "\n"


def write_card(out: Path, card: dict[str, Any]) -> None:
    """Write card.json and CARD.md atomically."""
    write_text_atomic(Path(out) / "card.json", json.dumps(card, indent=1) + "\n")
    write_text_atomic(Path(out) / "CARD.md", card_markdown(card))
