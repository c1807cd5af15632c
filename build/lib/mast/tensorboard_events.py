"""TensorBoard events of a pretraining run: ``OUT_DIR/NAME/tensorboard/`` (``tensorboard --logdir runs/``).

The same scalars as ``metrics.jsonl`` (:mod:`mast.run_log` hands each line over), under grouped tags:
``loss/total``, ``loss/inv`` ... ``loss/mask_prior``; ``optim/lr``; ``speed/img_per_s``; ``w/min``,
``w/mean``, ``w/max``, ``w/eff`` (eq. 4's effective weight); per augmentation ``u_mean/<aug>``,
``u_delta_corr/<aug>`` (Pearson r of u_k and δ_k over the batch), ``mask_logit_spread/<aug>`` (std of
the mask logits over d), ``mask_mean/<aug>``, ``subspace_size/<aug>``; ``knn/top1``. Only rank 0
writes (RunLog is disabled elsewhere). ``--no-tensorboard`` turns it off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mast.config import ConfigError

_TAGS = {"loss": "loss/total", "inv": "loss/inv", "var": "loss/var", "cov": "loss/cov", "unc": "loss/unc",
         "mask_prior": "loss/mask_prior", "lr": "optim/lr", "img_per_s": "speed/img_per_s",
         "w_min": "w/min", "w_mean": "w/mean", "w_max": "w/max", "w_eff": "w/eff", "knn_top1": "knn/top1"}
_NOT_SCALARS = ("step", "epoch")


def tag(key: str) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` key (per-augmentation keys ``name/aug`` stay as they are)."""
    return _TAGS.get(key, key if "/" in key else f"train/{key}")


def open_writer(folder: Path, purge_step: int | None) -> Any:
    """torch's ``SummaryWriter`` on ``folder``. ``purge_step`` (a resumed run: the first step after the
    checkpoint) makes TensorBoard's reader drop what the interrupted process wrote from that step on,
    as :meth:`mast.run_log.RunLog.truncate` drops those lines of ``metrics.jsonl``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises this when the tensorboard package is missing
        raise ConfigError(f"TensorBoard events need the tensorboard package ({exc}); install the pinned "
                          "requirements.txt or pass --no-tensorboard") from None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step, flush_secs=60)


def write_record(writer: Any, record: dict) -> None:
    """One ``metrics.jsonl`` line as scalars at its step; ``None`` (undefined, e.g. a correlation over a
    batch where δ_k is constant) is left out, a NaN loss is kept (the curve shows where it diverged)."""
    step = int(record["step"])
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        writer.add_scalar(tag(key), float(value), step)
