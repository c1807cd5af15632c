"""One detectron2 training + evaluation run, executed in every process that ``launch`` starts.

Uses detectron2's own ``DefaultTrainer`` (optimizer, schedule, PreciseBN, data loaders, evaluation
hook) with three changes: evaluators are chosen from the dataset's ``evaluator_type``; the writers
are the console, ``metrics.json`` and detectron2's own ``TensorboardXWriter`` (event files in the seed's
folder; ``--no-tensorboard`` leaves it out); and the final model checkpoint is optional (demo runs
skip the ~100 MB file). Weights are loaded with
:func:`transfer.backbones.resnet.detectron2.load_verified` instead of ``resume_or_load``, so a backbone tensor that
was not loaded stops the run; ``--resume`` continues from the seed's own last checkpoint instead
(:mod:`transfer.detection.resume_checkpoint`: detectron2's ``resume_or_load``, the file read as data).

Rank 0 writes ``OUTPUT_DIR/result.json`` (``status``, ``results`` or ``error``) so the parent
process gets a clean one-line reason even when the run happened in a spawned worker.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from transfer.backbones import load
from transfer.backbones.resnet.detectron2 import to_detectron2
from transfer.detection.data import evaluator_type, register_synthetic
from transfer.detection.resume_checkpoint import resume as resume_seed
from transfer.backbones.resnet.detectron2 import load_verified
from transfer.detection.heads import register_heads
from transfer.records import TaskFailed, write_json_atomic

__all__ = ["RESULT_FILE", "setup_logging", "train_and_evaluate", "make_trainer"]

RESULT_FILE = "result.json"
log = logging.getLogger("transfer.detection")


class WeightsSource(NamedTuple):
    """Where each process gets its weights: the user's checkpoint, read tensors-only and converted in
    memory (no pickle is ever read), and the sha256 the parent saw (the file must not change meanwhile)."""
    ckpt: str
    backbone: str | None
    sha256: str

    def converted(self) -> dict:
        state, info = load(self.ckpt, self.backbone)
        if info.sha256 != self.sha256:
            raise TaskFailed(f"--ckpt {self.ckpt} changed while the task ran (sha256 {info.sha256[:12]}, "
                             f"expected {self.sha256[:12]})")
        return to_detectron2(state, info)


def make_trainer(cfg: Any, save_model: bool, tensorboard: bool = True) -> Any:
    """A ``DefaultTrainer`` for ``cfg`` (frozen detectron2 ``CfgNode``); see module docstring."""
    register_heads()
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            if evaluator_type(dataset_name) == "pascal_voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
            folder = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
            # detectron2's fast COCO eval is in its compiled _C, which this stack lacks.
            return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=folder,
                                 use_fast_impl=False)

        def build_writers(self):
            writers = [CommonMetricPrinter(self.max_iter), JSONWriter(str(Path(self.cfg.OUTPUT_DIR) / "metrics.json"))]
            return writers + ([TensorboardXWriter(self.cfg.OUTPUT_DIR)] if tensorboard else [])

        def build_hooks(self):
            built = super().build_hooks()
            if save_model:
                return built
            return [h for h in built if not isinstance(h, hooks.PeriodicCheckpointer)]

    return Trainer(cfg)


def _nan_reason(exc: FloatingPointError, trainer: Any) -> str:
    # detectron2 raises e.g. "Loss became infinite or NaN at iteration=N!\nloss_dict = {...}" or
    # "Predicted boxes or scores contain Inf/NaN. Training has diverged." (no iteration).
    where = f"iteration={trainer.iter}" if trainer is not None else "model setup"
    return f"NaN/Inf during training at {where}: " + " ".join(str(exc).split())


def _check_predictions(results: dict, cfg: Any) -> None:
    """COCOEvaluator logs "No predictions from the model!" and returns NaN APs: say so in the record."""
    import math

    empty = sorted(t for t, m in results.items() if isinstance(m, dict) and m
                   and all(isinstance(v, float) and math.isnan(v) for v in m.values()))
    if empty:
        raise TaskFailed(f"no predictions from the model at SCORE_THRESH_TEST "
                         f"{cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST:g} ({', '.join(empty)} AP are NaN); "
                         "an untrained or diverged model scores every box below it")


def setup_logging(log_file: str | Path, rank: int) -> None:
    """detectron2's, fvcore's and this project's loggers to stdout and ``log_file`` (once per process)."""
    register_heads()
    from detectron2.utils.logger import setup_logger

    for name in ("detectron2", "fvcore", "transfer"):  # setup_logger is cached on its arguments
        setup_logger(str(log_file), distributed_rank=rank, name=name, abbrev_name=name[:4])


def _setup_process(cfg: Any, log_file: Path, data_root: str | None) -> None:
    """Logging, dataset registration and seeding for this process (spawned ones start empty)."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    rank = comm.get_rank()
    setup_logging(log_file, rank)
    if data_root is not None:
        register_synthetic(data_root)
    seed_all_rng(cfg.SEED + rank)


def train_and_evaluate(cfg: Any, data_root: str | None, save_model: bool, log_file: str, weights: WeightsSource,
                       resume: bool = False, tensorboard: bool = True) -> None:
    """Train ``cfg`` from the converted ``weights`` (or, with ``resume``, from the seed's last checkpoint
    when it has one) and evaluate; ``launch``'s main function."""
    register_heads()
    from detectron2.utils import comm

    _setup_process(cfg, Path(log_file), data_root)
    result_path = Path(cfg.OUTPUT_DIR) / RESULT_FILE
    trainer = None
    try:
        trainer = make_trainer(cfg, save_model, tensorboard)
        resumed = resume_seed(trainer, cfg.OUTPUT_DIR) if resume else None
        loaded = resumed or load_verified(trainer.model, weights.converted(), source=weights.ckpt).summary()
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None)
        if comm.is_main_process():
            if not results:
                raise TaskFailed("training finished but detectron2 produced no evaluation results")
            _check_predictions(results, cfg)
            write_json_atomic(result_path, {"status": "ok", "results": results, "weights": loaded,
                                            "resumed": resumed})
    except FloatingPointError as exc:
        reason = _nan_reason(exc, trainer)
        if comm.is_main_process():
            write_json_atomic(result_path, {"status": "failed", "error": reason})
        raise TaskFailed(reason) from None
    except Exception as exc:
        if comm.is_main_process():
            reason = str(exc) if isinstance(exc, TaskFailed) else f"{type(exc).__name__}: {exc}"
            write_json_atomic(result_path, {"status": "failed", "error": reason})
        raise
