"""VOC07 linear SVM on frozen features: VISSL's ``tools/train_svm.py`` protocol (PROTOCOLS.md "VOC07 SVM").

Matched to facebookresearch/vissl (commit 09270ed) line by line:

* features cast to float64 and L2-normalised, ``x / (‖x‖ + 1e-5)``, before training and testing
  (``vissl/utils/svm_utils/svm_trainer.py`` l. 51, 56-61, 201-203, 232-234; ``SVM.normalize: True``
  in ``configs/config/benchmark/linear_image_classification/voc07/eval_resnet_8gpu_transfer_voc07_svm.yaml``
  l. 70);
* one binary ``sklearn.svm.LinearSVC`` per class (one-vs-rest) with ``class_weight={1: 2, -1: 1}``,
  ``intercept_scaling=1.0``, ``tol=1e-4``, ``penalty="l2"``, ``loss="squared_hinge"``, ``dual=True``,
  ``max_iter=2000`` (svm_trainer.py l. 153-163; the yaml's l. 71-74);
* training targets: present = +1, everything else -1 — VOC's *difficult* images (-1 in VISSL's
  targets) stay negatives in training (svm_trainer.py l. 164-168; targets from
  ``extra_scripts/datasets/create_voc_data_files.py`` l. 89-95);
* the cost per class chosen by 3-fold cross-validation on trainval (``cross_val_score(clf, X, y,
  cv=3, scoring="average_precision")``, i.e. sklearn's StratifiedKFold without shuffling and
  sklearn's average precision; svm_trainer.py l. 176-182, yaml l. 75), the first cost with the
  highest mean CV AP (``np.argmax``, l. 122-123), over ``costs_list: [0.01, 0.1, 1.0, 2, 5, 10, 15,
  20, 50, 100, 1000]`` (yaml l. 69; ``costs.base: -1.0`` in ``vissl/config/defaults.yaml`` l. 1604-1609 adds none);
* test AP per class with the difficult images left out (svm_trainer.py l. 251-255), computed as
  ``vissl/utils/svm_utils/evaluate.py`` (l. 9-72) computes it: the all-point interpolated AP (the
  area under the precision envelope, VOC2010+ style, **not** the 11-point VOC07 AP); mAP = the
  mean over the 20 classes, in percent (``tools/train_svm.py`` l. 96).

Two deliberate differences: ``random_state=0`` (VISSL leaves liblinear's coordinate order to the
global numpy seed; fixed here so a rerun gives the same record), and the classifier is refitted only
at the chosen cost (VISSL fits every cost and then loads the chosen one: the same model).
The features (``--feature vissl``, the default) are VISSL's for a ResNet
(:mod:`transfer.probes.vissl_features`: the yaml's l. 10-18 Resize 256 then Resize [224, 224]; l. 49-55
res5 through AvgPool2d([6, 6], 1, 0), flattened). A ViT or a CIFAR-stem ResNet has no such map and
uses the probes' pooled feature (``--feature pooled``), which the record says (:data:`FEATURE_NOTES`).
The interval resamples test images and recomputes the mAP on each draw.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

__all__ = ["VISSL_COSTS", "l2_normalize", "vissl_ap", "make_svm", "cross_val_aps", "fit_class", "test_aps",
           "map_interval", "main", "build_parser", "FEATURE_NOTES"]

VISSL_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
FEATURE_NOTES = {
    "vissl": "VISSL's VOC07 feature: res5 through AvgPool2d(6, stride 1), flattened (8192-d for ResNet-50), on the "
             "whole image resized to 256 then squashed to 224x224",
    "pooled": "not VISSL's feature: the probes' cached global average pool of res5 (2048-d for ResNet-50; a ViT's "
              "pooled tokens) on a centre crop; VISSL's VOC07 config flattens res5 through AvgPool2d(6, stride 1) "
              "(8192-d) on a 224x224 resize of the whole image"}


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """VISSL's ``_normalize_features``: float64 rows divided by (their L2 norm + 1e-5)."""
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1) + 1e-5)[:, None]


def vissl_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """All-point interpolated AP of ``scores`` for binary ``labels`` (> 0 = positive), as VISSL's
    ``get_precision_recall`` + ``calculate_ap``: images by descending score, precision made monotone
    from the right, summed over the recall steps (one per positive). NaN when there is no positive."""
    labels = np.asarray(labels) > 0
    order = np.argsort(np.asarray(scores, dtype=np.float64))[::-1]
    return _ap_sorted(labels[order])


def _ap_sorted(hits: np.ndarray) -> float:
    """AP of a ranking given as its hit sequence (True = positive), best first."""
    n_pos = int(hits.sum())
    if n_pos == 0:
        return float("nan")
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, hits.size + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(envelope[hits].sum() / n_pos)


