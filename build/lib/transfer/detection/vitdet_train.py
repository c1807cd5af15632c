"""ViTDet training + evaluation: detectron2's LazyConfig trainer (``tools/lazyconfig_train_net.py``'s ``do_train``).

Per process (under detectron2's ``launch``): the config is rebuilt from its file and overrides, the
model, optimizer and data loader are instantiated from it, and ``AMPTrainer``/``SimpleTrainer`` runs
with detectron2's hooks (iteration timer, lr scheduler, periodic checkpointer when the model is kept,
the evaluation hook, console and ``metrics.json`` writers). What this project changes: the weights come
from :func:`transfer.detection.vitdet.load_vitdet_verified` instead of ``init_checkpoint`` (COCO
evaluation without the compiled fast path); the writers are detectron2's console, ``metrics.json`` and
TensorBoard ones (``--no-tensorboard`` leaves the last out). Rank 0 writes
``OUTPUT_DIR/result.json`` as the ResNet path does (:mod:`transfer.detection.train`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, NamedTuple

from transfer.detection.train import RESULT_FILE, _check_predictions, _nan_reason, _setup_process, setup_logging
from transfer.detection.vitdet import convert_for, load_lazy_config, load_vitdet_verified
from transfer.records import TaskFailed, write_json_atomic
from transfer.backbones import load

log = logging.getLogger("transfer.detection")


class VitdetJob(NamedTuple):
    """Everything a process needs, all plain data (picklable for spawned workers)."""
    config: str
    overrides: list[str]      # the user's, then the resolved ones (checkpoint, machine, seed folder)
    ckpt: str
    backbone: str | None
    sha256: str
    data_root: str | None
    save_model: bool
    log_file: str
    seed: int
    tensorboard: bool = True


def build_config(job: VitdetJob) -> Any:
    return load_lazy_config(job.config, job.overrides)


def _evaluate(cfg: Any, model: Any, holder: dict) -> dict:
    """``do_test``: inference on the test loader with the config's evaluator (results kept in ``holder``)."""
    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    print_csv_format(results)
    holder["results"] = results
    return results


def _hooks(cfg: Any, trainer: Any, checkpointer: Any, model: Any, holder: dict, job: VitdetJob) -> list:
    from detectron2.config import instantiate
    from detectron2.engine import hooks
    from detectron2.utils import comm
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

    main = comm.is_main_process()
    writers = [CommonMetricPrinter(cfg.train.max_iter), JSONWriter(str(Path(cfg.train.output_dir) / "metrics.json")),
               *([TensorboardXWriter(cfg.train.output_dir)] if job.tensorboard else [])]
    return [hooks.IterationTimer(), hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main and job.save_model else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: _evaluate(cfg, model, holder)),
            hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main else None]


def do_train(cfg: Any, job: VitdetJob) -> tuple[dict, dict]:
    """detectron2's ``do_train`` with verified weights; returns ``(evaluation results, load report)``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate
    from detectron2.engine import AMPTrainer, SimpleTrainer
    from detectron2.engine.defaults import create_ddp_model

    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    state, info = load(job.ckpt, job.backbone)
    if info.sha256 != job.sha256:
        raise TaskFailed(f"--ckpt {job.ckpt} changed while the task ran (sha256 {info.sha256[:12]})")
    converted, new, _ = convert_for(cfg, state, info)
    report = load_vitdet_verified(model, converted, new, source=job.ckpt)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    holder: dict = {}
    trainer.register_hooks(_hooks(cfg, trainer, checkpointer, model, holder, job))
    try:
        trainer.train(0, cfg.train.max_iter)
    except FloatingPointError as exc:
        raise TaskFailed(_nan_reason(exc, trainer)) from None
    return holder.get("results") or {}, report.summary()


def train_and_evaluate(job: VitdetJob) -> None:
    """``launch``'s main function: one seed, every process; rank 0 writes ``result.json``."""
    from detectron2.utils import comm

    cfg = build_config(job)
    seeded = argparse.Namespace(SEED=job.seed)
    _setup_process(seeded, Path(job.log_file), job.data_root)
    out = Path(cfg.train.output_dir)
    try:
        results, weights = do_train(cfg, job)
        if comm.is_main_process():
            if not results:
                raise TaskFailed("training finished but detectron2 produced no evaluation results")
            thresh = cfg.model.roi_heads.box_predictor.test_score_thresh
            _check_predictions(results, argparse.Namespace(MODEL=argparse.Namespace(
                ROI_HEADS=argparse.Namespace(SCORE_THRESH_TEST=thresh))))
            write_json_atomic(out / RESULT_FILE, {"status": "ok", "results": results, "weights": weights})
    except Exception as exc:
        if comm.is_main_process():
            reason = str(exc) if isinstance(exc, TaskFailed) else f"{type(exc).__name__}: {exc}"
            write_json_atomic(out / RESULT_FILE, {"status": "failed", "error": reason})
        raise


def run_seed(job: VitdetJob, args: argparse.Namespace) -> dict:
    """One seed under ``launch``; returns ``result.json``'s content (``results``, ``weights``)."""
    import json

    from detectron2.engine import launch

    out = Path(args.out) / f"seed_{job.seed}"
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    job = job._replace(overrides=[*job.overrides, f"train.output_dir={out}",
                                  f"dataloader.evaluator.output_dir={out / 'inference'}",
                                  "dataloader.evaluator.use_fast_impl=False"])  # no compiled _C in this stack
    setup_logging(job.log_file, rank=0)
    error = None
    try:
        launch(train_and_evaluate, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(job,))
    except Exception as exc:  # noqa: BLE001 - the worker's own one-line reason is preferred below
        error = exc
    try:
        result = json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError):
        result = {}
    if result.get("status") == "ok" or (args.machine_rank != 0 and error is None):
        return result
    reason = result.get("error") or (f"{type(error).__name__}: {error}" if error else "no result written")
    raise TaskFailed(f"seed {job.seed}: " + " ".join(str(reason).split()))
