"""Pretraining configuration: dataclasses, YAML presets, ``key=value`` overrides, validation.

A config is resolved once (preset YAML -> dotted overrides -> validation), written next to the
results as ``config.yaml`` and stored in every checkpoint. The model, loss and augmentation
sections are the dataclasses of :mod:`mast.model` and :mod:`mast.augment`; the top-level
``method`` (``vicreg`` | ``mast``, METHOD.md §4) is the single place the method is chosen.
Every user mistake (unknown key, wrong type, value out of range) is a one-line :class:`ConfigError`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from plumbing.atomic import write_text_atomic

from mast.augment import AugmentConfig
from mast.matched import MatchedError, resolve_loss_section
from mast.model import LossConfig, ModelConfig

PRESETS_DIR = Path(__file__).parent / "configs"
#: Keys that may differ between a checkpoint's config and the config of the run resuming it:
#: they change where things are written or how often, never what is computed.
RESUME_MAY_DIFFER = ("name", "out_dir", "data.num_workers", "runtime.log_every",
                     "runtime.save_every_min", "runtime.progress", "runtime.stop_after_steps",
                     "runtime.threads")
#: ModelConfig.method (inherited from MethodConfig) is driven by the top-level ``method``; not a user key of its own.
_HIDDEN = {"model": ("method",)}


class ConfigError(ValueError):
    """A configuration mistake the user can fix; its message is one line."""


@dataclass
class DataConfig:
    """Pretraining images: an ImageFolder-style root (labels ignored; images at any depth below
    ``root/<dir>/``). ``synthetic`` names a SyntheticSpec preset (``demo``/``tiny``) that is
    generated (or reused) at ``synthetic_dir`` before the run starts."""
    root: str = "data/imagenet/train"
    synthetic: Optional[Literal["demo", "tiny"]] = None
    synthetic_dir: str = "data/synthetic"
    num_workers: int = 8
    max_bad_fraction: float = 0.01
    heldout_pairs: int = 512


@dataclass
class KnnConfig:
    """Online kNN monitor (cosine, temperature-weighted votes) on a labeled task root holding
    ``train/`` and ``test/`` ImageFolders. ``root: null`` turns it off. ``size``: side the
    labeled images are resized to (null: ``augment.size``)."""
    root: Optional[str] = None
    size: Optional[int] = None
    every: int = 1  # epochs between evaluations (0: only after the last epoch)
    k: int = 20
    temperature: float = 0.07
    max_train: int = 10000  # at most this many train images (a seeded random subset); max_test: test
    max_test: int = 5000
    batch_size: int = 256


@dataclass
class OptimConfig:
    """Main optimizer (backbone + expander) and the subspace optimizer (masks + uncertainty
    heads, Adam, METHOD.md §2). lr = base_lr * batch_size / 256, linear warm-up, then cosine
    to lr * final_lr_ratio (VICReg's schedule)."""
    name: Literal["lars", "adamw"] = "lars"
    base_lr: float = 0.2
    batch_size: int = 2048
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 10.0
    epochs: int = 100
    final_lr_ratio: float = 0.001
    subspace_lr: float = 1e-2


@dataclass
class RuntimeConfig:
    """How the loop runs. ``precision: auto`` is bf16 autocast on CUDA and fp32 on CPU.
    ``stop_after_steps`` (debug) saves ``last.pth`` and exits after that many steps in total."""
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    sync_bn: bool = True
    threads: int = 0
    log_every: int = 1
    save_every_min: float = 10.0
    progress: bool = True
    stop_after_steps: int = 0


@dataclass
class PretrainConfig:
    """The whole resolved pretraining config (what ``config.yaml`` holds)."""
    method: Literal["vicreg", "mast"] = "mast"
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def model_config(self) -> ModelConfig:
        """ModelConfig with ``method`` taken from the top level."""
        return dataclasses.replace(self.model, method=self.method)


# ----------------------------------------------------------------------------- type coercion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to annotation ``tp`` or raise a one-line ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config: {key}={value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"config: {key}={value!r} is not a valid {_type_name(tp)}")
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {key}={value!r} must be a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config: {key}={value!r} must have {len(args)} elements")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        elem = args[0] if args else Any
        out = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config: {key}={value!r} must be a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"config: {key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"config: {key}={value!r} must be an integer")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"config: {key}={value!r} must be an integer") from None
        if not as_float.is_integer():
            raise ConfigError(f"config: {key}={value!r} must be an integer")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config: {key}={value!r} must be a number")
        try:
            return float(value)  # also "1e-6", which YAML 1.1 reads as a string
        except (TypeError, ValueError):
            raise ConfigError(f"config: {key}={value!r} must be a number") from None
    if tp is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"config: {key}={value!r} must be a string")
        return str(value)
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys, coercing types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: {prefix or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)
             if f.name not in _HIDDEN.get(prefix, ())]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"config: unknown key '{where}{unknown[0]}' "
                          f"(known under '{prefix or '<top>'}': {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] or {}, key)
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ checks
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config: {msg}" if msg.startswith(prefix) else f"config: {prefix}: {msg}") from None