def make_svm(cost: float, max_iter: int = 2000):
    """The classifier of svm_trainer.py l. 153-163 (plus a fixed ``random_state``)."""
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2", loss="squared_hinge",
                     tol=1e-4, dual=True, max_iter=max_iter, random_state=0)


def train_targets(targets: np.ndarray) -> np.ndarray:
    """VISSL's training labels of one class: 1 present, -1 absent *and* difficult (svm_trainer.py l. 164-168)."""
    return np.where(np.asarray(targets) == 1, 1, -1).astype(np.int32)


def cross_val_aps(x: np.ndarray, y: np.ndarray, costs: tuple, folds: int = 3, max_iter: int = 2000) -> list[float]:
    """Mean ``folds``-fold cross-validated average precision (sklearn's scorer) of each cost."""
    from sklearn.model_selection import cross_val_score

    return [float(cross_val_score(make_svm(c, max_iter), x, y, cv=folds, scoring="average_precision").mean())
            for c in costs]


def fit_class(x: np.ndarray, y: np.ndarray, costs: tuple, folds: int = 3, max_iter: int = 2000):
    """(classifier refitted on all of ``x`` at the chosen cost, chosen cost, CV AP per cost).

    The chosen cost is the first of ``costs`` with the highest mean CV AP (VISSL's ``np.argmax``)."""
    aps = cross_val_aps(x, y, costs, folds, max_iter)
    cost = costs[int(np.argmax(aps))]
    return make_svm(cost, max_iter).fit(x, y), cost, aps


