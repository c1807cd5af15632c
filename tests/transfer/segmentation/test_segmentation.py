"""Segmentation transfer: torchvision weights reach mmseg's ResNet exactly, bad setups are refused,
and the runner trains, validates and writes a complete record on the synthetic scenes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from tensorboard_reader import read_scalars
from transfer.backbones import load
from transfer.engines import require_mmseg
from transfer.records import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED
from transfer.backbones.info import BackboneMismatch
from transfer.backbones.mmengine_weights import read_converted, register_runner_scheme, runner_file, verify_backbone_state
from transfer.backbones.resnet.mmseg import to_mmseg_file
from transfer.segmentation.runner import DEFAULT_CONFIGS, attach_checkpoint, build_parser, load_config, main

PAPER = str(DEFAULT_CONFIGS["paper"])
DEMO = str(DEFAULT_CONFIGS["demo"])
TINY_RUN = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "param_scheduler.0.end=2",
            "train_dataloader.batch_size=2"]


@pytest.fixture(scope="module", autouse=True)
def mmseg(one_thread):
    # One thread (conftest.py): with tiny tensors, two threads per process mostly wait on each other.
    return require_mmseg()


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics, so an unloaded or misplaced tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("weight") and t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model.eval()


def _save_resnet(path: Path, arch: str = "resnet18", seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = _randomise(getattr(torchvision.models, arch)(**kwargs), seed)
    torch.save(model.state_dict(), path)
    return model


def _args(ckpt: Path, out: Path, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["--ckpt", str(ckpt), "--out", str(out), *extra])


def _torchvision_stages(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.fixture(scope="module")
def resnet50_ckpt(tmp_path_factory: pytest.TempPathFactory):
    """A random ResNet-50 (randomised BN statistics), read and converted once.

    Returns (file, info, torchvision state_dict, converted file)."""
    tmp = tmp_path_factory.mktemp("r50")
    tv = _save_resnet(tmp / "r50.pth", "resnet50", seed=1)
    state, info = load(tmp / "r50.pth")
    return tmp / "r50.pth", info, tv.state_dict(), to_mmseg_file(state, info, tmp / "out")


@pytest.mark.parametrize("dilated", [False, True], ids=["plain", "d8"])
def test_converted_resnet50_matches_torchvision(tmp_path: Path, resnet50_ckpt, dilated: bool) -> None:
    from mmseg.registry import MODELS

    ckpt, info, tv_state, converted = resnet50_ckpt
    tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, dilated, dilated])
    tv.load_state_dict(tv_state)  # dilation changes no weight, only how stages 3-4 stride
    extra = [] if dilated else ["--cfg-options", "model.backbone.strides=(1,2,2,2)",
                                "model.backbone.dilations=(1,1,1,1)"]
    cfg = load_config(_args(ckpt, tmp_path / "out", "--config", PAPER, *extra), info)
    assert tuple(cfg.model.backbone.dilations) == ((1, 1, 2, 4) if dilated else (1, 1, 1, 1))
    attach_checkpoint(cfg, converted)
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()  # what the Runner does: mmengine's PretrainedInit, prefix 'backbone.'
    verify_backbone_state(backbone, read_converted(converted), check_values=True)  # 0 missing/unexpected
    assert set(backbone.state_dict()) == set(tv_state) - {"fc.weight", "fc.bias"}
    backbone.eval()
    tv.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone(x)
        ref = _torchvision_stages(tv, x)
    assert [o.shape[-1] for o in ours] == ([16, 8, 8, 8] if dilated else [16, 8, 4, 2])
    for stage, (a, b) in enumerate(zip(ours, ref), 1):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= 1e-5, f"layer{stage}: max relative error {rel:.2e}"


def test_caffe_style_and_deep_stem_are_refused(tmp_path: Path) -> None:
    from mmseg.registry import MODELS

    _save_resnet(tmp_path / "r18.pth")
    state, info = load(tmp_path / "r18.pth")
    for option, expected in (("model.backbone.style=caffe", "style='caffe'"),
                             ("model.backbone.type=ResNetV1c", "deep stem"),
                             ("model.backbone.deep_stem=True", "deep stem")):
        with pytest.raises(BackboneMismatch, match=expected):
            load_config(_args(tmp_path / "r18.pth", tmp_path / "o", "--cfg-options", option), info)
    # The paper config (R50) takes its depth from the checkpoint, heads included...
    cfg = load_config(_args(tmp_path / "r18.pth", tmp_path / "o", "--config", PAPER), info)
    assert cfg.model.backbone.depth == 18
    assert (cfg.model.decode_head.in_channels, cfg.model.auxiliary_head.in_channels) == (512, 256)
    # ...unless a head reads a width that is no stage of the config's depth.
    with pytest.raises(BackboneMismatch, match="resnet18 but .*depth=50.*in_channels=999"):
        load_config(_args(tmp_path / "r18.pth", tmp_path / "o", "--config", PAPER, "--cfg-options",
                          "model.decode_head.in_channels=999"), info)
    # The load check alone catches a deep stem: its keys are missing from a torchvision checkpoint.
    converted = read_converted(to_mmseg_file(state, info, tmp_path / "o"))
    v1c = MODELS.build(dict(type="ResNetV1c", depth=18))
    with pytest.raises(BackboneMismatch, match=r"backbone keys missing .*stem\..*deep stem"):
        verify_backbone_state(v1c, converted, check_values=False)
    # ...but not caffe style, whose names all match: hence the explicit style check above.
    caffe = MODELS.build(dict(type="ResNet", depth=18, style="caffe"))
    verify_backbone_state(caffe, converted, check_values=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_distributed_launcher_on_cpu_uses_gloo_and_plain_bn(tmp_path: Path, monkeypatch) -> None:
    # issue 16: CPU processes under torchrun are supported (gloo, DDP without device ids, BN);
    # tests/transfer/orchestrate/test_paper_suite.py trains such a 2-process run
    _save_resnet(tmp_path / "r18.pth")
    _, info = load(tmp_path / "r18.pth")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(_args(tmp_path / "r18.pth", tmp_path / "o", "--launcher", "pytorch"), info)
    assert cfg.env_cfg.dist_cfg == {"backend": "gloo"} and cfg.model_wrapper_cfg["device_ids"] is None
    assert cfg.norm_cfg["type"] == "BN" and cfg.batch_plan["world_size"] == 2


def test_refusal_is_a_failed_record_before_training(tmp_path: Path, synthetic_root: Path) -> None:
    _save_resnet(tmp_path / "r18.pth")
    out = tmp_path / "caffe"
    code = main(["--ckpt", str(tmp_path / "r18.pth"), "--out", str(out), "--data-root", str(synthetic_root),
                 "--cfg-options", "model.backbone.style=caffe"])
    record = json.loads((out / "record.json").read_text())
    assert code == EXIT_FAILED and record["status"] == "failed"
    assert "style='caffe'" in record["error"] and "\n" not in record["error"]
    assert not (out / "work").exists()  # refused before the Runner was built


def test_missing_and_malformed_dataset(tmp_path: Path) -> None:
    _save_resnet(tmp_path / "r18.pth")
    ckpt = ["--ckpt", str(tmp_path / "r18.pth")]
    code = main([*ckpt, "--out", str(tmp_path / "a"), "--data-root", str(tmp_path / "absent")])
    record = json.loads((tmp_path / "a" / "record.json").read_text())
    assert code == EXIT_SKIPPED and record["status"] == "skipped" and "absent does not exist" in record["error"]

    bad = tmp_path / "bad"
    (bad / "scenes" / "images" / "train").mkdir(parents=True)
    (bad / "COMPLETE").write_text("{}")
    code = main([*ckpt, "--out", str(tmp_path / "b"), "--data-root", str(bad)])
    record = json.loads((tmp_path / "b" / "record.json").read_text())
    assert code == EXIT_FAILED and record["status"] == "failed"
    assert "missing scenes/labels/train" in record["error"]


@pytest.mark.slow
def test_runner_trains_validates_and_records(tmp_path: Path, synthetic_root: Path) -> None:
    _save_resnet(tmp_path / "r18.pth")
    out = tmp_path / "seg"
    code = main(["--ckpt", str(tmp_path / "r18.pth"), "--out", str(out), "--data-root", str(synthetic_root),
                 "--cfg-options", *TINY_RUN])
    record = json.loads((out / "record.json").read_text())
    assert code == EXIT_OK, record["error"]
    assert record["status"] == "ok" and record["task"] == "segmentation" and record["scale"] == "demo"
    assert record["dataset"] == "synthetic/scenes" and record["checkpoint"]["arch"] == "resnet18"
    assert set(record["metrics"]) == {"mIoU", "mAcc", "aAcc"}
    assert all(0.0 <= v <= 100.0 for v in record["metrics"].values())
    assert record["config"]["model"]["backbone"]["norm_cfg"]["type"] == "BN"  # SyncBN -> BN, one process
    assert record["config"]["train_cfg"]["max_iters"] == 2
    log = (out / "train.log").read_text()
    assert "backbone: all weights of" in log and "Iter(val)" in log
    assert "checkpoint=" in (out / "mmseg_config.py").read_text()
    assert not list((out / "work").rglob("*.pth"))  # no 100+ MB Runner checkpoints
    # mmengine's TensorboardVisBackend (added at load time): LoggerHook's scalars, the validation's mIoU
    (vis_data,) = (out / "work").glob("*/vis_data")
    scalars = read_scalars(vis_data)
    logged = [json.loads(ln) for ln in (vis_data / "scalars.json").read_text().splitlines()]
    assert [s for s, _ in scalars["loss"]] == [r["step"] for r in logged if "loss" in r]
    assert "lr" in scalars and "decode.loss_ce" in scalars
    assert scalars["mIoU"][-1][1] == pytest.approx(record["metrics"]["mIoU"], abs=0.01)


@pytest.mark.slow
def test_nan_loss_gives_failed_record(tmp_path: Path, synthetic_root: Path) -> None:
    _save_resnet(tmp_path / "r18.pth")
    out = tmp_path / "nan"
    code = main(["--ckpt", str(tmp_path / "r18.pth"), "--out", str(out), "--data-root", str(synthetic_root),
                 "--no-tensorboard", "--cfg-options", *TINY_RUN, "train_cfg.max_iters=4", "optim_wrapper.optimizer.lr=1e30"])
    record = json.loads((out / "record.json").read_text())
    assert code == EXIT_FAILED and record["status"] == "failed"
    assert "TaskFailed: loss is nan" in record["error"] or "TaskFailed: loss is inf" in record["error"]
    assert not list((out / "work").rglob("events.out.tfevents.*"))  # --no-tensorboard
    assert list((out / "work").glob("*/vis_data/config.py"))  # its own folder, not an earlier run's in this process


def test_runner_checkpoints_load_only_through_the_runner_scheme(tmp_path: Path) -> None:
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import CheckpointLoader

    from transfer.backbones.info import CheckpointError

    path = tmp_path / "iter_2.pth"
    model = torchvision.models.resnet18()
    torch.save({"state_dict": model.state_dict(), "message_hub": {"loss": HistoryBuffer()}}, path)
    with pytest.raises(Exception, match="weights_only"):
        torch.load(path)  # torch >= 2.6 default: a Runner checkpoint is refused
    load(path)  # the user-checkpoint path reads it too, as data (HistoryBuffer stays a placeholder)
    register_runner_scheme()
    loaded = CheckpointLoader.load_checkpoint(runner_file(path), map_location="cpu")
    assert isinstance(loaded["message_hub"]["loss"], HistoryBuffer)


class _Payload:
    """Unpickling this object runs ``open(marker, 'w')``: the marker proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_resume_reads_the_runner_file_as_data(tmp_path: Path, synthetic_root: Path) -> None:
    """A payload planted in the run's own Runner checkpoint never runs; the resume itself works."""
    from transfer.backbones.read import read_torch_file, runner_admits

    _save_resnet(tmp_path / "r18.pth")
    out, marker = tmp_path / "seg", tmp_path / "PWNED"
    base = ["--ckpt", str(tmp_path / "r18.pth"), "--out", str(out), "--data-root", str(synthetic_root),
            "--cfg-options", *TINY_RUN, "default_hooks.checkpoint.interval=2"]
    assert main(base) == EXIT_OK
    saved = out / "work" / "iter_2.pth"
    assert (out / "work" / "last_checkpoint").read_text().strip() == str(saved)
    obj = read_torch_file(saved, admit=runner_admits())
    obj["meta"]["evil"] = _Payload(marker)
    torch.save(obj, saved)
    code = main(base + ["train_cfg.max_iters=3", "--resume"])
    record = json.loads((out / "record.json").read_text())
    assert code == EXIT_OK, record["error"]
    assert not marker.exists()
    assert "resumed epoch: 0, iter: 2" in (out / "train.log").read_text()


