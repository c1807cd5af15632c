"""Fixtures of the classification engine's tests (imported by name, as test_slurm's are: a second conftest.py would
shadow the bare `conftest` that tests import helpers from): mmpretrain imported once per module (one torch thread), and
a ResNet-18 checkpoint whose BatchNorm statistics are random, so a tensor the engine failed to load would show."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision


@pytest.fixture(scope="module", autouse=True)
def mmpretrain(one_thread):
    from transfer.classification.engine import require_mmpretrain

    return require_mmpretrain()


@pytest.fixture(scope="module")
def r18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 with random weights and BatchNorm statistics (so an unloaded tensor would show)."""
    path = tmp_path_factory.mktemp("ckpt") / "r18.pth"
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape) * 0.1)
    torch.save(model.state_dict(), path)
    return path
