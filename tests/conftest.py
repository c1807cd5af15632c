"""Shared fixtures. ``synthetic_root``: one tiny synthetic dataset per test session (a few seconds).

Other tests needing a variant call the ``make_synthetic`` factory: ``make_synthetic(size=96)``
returns the root of a dataset generated from ``SyntheticSpec.tiny()`` with those fields replaced
(cached per session, so equal overrides share one dataset). ``one_thread``: a module whose tensors
are small opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""
from __future__ import annotations

import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
import torch

from mast.data.synthetic import SyntheticSpec, ensure_dataset

# tests/ mirrors the packages (tests/mast/, tests/transfer/probes/, ...); the helper modules here and the test
# modules import one another by bare name (``from vissl_standins import voc07``, ``from test_slurm import ...``),
# whichever file pytest collects first, so every test folder is on the path.
TESTS = Path(__file__).resolve().parent
for _folder in sorted({p.parent for p in TESTS.rglob("test_*.py")} | {TESTS}, reverse=True):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory: pytest.TempPathFactory):
    """The probes' default feature cache ($XDG_CACHE_HOME/mast) in a session folder, not the user's home."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: on small tensors much faster than several (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def no_hang():
    """A FIFO opened for reading blocks forever: fail the test after 60 s instead of hanging the suite."""
    def alarm(signum, frame):
        raise TimeoutError("hung (a FIFO was opened?)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def make_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``make_synthetic(**spec_overrides) -> ROOT`` of a COMPLETE synthetic dataset."""
    cache: dict[SyntheticSpec, Path] = {}

    def make(**overrides) -> Path:
        spec = replace(SyntheticSpec.tiny(), **overrides)
        if spec not in cache:
            cache[spec] = ensure_dataset(tmp_path_factory.mktemp("synthetic"), spec)
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def synthetic_root(make_synthetic: Callable[..., Path]) -> Path:
    """ROOT of ``SyntheticSpec.tiny()`` (64 px): see mast/data/README.md for the layout."""
    return make_synthetic()


def tiny_args(root: Path, out: Path, *extra: str) -> list[str]:
    """4 steps per epoch (64 images, batch 16), 2 epochs, ResNet-18 at 32 px, deterministic."""
    return ["--config", "demo", f"out_dir={out}", f"data.root={root / 'unlabeled'}",
            "data.synthetic=null", f"knn.root={root / 'classification' / 'shape'}",
            "data.num_workers=0", "data.heldout_pairs=8", "model.expander=[32,32]",
            "augment.size=32", "augment.blur_kernel_size=5", "optim.batch_size=16",
            "optim.epochs=2", "optim.warmup_epochs=1", "runtime.threads=1",
            "runtime.progress=false", "runtime.deterministic=true", *extra]


@pytest.fixture(scope="session")
def full_run(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    from mast.pretrain import main

    assert main(tiny_args(synthetic_root, out, "--name", "full")) == 0
    return out / "full"
