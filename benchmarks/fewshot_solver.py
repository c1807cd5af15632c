"""Benchmark: batched few-shot solver vs the reference per-episode scikit-learn fit (prints JSON).

    python benchmarks/fewshot_solver.py [--episodes 2000 --ways 5 --shots 5 --dim 512]

Both solve the same episodes on the same features: Gaussian class clusters in ``dim`` dimensions
passed through a ReLU (non-negative, un-normalised, overlapping, like pooled ResNet features),
so the accuracies are well below 100% and their agreement means something. Times are measured
in one run, one after the other; on a shared machine compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from transfer.probes.fewshot import episode_accuracies, sample_episodes, sklearn_episode_accuracies, summarize


def clustered_features(classes: int, per_class: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """ReLU(μ_c + noise) features: class means N(0, spread²), unit noise, scaled like ResNet features."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=spread, size=(classes, 1, dim))
    x = np.maximum(1.5 * (means + rng.normal(size=(classes, per_class, dim))) + 0.5, 0.0)
    return torch.tensor(x.reshape(-1, dim), dtype=torch.float32), np.repeat(np.arange(classes), per_class)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--spread", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared CPU, more threads on these small ops were slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    feats, labels = clustered_features(args.classes, args.per_class, args.dim, args.spread, args.seed)
    eps = sample_episodes(labels, [f"c{i}" for i in range(args.classes)], args.ways, args.shots, args.queries,
                          args.episodes, args.seed)
    t0 = time.perf_counter()
    batched = episode_accuracies(feats, eps)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = sklearn_episode_accuracies(feats, eps)
    t_reference = time.perf_counter() - t0
    (acc_b, ci_b), (acc_r, ci_r) = summarize(batched), summarize(reference)
    import sklearn

    print(json.dumps({
        "benchmark": "fewshot_solver",
        "setting": f"{args.ways}-way {args.shots}-shot, {args.queries} queries, {args.episodes} episodes, {args.dim}-d",
        "batched_torch_s": round(t_batched, 3),
        "reference_sklearn_liblinear_s": round(t_reference, 3),
        "speedup": round(t_reference / t_batched, 1),
        "acc_batched": round(acc_b, 3), "ci95_batched": round(ci_b, 3),
        "acc_reference": round(acc_r, 3), "ci95_reference": round(ci_r, 3),
        "episodes_with_different_accuracy": int(np.sum(batched != reference)),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "sklearn": sklearn.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }, indent=2))


if __name__ == "__main__":
    main()
