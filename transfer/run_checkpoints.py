"""The checkpoints of one ``run_all``: each ``--ckpt`` validated before anything runs, named, and
numbered within its name (checkpoints sharing a name are the pretraining seeds of one group)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mast import rundir

UNTRAINED_STEM = Path(rundir.BACKBONE_INIT).stem  # a pretraining run's network at initialisation: the floor
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path
    sha256: str
    arch: str
    method: str | None
    untrained: bool
    backbone: str | None = None  # the --backbone passed to every task (None: each file's default choice)
    chosen: str = ""  # the backbone prefix that choice resolves to (for the record)
    seed_index: int = 0  # position among the checkpoints sharing this name (pretraining seeds)
    shared: bool = False  # the name is shared: results go one folder deeper, per checkpoint

    @property
    def label(self) -> str:
        return f"{self.name}#{self.seed_index}" if self.shared else self.name

    def task_dir(self, out: Path, task: str) -> Path:
        return out / self.name / self.sha256[:8] / task if self.shared else out / self.name / task


def default_name(path: Path) -> str:
    """Run-directory name for a pretraining run's file (``<run>_init`` for backbone_init.pth), else the stem."""
    if (path.parent / rundir.CONFIG).is_file():
        return path.parent.name + ("_init" if path.stem == UNTRAINED_STEM else "")
    return path.stem


def resolve_checkpoints(paths: list[str], names: list[str], backbones: list[str] | None = None) -> list[Checkpoint]:
    """Validate every --ckpt before anything runs: it exists, maps onto a ResNet; a shared name groups seeds."""
    from transfer.checkpoints import CheckpointError, load_backbone

    if names and len(names) != len(paths):
        raise UsageError(f"--name given {len(names)} times for {len(paths)} --ckpt; give one per checkpoint or none")
    backbones = list(backbones or [])
    if len(backbones) not in (0, 1, len(paths)):
        raise UsageError(f"--backbone given {len(backbones)} times for {len(paths)} --ckpt; give it once (for every "
                         "checkpoint) or once per --ckpt ('auto' for the default choice)")
    choices = [None if b in (None, "auto") else b for b in (backbones * len(paths) if len(backbones) == 1 else backbones)]
    out = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        if not path.is_file():
            raise UsageError(f"--ckpt {raw}: no such file (expected a checkpoint .pth)")
        try:
            _, info = load_backbone(path, choices[i] if choices else None)
        except CheckpointError as e:
            raise UsageError(f"--ckpt {raw}: {e}") from None
        name = names[i] if names else default_name(path)
        if not name or not set(name) <= _NAME_CHARS or set(name) == {"."}:
            raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (it names a directory)")
        out.append(Checkpoint(name, path, info.sha256, info.arch, info.method, path.stem == UNTRAINED_STEM,
                              choices[i] if choices else None, info.backbone))
    return _group_seeds(out)


def _group_seeds(ckpts: list[Checkpoint]) -> list[Checkpoint]:
    """Number the checkpoints of each name in order; the same file twice under one name is a mistake."""
    seen: dict[tuple[str, str, str], Path] = {}
    counts = {c.name: sum(d.name == c.name for d in ckpts) for c in ckpts}
    index: dict[str, int] = {}
    out = []
    for c in ckpts:
        if (c.name, c.sha256, c.chosen) in seen:
            raise UsageError(f"--name {c.name}: {seen[(c.name, c.sha256, c.chosen)]} and {c.path} are the same checkpoint "
                             "(sha256); a shared name groups different pretraining seeds")
        seen[(c.name, c.sha256, c.chosen)] = c.path
        out.append(replace(c, seed_index=index.get(c.name, 0), shared=counts[c.name] > 1))
        index[c.name] = index.get(c.name, 0) + 1
    return out
