"""What a pretraining run writes about itself (timm habit: the run directory explains itself).

``config.yaml`` (resolved config, top-level ``method``), ``versions.json``, ``metrics.jsonl`` (one
line per logged step: every loss term, mean u_k and subspace size per augmentation, lr, img/s;
plus kNN lines), ``summary.csv`` (one row per epoch; row 0 = the network at initialisation).
Also home of the non-finite-loss guard, the bad-image counter and the held-out pass for
``mast_state.pth``.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mast.atomic import write_text_atomic

from mast.config import PretrainConfig, write_yaml
from mast.data.folder import DatasetError, TwoViewFolder, sample_seed
from mast.loss import invariance_weights, mismatch_factor

SUMMARY_FIELDS = ("epoch", "step", "lr", "loss", "inv", "var", "cov", "unc", "mask_prior",
                  "img_per_s", "knn_top1", "bad_images", "elapsed_s")
_TERMS = ("loss", "inv", "var", "cov", "unc", "mask_prior")


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. non-finite loss); one-line message."""


_write_atomic = write_text_atomic


def versions() -> dict[str, Any]:
    """Library versions and code revision, written next to the results."""
    import PIL
    import torchvision
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(), "code_version": rev}


class RunLog:
    """metrics.jsonl / summary.csv writer plus per-epoch accumulators (only rank 0 writes)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.dir, self.enabled = run_dir, enabled
        self.summary_rows: list[dict] = []
        self.knn_init: float | None = None
        self.knn_last: float | None = None
        self._sums: dict[str, float] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._first_bad: torch.Tensor | None = None
        self._last_save, self._last_saved_step = time.time(), 0
        self._t_log, self._n_log = time.time(), 0
        self._t_epoch = time.time()
        self._bad_seen: set[int] = set()
        self._images_epoch = 0

    # ------------------------------------------------------------------ files
    def start(self, cfg: PretrainConfig, vers: dict) -> None:
        """A fresh run: write config.yaml and versions.json, empty the logs."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_yaml(cfg, self.dir / "config.yaml")
        _write_atomic(self.dir / "versions.json", json.dumps(vers, indent=2) + "\n")
        _write_atomic(self.dir / "metrics.jsonl", "")
        self._write_summary()

    def truncate(self, step: int, extra: dict) -> None:
        """On resume: drop log lines written after the checkpoint; restore epoch accumulators."""
        self.summary_rows = list(extra.get("summary", []))
        self._sums = dict(extra.get("epoch_sums", {}))
        self._bad_seen = set(extra.get("bad_seen", []))
        self._last_saved_step = step
        self.knn_init = extra.get("knn_init")
        if not self.enabled:
            return
        path = self.dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        _write_atomic(path, "".join(ln + "\n" for ln in kept))
        self._write_summary()

    def _append(self, record: dict) -> None:
        if self.enabled:
            with open(self.dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _write_summary(self) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.summary_rows)
        _write_atomic(self.dir / "summary.csv", buf.getvalue())

    def state(self) -> dict:
        """What last.pth must carry for the logs to continue seamlessly."""
        self._flush()
        return {"summary": self.summary_rows, "epoch_sums": dict(self._sums),
                "bad_seen": sorted(self._bad_seen), "knn_init": self.knn_init}

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

    def begin_epoch(self, epoch: int, dataset: TwoViewFolder, per_rank: int, max_bad: float) -> None:
        self._dataset, self._bad_limit = dataset, max_bad * per_rank
        self._t_epoch = self._t_log = time.time()
        self._n_log = self._images_epoch = 0

    def step(self, step: int, epoch: int, out: dict, images: int, bad: torch.Tensor,
             aug_names: list[str], log_every: int, bar: tqdm) -> None:
        """Accumulate one step; write a metrics line every ``log_every`` steps."""
        loss = out["loss"].detach()
        bad_now = ~torch.isfinite(loss)
        step_t = torch.full((), step, device=loss.device)
        self._first_bad = torch.where(bad_now, step_t, torch.full_like(step_t, -1)) \
            if self._first_bad is None else torch.where((self._first_bad < 0) & bad_now, step_t, self._first_bad)
        for name in _TERMS:
            if name in out:
                value = out[name].detach().float()
                self._pending[name] = self._pending.get(name, 0) + value
        self._pending["_n"] = self._pending.get("_n", 0) + 1
        self._count_bad(bad)
        self._n_log += images
        self._images_epoch += images
        bar.update(1)
        if step % log_every:
            return
        self.check_finite(step)
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
                record.update({f"{name}/{a}": v for a, v in zip(aug_names, value.tolist())})
        self._append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['img_per_s']:.0f}", refresh=False)

    def _flush(self) -> None:
        for name, value in self._pending.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._pending = {}

    def _count_bad(self, bad: torch.Tensor) -> None:
        for index in bad[bad >= 0].tolist():
            if index in self._bad_seen:
                continue
            self._bad_seen.add(index)
            path = self._dataset.files[index]
            if len(self._bad_seen) <= 10:
                tqdm.write(f"warning: unreadable image skipped: {path} "
                           f"({len(self._bad_seen)} this epoch, limit {int(self._bad_limit)})")
            if len(self._bad_seen) > self._bad_limit:
                raise DatasetError(f"data.root={self._dataset.root}: more than "
                                   f"{100 * self._bad_limit / max(len(self._dataset), 1):.2g}% of the "
                                   f"images are unreadable ({len(self._bad_seen)} so far, e.g. {path}); "
                                   "fix or remove them (data.max_bad_fraction)")

    def check_finite(self, step: int) -> None:
        """Raise TrainingError naming the first step whose loss was NaN/Inf (nothing is saved)."""
        if self._first_bad is not None and int(self._first_bad) >= 0:
            raise TrainingError(
                f"loss became NaN/Inf at step {int(self._first_bad)}; stopped without saving; "
                f"last good checkpoint: {self.dir / 'last.pth'} (step {self._last_saved_step})")

    def end_epoch(self, epoch: int, step: int, lr: float, knn_acc: float | None) -> None:
        """Append the epoch's summary row (means over its steps) and the kNN line."""
        self._flush()
        n = max(self._sums.pop("_n", 0.0), 1.0)
        row: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr}
        row.update({k: round(v / n, 6) for k, v in self._sums.items() if k in _TERMS})
        elapsed = time.time() - self._t_epoch
        row["img_per_s"] = round(self._images_epoch / max(elapsed, 1e-9), 2)
        row.update(knn_top1=None if knn_acc is None else round(knn_acc, 3),
                   bad_images=len(self._bad_seen), elapsed_s=round(elapsed, 1))
        self.summary_rows.append(row)
        self._sums, self._bad_seen = {}, set()
        self._write_summary()
        if knn_acc is not None:
            self._append({"step": step, "epoch": epoch, "knn_top1": knn_acc})
            self.knn_last = knn_acc
            tqdm.write(f"epoch {epoch}: loss {row.get('loss', float('nan')):.4f}, kNN top-1 {knn_acc:.2f}%")

    def minutes_since_save(self) -> float:
        return (time.time() - self._last_save) / 60

    def saved(self, step: int) -> None:
        self._last_save, self._last_saved_step = time.time(), step

    def describe(self) -> str:
        if self.knn_init is None or self.knn_last is None:
            return "kNN monitor off"
        return f"kNN top-1 {self.knn_init:.2f}% at init -> {self.knn_last:.2f}%"


