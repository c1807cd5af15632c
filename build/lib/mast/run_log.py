"""What a pretraining run writes about itself (timm habit: the run directory explains itself).

``config.yaml`` (resolved config, top-level ``method``), ``versions.json``, ``metrics.jsonl`` (one
line per logged step: every loss term, mean u_k and subspace size per augmentation, lr, img/s;
plus kNN lines), ``summary.csv`` (one row per epoch; row 0 = the network at initialisation),
``tensorboard/`` (the same scalars as TensorBoard events, :mod:`mast.tensorboard_events`).
File names: :mod:`mast.rundir`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mast import rundir
from plumbing.atomic import write_text_atomic
from mast.config import PretrainConfig, write_yaml
from plumbing.provenance import code_version, library_versions
from mast.tensorboard_events import open_writer, write_record

SUMMARY_FIELDS = ("epoch", "step", "lr", "loss", "inv", "var", "cov", "unc", "mask_prior",
                  "img_per_s", "knn_top1", "bad_images", "elapsed_s")
_TERMS = ("loss", "inv", "var", "cov", "unc", "mask_prior")


class RunLog:
    """metrics.jsonl / summary.csv writer plus per-epoch accumulators (only rank 0 writes)."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.dir, self.enabled = run_dir, enabled
        self.tensorboard = tensorboard and enabled
        self._tb: Any = None  # SummaryWriter, opened by start() or truncate()
        self.summary_rows: list[dict] = []
        self.knn_init: float | None = None
        self.knn_last: float | None = None
        self._sums: dict[str, float] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._last_save = time.time()
        self._t_log, self._n_log = time.time(), 0
        self._t_epoch = time.time()
        self._images_epoch = 0

    # ------------------------------------------------------------------ files
    def start(self, cfg: PretrainConfig) -> None:
        """A fresh run: write config.yaml and versions.json, empty the logs."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_yaml(cfg, self.dir / rundir.CONFIG)
        versions = {**library_versions(), "code_version": code_version()}
        write_text_atomic(self.dir / rundir.VERSIONS, json.dumps(versions, indent=2) + "\n")
        write_text_atomic(self.dir / rundir.METRICS, "")
        self._write_summary()
        self._open_tb(None)

    def truncate(self, step: int, extra: dict) -> None:
        """On resume: drop log lines written after the checkpoint; restore epoch accumulators."""
        self.summary_rows = list(extra.get("summary", []))
        self._sums = dict(extra.get("epoch_sums", {}))
        self.knn_init = extra.get("knn_init")
        if not self.enabled:
            return
        path = self.dir / rundir.METRICS
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        write_text_atomic(path, "".join(ln + "\n" for ln in kept))
        self._write_summary()
        self._open_tb(step + 1)

    def _open_tb(self, purge_step: int | None) -> None:
        if self.tensorboard and self._tb is None:
            self._tb = open_writer(self.dir / rundir.TENSORBOARD, purge_step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the run ends or stops)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _append(self, record: dict) -> None:
        if self.enabled:
            with open(self.dir / rundir.METRICS, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            write_record(self._tb, record)

    def _write_summary(self) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.summary_rows)
        write_text_atomic(self.dir / rundir.SUMMARY, buf.getvalue())

    def state(self) -> dict:
        """What last.pth must carry for the logs to continue seamlessly."""
        self._flush()
        return {"summary": self.summary_rows, "epoch_sums": dict(self._sums), "knn_init": self.knn_init}

    # ------------------------------------------------------------------ events
    def knn(self, step: int, epoch: int, acc: float | None) -> None:
        """Log a kNN evaluation; at step 0 it is the initialisation floor (summary row 0)."""
        if acc is None:
            return
        self._append({"step": step, "epoch": epoch, "knn_top1": acc})
        if step == 0:
            self.knn_init = acc
            self.summary_rows = [{"epoch": 0, "step": 0, "knn_top1": round(acc, 3)}]
            self._write_summary()
            tqdm.write(f"kNN top-1 at initialisation: {acc:.2f}%")
        self.knn_last = acc

    def begin_epoch(self) -> None:
        self._t_epoch = self._t_log = time.time()
        self._n_log = self._images_epoch = 0

    def step(self, step: int, epoch: int, out: dict, images: int, aug_names: list[str], log_every: int,
             bar: tqdm) -> None:
        """Accumulate one step; write a metrics line every ``log_every`` steps."""
        for name in _TERMS:
            if name in out:
                value = out[name].detach().float()
                self._pending[name] = self._pending.get(name, 0) + value
        self._pending["_n"] = self._pending.get("_n", 0) + 1
        self._n_log += images
        self._images_epoch += images
        bar.update(1)
        if step % log_every:
            return
        now = time.time()
        record: dict[str, Any] = {"step": step, "epoch": epoch + 1, "lr": out["lr"],
                                  "img_per_s": self._n_log / max(now - self._t_log, 1e-9)}
        self._t_log, self._n_log = now, 0
        for name, value in out.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.numel() == 1:
                record[name] = value.item()
            elif value.dim() == 1 and value.numel() == len(aug_names):
                record.update({f"{name}/{a}": v if math.isfinite(v) else None  # e.g. r with δ_k constant
                               for a, v in zip(aug_names, value.tolist())})
        self._append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['img_per_s']:.0f}", refresh=False)

    def _flush(self) -> None:
        for name, value in self._pending.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._pending = {}

    def end_epoch(self, epoch: int, step: int, lr: float, knn_acc: float | None, bad_images: int) -> None:
        """Append the epoch's summary row (means over its steps) and the kNN line."""
        self._flush()
        n = max(self._sums.pop("_n", 0.0), 1.0)
        row: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr}
        row.update({k: round(v / n, 6) for k, v in self._sums.items() if k in _TERMS})
        elapsed = time.time() - self._t_epoch
        row["img_per_s"] = round(self._images_epoch / max(elapsed, 1e-9), 2)
        row.update(knn_top1=None if knn_acc is None else round(knn_acc, 3),
                   bad_images=bad_images, elapsed_s=round(elapsed, 1))
        self.summary_rows.append(row)
        self._sums = {}
        self._write_summary()
        if knn_acc is not None:
            self._append({"step": step, "epoch": epoch, "knn_top1": knn_acc})
            self.knn_last = knn_acc
            tqdm.write(f"epoch {epoch}: loss {row.get('loss', float('nan')):.4f}, kNN top-1 {knn_acc:.2f}%")

    def minutes_since_save(self) -> float:
        return (time.time() - self._last_save) / 60

    def saved(self) -> None:
        self._last_save = time.time()
        if self._tb is not None:  # the events reach the disk with each checkpoint
            self._tb.flush()

    def describe(self) -> str:
        if self.knn_init is None or self.knn_last is None:
            return "kNN monitor off"
        return f"kNN top-1 {self.knn_init:.2f}% at init -> {self.knn_last:.2f}%"
