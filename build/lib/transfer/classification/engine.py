"""What this task adds to mmpretrain's Runner: the import door, per-image accuracy, the record hook.

- :func:`require_mmpretrain`: import mmpretrain with its modules registered (one line when it is
  missing), on mmcv-lite through the project's ``mmcv.ops`` shim (``transfer.engines``).
- ``PerImageAccuracy``: top-1/top-5 counted by rank as ``evaluate.py`` does (mmpretrain's ``Accuracy``
  also thresholds the score), keeping for the last evaluation whether
  each validation image was right at top-1 and top-5 (in dataset order): the interval of the headline
  resamples validation images (``transfer.stats``), and a report can pair two checkpoints image by image.
- :func:`make_record_hook`: stops on a non-finite loss and keeps every epoch's top-1/top-5 (the last is
  the headline; the best over epochs is chosen on the validation set and recorded as such).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from transfer.engines import EngineMissing, install_mmcv_ops_shim
from transfer.mmengine_task import raise_if_diverged
from transfer.records import TaskFailed

METRIC_TYPE = "PerImageAccuracy"
HEAD_TYPE = "LogitLinearClsHead"


def require_mmpretrain() -> ModuleType:
    """Import mmpretrain (all modules registered, default scope ``mmpretrain``) on mmcv-lite."""
    import importlib

    try:
        importlib.import_module("mmengine")
        importlib.import_module("mmcv")
        install_mmcv_ops_shim()
        mmpretrain = importlib.import_module("mmpretrain")
    except ImportError as e:
        raise EngineMissing(f"mmpretrain is not importable ({e}); install the pinned mmpretrain==1.2.0 "
                            "(requirements.txt)") from None
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    _register_head()
    _register_metric()
    return mmpretrain


def _register_head() -> None:
    from mmpretrain.models.heads import LinearClsHead
    from mmpretrain.registry import MODELS

    if MODELS.get(HEAD_TYPE) is not None:
        return

    class LogitLinearClsHead(LinearClsHead):
        """``LinearClsHead`` (same layer, init, loss and training) whose predictions also carry the logits:
        evaluate.py ranks classes by the logits, and a softmax that underflows to 0 ties their order."""

        def _get_predictions(self, cls_score, data_samples):
            samples = super()._get_predictions(cls_score, data_samples)
            for sample, logit in zip(samples, cls_score.detach()):
                sample.set_field(logit, "pred_logit")
            return samples

    MODELS.register_module(name=HEAD_TYPE, module=LogitLinearClsHead)


def _register_metric() -> None:
    from mmpretrain.evaluation import Accuracy
    from mmpretrain.registry import METRICS

    if METRICS.get(METRIC_TYPE) is not None:
        return

    class PerImageAccuracy(Accuracy):
        """Top-k accuracy (percent) as VICReg's ``evaluate.py`` counts it, keeping the per-image hits.

        mmpretrain's ``Accuracy`` also requires the score to exceed ``thrs`` (0.0): a true class ranked in
        the top 5 whose softmax underflowed to 0 is not counted there, and is by ``evaluate.py``'s
        ``accuracy`` (``output.topk(5)`` on the logits). Measured here on a smoke fine-tuning run:
        mmpretrain 16.7 % top-5, evaluate.py's rule 83.3 %. This class ranks the logits, nothing else.
        """

        last_hits: dict[str, np.ndarray] = {}

        def process(self, data_batch, data_samples) -> None:
            for sample in data_samples:
                self.results.append({"pred_score": sample.get("pred_logit", sample["pred_score"]).clone(),
                                     "gt_label": sample["gt_label"].clone()})

        def compute_metrics(self, results: list) -> dict:
            import torch

            scores = torch.stack([r["pred_score"] for r in results])  # the logits (LogitLinearClsHead)
            target = torch.cat([r["gt_label"] for r in results])
            ranked = scores.topk(max(self.topk), dim=1).indices
            hits = {f"top{k}": (ranked[:, :k] == target[:, None]).any(1).double().numpy() for k in self.topk}
            type(self).last_hits = hits
            return {name: float(100.0 * h.mean()) for name, h in hits.items()}

    METRICS.register_module(name=METRIC_TYPE, module=PerImageAccuracy)


def per_image_hits() -> dict[str, np.ndarray]:
    """The hits of the last validation (1/0 per image, dataset order) by ``top1``/``top5``."""
    from mmpretrain.registry import METRICS

    return dict(METRICS.get(METRIC_TYPE).last_hits)


def make_record_hook() -> Any:
    """Hook: fail on a non-finite loss; keep each epoch's top-1/top-5 and the last epoch's per-image hits."""
    from mmengine.hooks import Hook

    class ClsRecordHook(Hook):
        priority = "LOW"

        def __init__(self) -> None:
            self.epochs: list[dict[str, float]] = []
            self.hits: dict[str, np.ndarray] = {}

        def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
            raise_if_diverged(runner, outputs)

        def after_val_epoch(self, runner, metrics=None) -> None:
            metrics = dict(metrics or {})
            top1, top5 = metrics.get("accuracy/top1"), metrics.get("accuracy/top5")
            if top1 is None or top5 is None:
                raise TaskFailed(f"the evaluator returned {sorted(metrics)}, expected accuracy/top1 and accuracy/top5")
            self.epochs.append({"epoch": runner.epoch, "top1": float(top1), "top5": float(top5)})
            self.hits = per_image_hits()

    return ClsRecordHook()
