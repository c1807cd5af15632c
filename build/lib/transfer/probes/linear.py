"""Linear probe on frozen features (AugSelf / ssl-transfer protocol, PROTOCOLS.md "Linear probe").

A linear classifier on the cached, un-normalised backbone features, fitted full-batch with
L-BFGS (strong-Wolfe line search) on

    Σ_i CE(W x_i + b, y_i) + λ (‖W‖² + ‖b‖²)                     (AugSelf ``build_step``)

for λ in logspace(-6, 5, 45); λ is chosen on the validation split, the chosen model is refitted
on train+val, and the test accuracy (top-1, or class-averaged where that is the dataset's
convention) is reported in percent. Float32, L-BFGS settings as AugSelf.

Two differences from AugSelf's loop, neither of which changes what is being minimised: the sweep
walks λ from large to small, each fit warm-started from the previous (more regularised, hence
nearby) solution — AugSelf walks small to large, and its first fits, the nearly separable ones,
take thousands of iterations from a poor start; ties on validation still go to the smallest λ,
as AugSelf's "first best" does. And ``--max-iter`` caps L-BFGS iterations per fit: 5000 at paper
scale (AugSelf), 50 at demo scale, where the 45 fits must take seconds on a CPU — the small-λ
demo fits then stop before full convergence.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LinearModel", "fit_linear", "accuracy", "sweep", "WEIGHT_DECAYS", "main"]

WEIGHT_DECAYS = torch.logspace(-6, 5, steps=45, dtype=torch.float64).tolist()


class LinearModel:
    """Weights [D, C] and bias [C] of a linear classifier (float32, as the reference)."""

    def __init__(self, dim: int, num_classes: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / dim ** 0.5  # nn.Linear's default initialisation
        self.weight = (torch.rand(dim, num_classes, generator=g) * 2 - 1) * bound
        self.bias = (torch.rand(num_classes, generator=g) * 2 - 1) * bound

    def copy(self) -> "LinearModel":
        new = LinearModel.__new__(LinearModel)
        new.weight, new.bias = self.weight.clone(), self.bias.clone()
        return new

    def logits(self, x: Tensor) -> Tensor:
        return x.to(self.weight.dtype) @ self.weight + self.bias


def fit_linear(model: LinearModel, x: Tensor, y: Tensor, weight_decay: float, regularize_bias: bool = True,
               max_iter: int = 5000, tolerance_grad: float = 1e-10) -> LinearModel:
    """Minimise Σ CE + λ(‖W‖² [+ ‖b‖²]) from ``model``'s current weights (in place), full batch.

    The L-BFGS settings are AugSelf's (lr 1, strong Wolfe, ``max_iter`` 5000, ``tolerance_grad``
    1e-10, ``tolerance_change`` 0 — it stops when the loss stops changing at float32 precision).
    With ``regularize_bias=False`` and λ = 1/(2C) the objective is scikit-learn's
    ``LogisticRegression(C)`` (multinomial, unpenalised intercept) times C.
    """
    x = x.to(model.weight.dtype)
    weight = model.weight.clone().requires_grad_(True)
    bias = model.bias.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y, reduction="sum") + weight_decay * weight.pow(2).sum()
        if regularize_bias:
            loss = loss + weight_decay * bias.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    model.weight, model.bias = weight.detach(), bias.detach()
    return model


def accuracy(model: LinearModel, x: Tensor, y: Tensor, metric: str = "top1") -> float:
    """Top-1 or class-averaged accuracy in percent (classes absent from ``y`` are skipped, as AugSelf)."""
    pred = model.logits(x).argmax(1)
    if metric == "top1":
        return 100.0 * (pred == y).double().mean().item()
    if metric == "class_avg":
        per_class = [(pred[y == c] == c).double().mean().item() for c in y.unique().tolist()]
        return 100.0 * sum(per_class) / len(per_class)
    raise ValueError(f"metric {metric!r}: expected 'top1' or 'class_avg'")


def sweep(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], num_classes: int, metric: str = "top1",
          weight_decays: list[float] = WEIGHT_DECAYS, seed: int = 0, max_iter: int = 5000,
          log=None) -> tuple[LinearModel, float, float, list[dict]]:
    """Fit every λ (large to small, warm-started: see module docstring) and keep the best on val.

    Ties go to the smallest λ (AugSelf's "first best" over ascending λ). Returns (best model, its
    λ, its val accuracy, one {λ, val} dict per λ in ascending order).
    """
    model = LinearModel(train[0].shape[1], num_classes, seed)
    best, best_wd, best_acc, history = None, None, -1.0, []
    for wd in sorted(weight_decays, reverse=True):
        fit_linear(model, *train, wd, max_iter=max_iter)
        acc = accuracy(model, *val, metric)
        history.append({"weight_decay": wd, "val": acc})
        if log:
            log(f"linear: wd={wd:.3e} val {metric}={acc:.2f}")
        if acc >= best_acc:  # descending λ: ">=" hands ties to the smaller λ
            best, best_wd, best_acc = model.copy(), wd, acc
    return best, best_wd, best_acc, history[::-1]


def batchnorm(fit: Tensor, *xs: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """``xs`` standardised with ``fit``'s per-dimension mean and (biased) variance: MAE's linear-probe
    ``BatchNorm1d(affine=False, eps=1e-6)`` with its statistics taken on the fitted split."""
    mean, var = fit.mean(0), fit.var(0, unbiased=False)
    return tuple((x - mean) / torch.sqrt(var + eps) for x in xs)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m transfer.probes.linear`` (run_all checks suite args against them)."""
    from transfer.probes.cli import add_common_args

    parser = argparse.ArgumentParser(prog="python -m transfer.probes.linear", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--metric", choices=["top1", "class_avg"], default=None,
                        help="test metric (default: the --dataset registry's, e.g. class_avg for pets, flowers102, "
                             "aircraft, caltech101; else top1)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="L-BFGS iterations per fit (default: 5000 = AugSelf at --scale paper, 50 at demo)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation of the classifier")
    parser.add_argument("--feature-bn", choices=["auto", "on", "off"], default="auto",
                        help="standardise features with the fitted split's statistics first: MAE's linear-probe "
                             "BatchNorm1d(affine=False, eps=1e-6) (auto: on for MAE ViTs only)")
    parser.add_argument("--verbose", action="store_true", help="print the validation accuracy of every λ")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.probes.linear --ckpt X --data DIR --out OUT [--metric top1|class_avg]``."""
    from transfer.probes.cli import check_disjoint, record_class_avg, record_scores, resolve_defaults, run_task
    from transfer.probes.datasets import REGISTRY

    parser = build_parser()
    args = resolve_defaults(parser.parse_args(argv))
    if args.metric is None:
        args.metric = REGISTRY[args.dataset].metric if args.dataset in REGISTRY else "top1"
    if args.max_iter is None:
        args.max_iter = 5000 if args.scale == "paper" else 50
    if args.max_iter < 1:
        parser.error(f"--max-iter must be >= 1, got {args.max_iter}")

    def body(run, extractor) -> None:
        check_disjoint("linear", extractor, args.data, [args.train_split, args.val_split], args.test_split)
        splits = [extractor.features(args.data, s) for s in (args.train_split, args.val_split, args.test_split)]
        classes = splits[0].classes
        for s, name in zip(splits[1:], (args.val_split, args.test_split)):
            if s.classes != classes:
                raise ValueError(f"dataset {args.data}: split {name} has classes {s.classes[:5]}..., "
                                 f"expected the {len(classes)} classes of {args.train_split}")
        if len(classes) < 2:  # one class is always right: 100 % that says nothing
            raise ValueError(f"dataset {args.data}: {len(classes)} class; a probe needs at least 2")
        (xtr, ytr), (xva, yva), (xte, yte) = [(s.features, s.labels) for s in splits]
        log = (lambda m: print(m, file=sys.stderr)) if args.verbose else None
        bn = args.feature_bn == "on" or (args.feature_bn == "auto" and extractor.vit
                                         and extractor.info.codebase == "MAE")
        xtr_fit, xva_fit = batchnorm(xtr, xtr, xva) if bn else (xtr, xva)
        model, wd, val_acc, history = sweep((xtr_fit, ytr), (xva_fit, yva), len(classes), args.metric,
                                            seed=args.seed, max_iter=args.max_iter, log=log)
        xfit = torch.cat([xtr, xva])
        if bn:  # the refit sees train+val, so its statistics are those of train+val
            xfit, xte = batchnorm(xfit, xfit, xte)
        fit_linear(model, xfit, torch.cat([ytr, yva]), wd, max_iter=args.max_iter)
        run.extra["feature_bn"] = bn
        correct = (model.logits(xte).argmax(1) == yte).cpu().numpy()
        record_scores(run, "top1", correct, "test images")
        if args.metric == "class_avg":
            record_class_avg(run, "class_avg", correct, yte.cpu().numpy())
        run.extra["details"] = {"weight_decay": wd, "val_acc": val_acc, "metric": args.metric, "sweep": history,
                                "n_train": len(ytr), "n_val": len(yva), "n_test": len(yte)}
        print(f"linear: test top1 = {run.metrics['top1']:.2f} (wd {wd:.2e}, val {args.metric} {val_acc:.2f})")

    return run_task("linear", args, body, seeds=[args.seed], carve_val=True, linear=True)


if __name__ == "__main__":
    raise SystemExit(main())