@torch.no_grad()
def heldout_pass(model: torch.nn.Module, photometric: torch.nn.Module, files: list[Path], root: Path,
                 transform: Any, n: int, seed: int, device: torch.device, source: str) -> dict:
    """δ, u (eq. 1) and each pair's mean invariance weight w (eq. 4, mean over dimensions) for ``n``
    image pairs not used for training (METHOD.md §5 reports); "w_mean" = the mean of w over them."""
    if n == 0 or not files:
        return {"delta": torch.zeros(0, len(model.aug_names)), "source": source}
    files = files[:: max(1, len(files) // n)][:n]
    dataset = TwoViewFolder(root, transform, files=files)
    deltas, us, ws = [], [], []
    for start in range(0, len(files), 256):
        items = [dataset[(i, sample_seed(2, seed, i))]
                 for i in range(start, min(start + 256, len(files)))]
        views = torch.stack([it[0] for it in items]).to(device)
        spatial = torch.stack([it[1] for it in items]).to(device)
        gen = torch.Generator(device=device).manual_seed(sample_seed(3, seed, start))
        batch = photometric(views, spatial, generator=gen)
        deltas.append(batch.delta.float().cpu())
        if model.subspace is not None:
            u = model.uncertainty(batch.theta1, batch.theta2, batch.delta).float()
            us.append(u.cpu())
            ws.append(invariance_weights(mismatch_factor(u, model.masks().float())).mean(dim=1).cpu())
    out = {"delta": torch.cat(deltas), "source": source}
    if us:
        out["u"], out["w_pair"] = torch.cat(us), torch.cat(ws)
        out["w_mean"] = float(out["w_pair"].mean())
    return out
