"""The checkpoints of one ``run_all``: each ``--ckpt`` validated before anything runs, named, and
numbered within its name (checkpoints sharing a name are the pretraining seeds of one group).

Within a group, ``seed_index`` follows the pretraining seed each run's ``config.yaml`` records when
every member has one (so ``--ckpt s2 --ckpt s0`` is numbered like ``--ckpt s0 --ckpt s2``), else
the order of ``--ckpt``. The report pairs two groups' seeds only when their pretraining seeds are the
same (docs/STATISTICS.md)."""

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
    seed_index: int = 0  # number among the checkpoints sharing this name (by pretraining seed, else order)
    shared: bool = False  # the name is shared: results go one folder deeper, per checkpoint
    pretrain_seed: int | None = None  # CheckpointInfo.pretrain_seed: the run's ``seed``, when known
    family: str = "resnet"  # "resnet" or "vit" (CheckpointInfo.family): which tasks can take it
    reference: str = ""  # a hub reference pinned to what it resolved to (transfer.hub): what the tasks are given

    @property
    def ckpt_arg(self) -> str:
        """What each task's --ckpt is: the pinned hub reference (its record names it), else the file."""
        return self.reference or str(self.path)

    @property
    def label(self) -> str:
        return f"{self.name}#{self.seed_index}" if self.shared else self.name

    def task_dir(self, out: Path, task: str) -> Path:
        return out / self.name / self.sha256[:8] / task if self.shared else out / self.name / task


def default_name(path: Path) -> str:
    """Run-directory name for a pretraining run's file (``<run>_init`` for backbone_init.pth), else the stem."""
    if (path.parent / rundir.CONFIG).is_file():
        return path.parent.name + ("_init" if path.stem == UNTRAINED_STEM else "")
    name = path.name
    for suffix in (".pth.tar", ".pt.tar", ".ckpt", ".pth", ".pt", ".pkl", ".tar", ".bin", ".safetensors"):
        if name.endswith(suffix) and len(name) > len(suffix):  # MoCo's moco_v2_800ep_pretrain.pth.tar -> moco_v2_800ep_pretrain
            return name[: -len(suffix)]
    return path.stem


def resolve_checkpoints(paths: list[str], names: list[str], backbones: list[str] | None = None) -> list[Checkpoint]:
    """Validate every --ckpt before anything runs: it exists, maps onto a ResNet or a ViT; a shared name groups seeds."""
    from transfer.backbones import CheckpointError, load
    from transfer.hub import is_reference

    if names and len(names) != len(paths):
        raise UsageError(f"--name given {len(names)} times for {len(paths)} --ckpt; give one per checkpoint or none")
    backbones = list(backbones or [])
    if len(backbones) not in (0, 1, len(paths)):
        raise UsageError(f"--backbone given {len(backbones)} times for {len(paths)} --ckpt; give it once (for every "
                         "checkpoint) or once per --ckpt ('auto' for the default choice)")
    choices = [None if b in (None, "auto") else b for b in (backbones * len(paths) if len(backbones) == 1 else backbones)]
    out = []
    for i, raw in enumerate(paths):
        hub = is_reference(raw)
        if not hub and not Path(raw).is_file():
            raise UsageError(f"--ckpt {raw}: no such file (expected a checkpoint .pth, or a hub reference "
                             "hf://ORG/REPO, torchvision://MODEL.TAG, timm://MODEL.TAG, https://URL)")
        try:
            _, info = load(raw, choices[i] if choices else None)
        except CheckpointError as e:
            msg = str(e)
            raise UsageError(msg if msg.startswith(f"--ckpt {raw}") else f"--ckpt {raw}: {msg}") from None
        path = Path(info.path)
        name = names[i] if names else (reference_name(raw) if hub else default_name(path))
        if not name or not set(name) <= _NAME_CHARS or set(name) == {"."}:
            raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (it names a directory)")
        out.append(Checkpoint(name, path, info.sha256, info.arch, info.method, path.stem == UNTRAINED_STEM,
                              choices[i] if choices else None, info.backbone, pretrain_seed=info.pretrain_seed,
                              family=info.family, reference=info.resolved))
    return _group_seeds(out)


def reference_name(ref: str) -> str:
    """Display name of a hub reference: its repo, model tag or file name (``hf://facebook/dinov2-small`` -> dinov2-small)."""
    body = ref.split("://", 1)[1].split("#")[0]
    if ref.startswith("hf://"):
        body = body.split("/")[1].split("@")[0]
    elif ref.startswith(("https://", "http://")):
        return default_name(Path(body.rstrip("/").rsplit("/", 1)[-1] or "checkpoint"))
    return "".join(c if c in _NAME_CHARS else "_" for c in body) or "checkpoint"


def _group_seeds(ckpts: list[Checkpoint]) -> list[Checkpoint]:
    """Number the checkpoints of each name by pretraining seed when all of them have a distinct one,
    else in order; the same file twice under one name is a mistake."""
    seen: dict[tuple[str, str, str], Path] = {}
    for c in ckpts:
        if (c.name, c.sha256, c.chosen) in seen:
            raise UsageError(f"--name {c.name}: {seen[(c.name, c.sha256, c.chosen)]} and {c.path} are the same checkpoint "
                             "(sha256); a shared name groups different pretraining seeds")
        seen[(c.name, c.sha256, c.chosen)] = c.path
    groups: dict[str, list[int]] = {}  # name -> positions in ckpts
    for i, c in enumerate(ckpts):
        groups.setdefault(c.name, []).append(i)
    index: dict[int, int] = {}  # position in ckpts -> seed_index
    for members in groups.values():
        seeds = [ckpts[i].pretrain_seed for i in members]
        if None not in seeds and len(set(seeds)) == len(seeds):
            members = sorted(members, key=lambda i: ckpts[i].pretrain_seed)
        index.update({i: k for k, i in enumerate(members)})
    return [replace(c, seed_index=index[i], shared=len(groups[c.name]) > 1) for i, c in enumerate(ckpts)]
