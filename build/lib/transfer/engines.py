"""The one door to the downstream engines: Detectron2 and MMSegmentation.

Everything in this project that needs detectron2 or mmseg calls :func:`require_detectron2` or
:func:`require_mmseg` first. They

- fail with one line naming the missing package and the install command, instead of an
  ``ImportError`` from deep inside a dependency;
- register what the engine needs registered (mmseg: all of its modules; the detection package adds
  its own ROI head in :func:`transfer.detection.heads.register_heads`);
- make mmseg importable on ``mmcv-lite`` (no compiled ops) with a small ``mmcv.ops`` shim, which
  does nothing when a full mmcv is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from types import ModuleType
from typing import Any

INSTALL_HINT = "run `make setup` (scripts/setup_env.sh) to install the pinned stack"
SYNC_NORMS = ("SyncBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN")


class EngineMissing(ImportError):
    """An engine (detectron2, mmseg, ...) is not installed: one-line message with the fix."""


def _import(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise EngineMissing(f"{package} is not importable ({e}); {INSTALL_HINT}") from None


def require_detectron2() -> ModuleType:
    """Import detectron2 (one-line :class:`EngineMissing` when it is not installed)."""
    detectron2 = _import("detectron2", "detectron2 (registry package sal-detectron2==0.7.2)")
    _import("detectron2.modeling", "detectron2")
    return detectron2


def require_mmseg() -> ModuleType:
    """Import mmseg with every module registered; works on mmcv-lite thanks to the ops shim."""
    _import("mmengine", "mmengine==0.10.7")
    _import("mmcv", "mmcv-lite==2.1.0 (or mmcv==2.1.0)")
    install_mmcv_ops_shim()
    mmseg = _import("mmseg", "mmsegmentation==1.2.2")
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return mmseg


def sync_norms_to_bn(node: Any, key: str, prefix: str = "") -> list[str]:
    """Set every SyncBN-type ``node[key]`` of a nested config to BN: one process has nothing to sync with.

    Walks detectron2's ``CfgNode`` (``key="NORM"``) and mmengine's config dicts and lists
    (``key="type"``); returns one ``"PATH: OLD -> BN"`` per change.
    """
    changed = []
    for k, value in node.items() if hasattr(node, "items") else enumerate(node):
        if hasattr(value, "items") or isinstance(value, (list, tuple)):
            changed += sync_norms_to_bn(value, key, f"{prefix}{k}.")
        elif k == key and value in SYNC_NORMS:
            node[k] = "BN"
            changed.append(f"{prefix}{k}: {value} -> BN")
    return changed


def has_compiled_mmcv_ops() -> bool:
    """True when mmcv ships its compiled extension (full mmcv, not mmcv-lite)."""
    return importlib.util.find_spec("mmcv._ext") is not None


def install_mmcv_ops_shim() -> None:
    """Make ``import mmcv.ops`` work on mmcv-lite (docs/ENVIRONMENT.md, "MMSegmentation").

    mmseg 1.2.2 imports ``mmcv.ops`` unconditionally in four places (``point_sample`` three times,
    ``sigmoid_focal_loss`` once), and mmcv-lite's ``mmcv/ops/__init__.py`` loads the compiled
    extension that mmcv-lite lacks. The shim registers a ``mmcv.ops`` package that points at the
    real ``ops/`` folder without running its ``__init__`` and exposes the pure-PyTorch
    ``point_sample``; any other op resolves to a stub that raises, naming the op, only when called.
    FCN, UPerNet and DeepLabV3 use no compiled op. With full mmcv installed this does nothing.
    """
    if has_compiled_mmcv_ops() or isinstance(sys.modules.get("mmcv.ops"), _OpsShim):
        return
    mmcv = importlib.import_module("mmcv")
    ops_dir = Path(mmcv.__file__).parent / "ops"
    shim = _OpsShim("mmcv.ops", doc="mmcv-lite shim (transfer/engines.py): pure-PyTorch ops only")
    shim.__path__ = [str(ops_dir)]  # submodules such as mmcv.ops.point_sample import normally
    shim.__file__ = str(ops_dir / "__init__.py")
    shim.__package__ = "mmcv.ops"
    sys.modules["mmcv.ops"] = shim
    mmcv.ops = shim
    point_sample = importlib.import_module("mmcv.ops.point_sample")
    shim.point_sample = point_sample.point_sample
    shim.bilinear_grid_sample = point_sample.bilinear_grid_sample


class _OpsShim(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        message = (
            f"mmcv.ops.{name} needs mmcv's compiled ops, which mmcv-lite lacks; "
            "use a model without it (FCN, UPerNet, DeepLabV3 need none) or install full mmcv==2.1.0"
        )

        def missing_op(*args, **kwargs):
            raise EngineMissing(message)

        if name[:1].isupper():  # a class: keep isinstance() checks working, fail on construction
            return type(name, (), {"__init__": missing_op, "__module__": "mmcv.ops"})
        missing_op.__name__ = name
        return missing_op