def to_dict(cfg: Any) -> dict:
    """Plain YAML/JSON-friendly dict (tuples -> lists), without hidden keys."""
    def plain(obj: Any, prefix: str) -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
                    for f in dataclasses.fields(obj) if f.name not in _HIDDEN.get(prefix, ())}
        if isinstance(obj, (list, tuple)):
            return [plain(v, prefix) for v in obj]
        if isinstance(obj, dict):
            return {k: plain(v, prefix) for k, v in obj.items()}
        return obj
    return plain(cfg, "")


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------- resolution
def preset_path(name_or_path: str) -> Path:
    """A preset name (``demo``) or a YAML path -> path; one-line error when neither exists."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"--config {name_or_path}: no such file")
        return path
    candidate = PRESETS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"--config {name_or_path}: not a preset ({', '.join(known)}) "
                          "nor a .yaml file")
    return candidate


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.base_lr=0.3`` -> (['optim', 'base_lr'], 0.3); values are read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.base_lr=0.3")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(config: str = "demo", overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Resolve preset ``config`` (name or YAML path) with ``key=value`` overrides, validated."""
    path = preset_path(config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text (expected a YAML file)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping at the top level")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, part in enumerate(keys[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(keys[:i + 1])}' is not a section")
            node = child
        node[keys[-1]] = value
    try:
        resolve_loss_section(data)  # loss.inv_coeff=auto:RUN_DIR -> a number (matched-invariance control)
    except MatchedError as exc:
        raise ConfigError(str(exc)) from None
    cfg = _build(PretrainConfig, data, "")
    validate(cfg)
    return cfg


def from_dict(data: dict) -> PretrainConfig:
    """Rebuild a config from ``to_dict`` output (e.g. a checkpoint's ``config``)."""
    cfg = _build(PretrainConfig, data, "")
    validate(cfg)
    return cfg


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config: {msg}")


def validate(cfg: PretrainConfig) -> None:
    """Value checks that types alone do not catch (one-line ConfigError)."""
    o, r, d, k = cfg.optim, cfg.runtime, cfg.data, cfg.knn
    _check(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."),
           f"name={cfg.name!r} must be a non-empty directory name without '/'")
    _check(0 <= cfg.seed < 2**32, f"seed={cfg.seed} must be in [0, 2**32)")
    _check(o.batch_size >= 2, f"optim.batch_size={o.batch_size} must be >= 2 (variance needs pairs)")
    _check(o.base_lr > 0, f"optim.base_lr={o.base_lr} must be > 0")
    _check(o.epochs >= 1, f"optim.epochs={o.epochs} must be >= 1")
    _check(0 <= o.warmup_epochs <= o.epochs,
           f"optim.warmup_epochs={o.warmup_epochs} must be in [0, optim.epochs={o.epochs}]")
    _check(0 <= o.final_lr_ratio <= 1, f"optim.final_lr_ratio={o.final_lr_ratio} must be in [0, 1]")
    _check(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0")
    _check(0 <= o.momentum < 1, f"optim.momentum={o.momentum} must be in [0, 1)")
    _check(o.eta > 0, f"optim.eta={o.eta} must be > 0")
    _check(o.subspace_lr >= 0, f"optim.subspace_lr={o.subspace_lr} must be >= 0")
    _check(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0")
    _check(0 <= d.max_bad_fraction < 1, f"data.max_bad_fraction={d.max_bad_fraction} must be in [0, 1)")
    _check(d.heldout_pairs >= 0, f"data.heldout_pairs={d.heldout_pairs} must be >= 0")
    _check(k.every >= 0 and k.k >= 1 and k.temperature > 0 and k.batch_size >= 1,
           "knn: every >= 0, k >= 1, temperature > 0 and batch_size >= 1 are required")
    _check(k.max_train >= k.k and k.max_test >= 1, f"knn.max_train must be >= knn.k={k.k}")
    _check(k.size is None or k.size >= 8, f"knn.size={k.size} must be >= 8 pixels (or null)")
    _check(r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"),
           f"runtime.device={r.device!r} must be auto, cpu or cuda[:N]")
    _check(r.log_every >= 1, f"runtime.log_every={r.log_every} must be >= 1")
    _check(r.threads >= 0 and r.stop_after_steps >= 0 and r.save_every_min > 0,
           "runtime: threads >= 0, stop_after_steps >= 0 and save_every_min > 0 are required")
    _check(cfg.model.arch.startswith("resnet"), f"model.arch={cfg.model.arch!r} must be a torchvision resnet")
    _check(len(cfg.model.expander) >= 1 and all(w >= 1 for w in cfg.model.expander),
           f"model.expander={list(cfg.model.expander)} must be a non-empty list of widths")


def write_yaml(cfg: PretrainConfig, path: Path) -> None:
    """Write the resolved config atomically (temp file + os.replace)."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_diff(a: dict, b: dict, ignore: tuple[str, ...] = RESUME_MAY_DIFFER) -> list[str]:
    """Dotted keys whose values differ between two config dicts (``ignore`` excluded)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb)
                  if k not in ignore and _norm(fa.get(k)) != _norm(fb.get(k)))


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
