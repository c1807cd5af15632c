"""Where a result came from: the code version and the library versions, written next to it."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterable

_REPO = Path(__file__).resolve().parents[1]
_LIBRARIES = ("torch", "torchvision", "numpy", "PIL", "detectron2", "mmseg", "mmengine", "mmcv", "sklearn")


def code_version() -> str:
    """``git describe`` of this checkout (with ``-dirty``), else the package version."""
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip()
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
