"""Where a result came from: the code version and the library versions, written next to it."""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterable

_REPO = Path(__file__).resolve().parents[1]
_LIBRARIES = ("torch", "torchvision", "numpy", "PIL", "detectron2", "mmseg", "mmengine", "mmcv", "sklearn")


# Committed outputs of this code (the demo and study reports): rebuilding them into the checkout,
# as ``make demo`` does, leaves the code unchanged, so they do not make a version ``-dirty``.
GENERATED = ("reports/demo", "reports/study")


def code_version(repo: Path | None = None) -> str:
    """``git describe`` of this checkout, ``-dirty`` when a tracked file outside :data:`GENERATED`
    differs from the commit; else the package version."""
    repo = repo or _REPO
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5,
                                  check=True).stdout.strip()

        head = git("describe", "--always", "--abbrev=12")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      *(f":(exclude){p}" for p in GENERATED))
        return head + ("-dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"mast-ssl {version('mast-ssl')}"
        except PackageNotFoundError:
            return "unknown"


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of Python, the platform, torch and whichever other libraries are already imported."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (*_LIBRARIES, *extra):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = str(getattr(module, "__version__", "?"))
    try:
        import torch

        versions["cuda"] = torch.version.cuda or "none"
        versions["cudnn"] = str(torch.backends.cudnn.version())
        if torch.cuda.is_available():
            versions["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return versions


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks (checkpoints, hub downloads, report files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