@pytest.mark.slow
def test_deterministic_mode_gives_bit_identical_runs(tmp_path: Path, synthetic_root: Path) -> None:
    """Two runs of one config in deterministic mode (the demo's) train to the same bits."""
    from transfer.backbones.read import read_torch_file, runner_admits

    _save_resnet(tmp_path / "r18.pth")
    states, records = [], []
    for name in ("a", "b"):
        out = tmp_path / name
        code = main(["--ckpt", str(tmp_path / "r18.pth"), "--out", str(out), "--data-root", str(synthetic_root),
                     "--deterministic", "--cfg-options", *TINY_RUN, "train_cfg.max_iters=4", "train_cfg.val_interval=4",
                     "param_scheduler.0.end=4", "default_hooks.checkpoint.interval=4"])
        records.append(json.loads((out / "record.json").read_text()))
        assert code == EXIT_OK, records[-1]["error"]
        states.append(read_torch_file(out / "work" / "iter_4.pth", admit=runner_admits())["state_dict"])
    assert records[0]["config"]["deterministic"] is True and records[0]["config"]["randomness"] == {"seed": 0}
    assert records[0]["metrics"] == records[1]["metrics"]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    trained = read_converted(tmp_path / "a" / "backbone_mmseg.pth")
    assert not torch.equal(states[0]["backbone.conv1.weight"], trained["conv1.weight"])  # it did train
