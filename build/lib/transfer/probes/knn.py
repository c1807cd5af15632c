"""Weighted k-nearest-neighbour classification on frozen features (PROTOCOLS.md "kNN").

InstDisc / DINO ``eval_knn``: features are L2-normalised, the k most cosine-similar training
features vote for their class with weight exp(s / T), T = 0.07, and the class with the largest
vote is the prediction. Reported: top-1 (and, for a dataset whose registry metric is
``class_avg``, the mean per-class accuracy) in percent for k ∈ {10, 20, 100, 200} at paper scale,
{20, 200} at demo scale (k is capped at the size of the training set; the cap is written to the
record's details). At paper scale images are resized to size / 0.875 and centre-cropped to size
(DINO: Resize 256 -> CenterCrop 224); at demo scale resized straight to size. The test split
must not share images with the bank.
"""

from __future__ import annotations

import argparse

from mast.weighted_knn import knn_predict

__all__ = ["knn_predict", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m transfer.probes.knn`` (run_all checks suite args against them)."""
    from transfer.probes.cli import add_common_args

    parser = argparse.ArgumentParser(prog="python -m transfer.probes.knn", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--k", type=int, nargs="+", default=None, help="default: 10 20 100 200 (paper), 20 200 (demo)")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--train-split", default="train",
                        help="the neighbour bank ('+' pools, e.g. train+val; 'trainval' for a --dataset registry entry)")
    parser.add_argument("--test-split", default="test")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.probes.knn --ckpt X --data DIR --out OUT [--k 20 200 --temperature 0.07]``."""
    from transfer.probes.cli import check_disjoint, record_class_avg, record_scores, resolve_defaults, run_task
    from transfer.probes.datasets import REGISTRY

    parser = build_parser()
    args = resolve_defaults(parser.parse_args(argv))
    class_avg = args.dataset in REGISTRY and REGISTRY[args.dataset].metric == "class_avg"
    if args.k is None:
        args.k = [10, 20, 100, 200] if args.scale == "paper" else [20, 200]
    if min(args.k) < 1 or args.temperature <= 0:
        parser.error(f"--k must be >= 1 and --temperature > 0, got {args.k} and {args.temperature}")

    def body(run, extractor) -> None:
        check_disjoint("knn", extractor, args.data, [args.train_split], args.test_split)
        train = extractor.features(args.data, args.train_split)
        test = extractor.features(args.data, args.test_split)
        if test.classes != train.classes:
            raise ValueError(f"dataset {args.data}: split {args.test_split} has classes {test.classes[:5]}..., "
                             f"expected the {len(train.classes)} classes of {args.train_split}")
        if len(train.classes) < 2:  # one class is always right: 100 % that says nothing
            raise ValueError(f"dataset {args.data}: {len(train.classes)} class; a probe needs at least 2")
        used = {}
        for k in args.k:
            pred = knn_predict(train.features, train.labels, test.features, k, len(train.classes), args.temperature)
            correct = (pred == test.labels).cpu().numpy()
            record_scores(run, f"top1_k{k}", correct, "test images")
            if class_avg:  # the registry's metric for this dataset (pets, flowers102, ...)
                record_class_avg(run, f"class_avg_k{k}", correct, test.labels.cpu().numpy())
            used[f"k{k}"] = min(k, len(train.labels))
            print(f"knn: top1_k{k} = {run.metrics[f'top1_k{k}']:.2f} (bank {len(train.labels)})")
        run.extra["details"] = {"k_used": used, "n_bank": len(train.labels), "n_test": len(test.labels)}

    return run_task("knn", args, body, crop_fraction=0.875 if args.scale == "paper" else 1.0)


if __name__ == "__main__":
    raise SystemExit(main())