def test_aps(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP on test: each class's difficult images (target -1) left out (svm_trainer.py l. 251-255)."""
    return np.array([vissl_ap(targets[keep, c], scores[keep, c])
                     for c in range(targets.shape[1]) for keep in [targets[:, c] != -1]])


def map_interval(scores: np.ndarray, targets: np.ndarray, n_boot: int, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of the mAP over test images: each draw resamples images with replacement
    and recomputes every class's AP (a class with no positive in a draw is left out of that mean).

    A draw's ranking is the fixed ranking with each image repeated as often as it was drawn, so no
    draw sorts again (duplicates tie with themselves only)."""
    rng = np.random.default_rng(seed)
    n, c = targets.shape
    orders = [np.argsort(scores[:, k])[::-1] for k in range(c)]
    draws = np.empty(n_boot)
    for b in range(n_boot):
        counts = np.bincount(rng.integers(n, size=n), minlength=n)
        aps = []
        for k in range(c):
            order = orders[k][targets[orders[k], k] != -1]
            ranked = np.repeat(order, counts[order])
            aps.append(_ap_sorted(targets[ranked, k] == 1))
        draws[b] = np.nanmean(aps)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m transfer.probes.svm`` (run_all checks suite args against them)."""
    from transfer.probes.cli import add_common_args

    parser = argparse.ArgumentParser(prog="python -m transfer.probes.svm", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--train-split", default="train", help="fitted split (voc07: train = VOC2007 trainval)")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--costs", type=float, nargs="+", default=list(VISSL_COSTS),
                        help="SVM costs C swept by cross-validation (default: VISSL's VOC07 costs_list)")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds (VISSL: 3)")
    parser.add_argument("--max-iter", type=int, default=2000, help="liblinear iterations per fit (VISSL: 2000)")
    parser.add_argument("--feature", choices=["vissl", "pooled"], default="vissl",
                        help="vissl: res5 average-pooled 6x6 stride 1, flattened, on the squashed whole image (VISSL's "
                             "VOC07 config; ResNets with the ImageNet stem); pooled: the probes' cached feature")
    parser.add_argument("--jobs", type=int, default=1, help="classes fitted at once, one worker process each (VISSL: all 20, in threads)")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap draws of the mAP interval (default 2000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.probes.svm --ckpt X --data ROOT --dataset voc07 --out OUT``."""
    from transfer.probes.cli import check_disjoint, resolve_defaults, run_task
    from transfer.stats import LEVEL, N_BOOT

    parser = build_parser()
    args = resolve_defaults(parser.parse_args(argv))
    if args.folds < 2 or args.max_iter < 1 or args.jobs < 1 or min(args.costs) <= 0:
        parser.error(f"--folds must be >= 2, --max-iter and --jobs >= 1 and every --costs > 0 (got {args.folds}, "
                     f"{args.max_iter}, {args.jobs}, {args.costs})")
    n_boot = args.n_boot or N_BOOT

    def body(run, extractor) -> None:
        check_disjoint("svm", extractor, args.data, [args.train_split], args.test_split)
        from transfer.probes.vissl_features import supports

        feature = args.feature if args.feature == "pooled" or supports(extractor) else "pooled"
        if feature != args.feature:  # a ViT, a CIFAR stem, a res5 map under 6 x 6: recorded, and said here
            print(f"svm: {extractor.info.arch} at {extractor.image_size} px has no VISSL res5 feature; using the "
                  "pooled feature (record: details.feature)", file=sys.stderr)
        (xtr, ttr), (xte, tte) = [_features_targets(extractor, args.data, s, feature)
                                  for s in (args.train_split, args.test_split)]
        xtr, xte = l2_normalize(xtr), l2_normalize(xte)
        classes = extractor.items(args.data, args.train_split).classes
        scores, chosen, cv, unconverged = fit_classes(xtr, ttr, xte, classes, args)
        per_class = test_aps(scores, tte)
        if np.isnan(per_class).any():
            empty = [classes[k] for k in np.flatnonzero(np.isnan(per_class))]
            raise ValueError(f"svm: no positive test image for {', '.join(empty[:3])} in {args.test_split}")
        lo, hi = map_interval(scores, tte, n_boot)
        run.metrics["mAP"] = 100.0 * float(per_class.mean())
        run.extra.setdefault("intervals", {})["mAP"] = {
            "lo": 100.0 * lo, "hi": 100.0 * hi, "level": LEVEL, "n_items": int(len(tte)), "unit": "test images",
            "method": f"percentile bootstrap over test images, mAP recomputed per draw, {n_boot} resamples, seed 0"}
        run.extra["details"] = {
            "protocol": "VISSL tools/train_svm.py (LinearSVC one-vs-rest, cost by CV AP, all-point interpolated AP)",
            "costs": list(args.costs), "folds": args.folds, "max_iter": args.max_iter,
            "chosen_cost": dict(zip(classes, chosen)), "cv_ap": {c: a for c, a in zip(classes, cv)},
            "ap": {c: 100.0 * float(a) for c, a in zip(classes, per_class)}, "refit_not_converged": unconverged,
            "n_train": len(ttr), "n_test": len(tte), "feature": feature, "feature_dim": int(xtr.shape[1]),
            "feature_note": FEATURE_NOTES[feature]}
        print(f"svm: test mAP = {run.metrics['mAP']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]")

    return run_task("svm", args, body, seeds=[0])


def _fit_quietly(x: np.ndarray, y: np.ndarray, costs: tuple, folds: int, max_iter: int):
    """:func:`fit_class` with liblinear's non-convergence warnings silenced (counted on the refits)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_class(x, y, costs, folds, max_iter)


def fit_classes(xtr: np.ndarray, ttr: np.ndarray, xte: np.ndarray, classes: list[str], args: argparse.Namespace):
    """One SVM per class, ``--jobs`` classes at once in worker processes (VISSL uses one thread per
    class, but liblinear's random generator is one global, so threads do not give the same SVMs twice):
    test scores [N, C], chosen cost and CV APs per class, classes whose refit hit ``max_iter``."""
    from joblib import Parallel, delayed

    for k, name in enumerate(classes):
        y = train_targets(ttr[:, k])
        if min(int((y > 0).sum()), int((y < 0).sum())) < args.folds:
            raise ValueError(f"svm: class {name} has {int((y > 0).sum())} positives of {len(y)} in "
                             f"{args.train_split}; {args.folds}-fold cross-validation needs >= {args.folds} of each")
    fits = Parallel(n_jobs=args.jobs)(delayed(_fit_quietly)(xtr, train_targets(ttr[:, k]), tuple(args.costs),
                                                            args.folds, args.max_iter) for k in range(len(classes)))
    scores = np.stack([clf.decision_function(xte) for clf, _, _ in fits], axis=1)
    unconverged = [c for c, (clf, _, _) in zip(classes, fits) if int(np.max(clf.n_iter_)) >= args.max_iter]
    return scores, [cost for _, cost, _ in fits], [aps for _, _, aps in fits], unconverged


def _features_targets(extractor, data, split: str, feature: str) -> tuple[np.ndarray, np.ndarray]:
    from transfer.probes.vissl_features import vissl_res5_features

    items = extractor.items(data, split)
    if items.targets is None:
        raise ValueError(f"svm: dataset {data} split {split} has no multi-label targets (--dataset voc07 reads "
                         "VOC2007's per-class lists)")
    feats = vissl_res5_features(extractor, data, split) if feature == "vissl" else extractor.features(data, split).features
    return feats.numpy(), np.asarray(items.targets)


if __name__ == "__main__":
    sys.exit(main())
