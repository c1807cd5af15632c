"""CIFAR-stem ResNets (3x3 stride-1 conv1, no max-pool; solo-learn's and lightly's CIFAR models):
recognised from the tensors, named by transfer.inspect_checkpoint, evaluated by the probes at 32 px with the
same network, and refused by detectron2 and mmseg in one line (issue 28 item 3)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from transfer.backbones.info import CheckpointError
from transfer.backbones.resnet.load import build_resnet
from transfer.backbones import load
from transfer.backbones.convert import convert_file
from transfer.backbones.inspect_checkpoint import format_report, inspect_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def cifar_resnet(block: type, layers: list[int], padding: int, seed: int) -> ResNet:
    """The CIFAR variant as solo-learn (padding 2) and lightly's benchmarks (padding 1) build it."""
    torch.manual_seed(seed)
    model = ResNet(block, layers)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=padding, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    with torch.no_grad():  # BN statistics that matter, so a wrong stem changes the output
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _solo_learn_file(path: Path, model: nn.Module) -> Path:
    """A solo-learn BYOL-like file (backbone + momentum_backbone) with the args.json its Checkpointer writes."""
    from solo_learn_files import write_args_json

    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state.update({f"momentum_backbone.{k}": v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()})
    torch.save({"state_dict": state, "epoch": 999}, path)
    write_args_json(path.parent, method="byol", dataset="cifar10")
    return path


@pytest.mark.parametrize("block,layers,arch,padding,wrap", [
    (BasicBlock, [2, 2, 2, 2], "resnet18", 2, True),   # solo-learn: state_dict.backbone + momentum_backbone
    (BasicBlock, [2, 2, 2, 2], "resnet18", 1, False),  # a plain state_dict (lightly's benchmarks)
    (Bottleneck, [3, 4, 6, 3], "resnet50", 2, True),
])
def test_recognised_and_the_rebuilt_network_computes_the_same(tmp_path, block, layers, arch, padding, wrap) -> None:
    model = cifar_resnet(block, layers, padding, seed=0)
    path = _solo_learn_file(tmp_path / "c.ckpt", model) if wrap else tmp_path / "c.pth"
    if not wrap:  # a plain state_dict does not say how conv1 was padded: never guessed, given here
        torch.save(model.state_dict(), path)
        assert load(path)[1].stem_padding is None
    state, info = load(path, padding=None if wrap else padding)
    assert (info.arch, info.stem, info.stem_padding) == (arch, "cifar", padding)
    rebuilt = build_resnet(info.arch, info.stem, info.stem_padding)
    rebuilt.load_state_dict(state, strict=True)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))
        assert rebuilt(x).shape == (4, 512 * block.expansion)
    report = inspect_checkpoint(path)
    assert report["error"] is None and report["stem"] == "cifar" and report["stem_padding"] == (padding if wrap else None)
    assert "CIFAR stem: 3x3 stride-1 conv1" in format_report(report)


def test_imagenet_stem_is_unchanged(tmp_path) -> None:
    torch.manual_seed(0)
    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    _, info = load(tmp_path / "r18.pth")
    assert info.stem == "imagenet" and info.stem_padding is None


def test_probe_runs_at_32_px_and_the_record_says_why(synthetic_root, tmp_path) -> None:
    from transfer.probes import knn

    path = _solo_learn_file(tmp_path / "solo.ckpt", cifar_resnet(BasicBlock, [2, 2, 2, 2], 2, seed=0))
    code = knn.main(["--ckpt", str(path), "--data", str(synthetic_root / "classification" / "color"),
                     "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "knn")])
    record = json.loads((tmp_path / "knn" / "record.json").read_text())
    assert code == 0 and record["status"] == "ok", record["error"]
    assert record["config"]["image_size"] == 32 and "CIFAR stem" in record["config"]["image_size_source"]
    assert record["checkpoint"]["stem"] == "cifar" and record["checkpoint"]["stem_padding"] == 2


def test_detectron2_and_mmseg_refuse_in_one_line(synthetic_root, tmp_path) -> None:
    from transfer.segmentation.runner import main as segmentation_main

    path = tmp_path / "cifar.pth"
    torch.save(cifar_resnet(BasicBlock, [2, 2, 2, 2], 1, seed=0).state_dict(), path)
    for engine in ("detectron2", "mmseg"):
        with pytest.raises(CheckpointError) as err:
            convert_file(path, engine, tmp_path / f"out.{engine}")
        msg = str(err.value)
        assert "CIFAR-stem resnet18" in msg and "7x7 stride-2 stem" in msg and str(path) in msg and "\n" not in msg
        assert not (tmp_path / f"out.{engine}").exists()
    code = segmentation_main(["--ckpt", str(path), "--out", str(tmp_path / "seg"), "--data-root", str(synthetic_root)])
    record = json.loads((tmp_path / "seg" / "record.json").read_text())
    assert code != 0 and record["status"] == "failed" and "CIFAR-stem resnet18" in record["error"]
