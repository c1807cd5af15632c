"""``--resume``: continue a seed from its own last checkpoint in its output folder, read as data.

detectron2's way (``DefaultTrainer.resume_or_load(resume=True)``): ``OUTPUT_DIR/last_checkpoint``
names the newest ``model_*.pth`` the ``PeriodicCheckpointer`` wrote; loading it restores the model,
the optimizer, the LR scheduler and the iteration, and training goes on at the next iteration.

A file in the run's folder is no more trusted than any other. detectron2's ``DetectionCheckpointer``
unpickles ``.pkl`` files with ``pickle.load`` and reads ``.pth`` through ``torch.load``, whose
``weights_only`` default an environment variable can turn off. :class:`SafeCheckpointer` reads only
``.pth`` files, through :func:`transfer.backbones.read.read_torch_file` (tensors and plain containers;
nothing the file names is called), and ``last_checkpoint`` must name a file of the folder itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from plumbing.safe_read import UnreadableFile, read_regular_text
from transfer.records import TaskFailed

__all__ = ["LAST_CHECKPOINT", "checkpoint_to_resume", "clear_resume_point", "install_safe_checkpointer", "resume"]

LAST_CHECKPOINT = "last_checkpoint"
log = logging.getLogger("transfer.detection")


def checkpoint_to_resume(out_dir: str | Path) -> Path | None:
    """The checkpoint ``out_dir/last_checkpoint`` names, or None when there is none.

    Raises :class:`TaskFailed` when it names anything but a ``.pth`` file directly in ``out_dir``.
    """
    out_dir = Path(out_dir)
    pointer = out_dir / LAST_CHECKPOINT
    if not os.path.lexists(pointer):
        return None
    try:  # a regular file only: open() on a FIFO here would block the task forever
        name = read_regular_text(pointer, "--resume:", 4096).strip()
    except UnreadableFile as e:
        raise TaskFailed(f"{e} (detectron2's pointer to the last checkpoint); run without --resume to start over") \
            from None
    path = out_dir / name
    if not name or Path(name).name != name or not name.endswith(".pth"):
        raise TaskFailed(f"--resume: {out_dir / LAST_CHECKPOINT} names {name!r}; expected a model_*.pth file of "
                         "that folder (only the run's own checkpoints are resumed)")
    if not path.is_file():
        what = "is not a regular file" if os.path.lexists(path) else "does not exist"
        raise TaskFailed(f"--resume: {out_dir / LAST_CHECKPOINT} names {path}, which {what}; "
                         "run without --resume to start over")
    return path


def clear_resume_point(out_dir: str | Path) -> None:
    """A fresh start forgets an earlier attempt's checkpoint, so a later --resume never continues it."""
    (Path(out_dir) / LAST_CHECKPOINT).unlink(missing_ok=True)


def install_safe_checkpointer(trainer: Any) -> None:
    """Replace ``trainer.checkpointer`` (used for loading) by a :class:`SafeCheckpointer` of the same
    model, folder and checkpointables; the ``PeriodicCheckpointer`` hook keeps saving as before."""
    from detectron2.checkpoint import DetectionCheckpointer

    from transfer.backbones.read import FileReadError, read_torch_file

    class SafeCheckpointer(DetectionCheckpointer):
        """Reads ``.pth`` files only, as data (module docstring)."""

        def load(self, path: str, *args: Any, **kwargs: Any) -> dict:
            try:
                return super().load(path, *args, **kwargs)
            finally:  # detectron2 resets it only after a load that worked
                self._parsed_url_during_load = None

        def _load_file(self, filename: str) -> dict:
            if not str(filename).endswith(".pth"):
                raise TaskFailed(f"--resume: {filename} is not a .pth file; only the run's own checkpoints are read")
            return super()._load_file(filename)

        def _torch_load(self, f: str) -> Any:
            try:
                return read_torch_file(f)
            except FileReadError as e:
                raise TaskFailed(str(e)) from None

    old = trainer.checkpointer
    trainer.checkpointer = SafeCheckpointer(old.model, old.save_dir, save_to_disk=old.save_to_disk,
                                            **old.checkpointables)


def resume(trainer: Any, out_dir: str | Path) -> str | None:
    """Load the seed's last checkpoint into ``trainer`` (model, optimizer, scheduler, iteration);
    returns a line for the record, or None when ``out_dir`` holds no checkpoint (start from the weights)."""
    path = checkpoint_to_resume(out_dir)
    if path is None:
        log.info("--resume: no checkpoint in %s; starting from the converted weights", out_dir)
        return None
    install_safe_checkpointer(trainer)
    trainer.resume_or_load(resume=True)  # detectron2: start_iter = the saved iteration + 1
    line = f"resumed from {path.name} at iteration {trainer.start_iter} of {trainer.max_iter}"
    log.info("--resume: %s", line)
    return line
