"""transfer.convert: torchvision -> detectron2 conversion is complete, exact and wrapping-independent.

The equivalence tests build detectron2 models from this project's own configs (FrozenBN,
STRIDE_IN_1X1 False), load the converted weights with the verifying loader and compare every stage
with torchvision on the same normalised input.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from plumbing.atomic import pickle_atomic
from transfer.backbones.info import CheckpointInfo, sha256_file
from transfer.backbones import load
from transfer.backbones.resnet.detectron2 import MAPPING_VERSION, detectron2_name, to_detectron2
from transfer.backbones.info import ConversionError
from transfer.convert import main
from transfer.backbones.resnet.mmseg import to_mmseg
from transfer.detection.heads import register_heads

CONFIGS = Path(__file__).resolve().parents[3] / "detectron_configs"


def random_resnet(arch: str, seed: int = 0) -> torch.nn.Module:
    """torchvision ResNet with random weights and randomised BN statistics and affine params."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def build_d2(config: str, depth: int, stride_in_1x1: bool = False):
    register_heads()
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / config))
    fpn = cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if depth < 50 else 256,
        "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FPN.NORM", "", "MODEL.RESNETS.STRIDE_IN_1X1", stride_in_1x1,
        # C4 keeps res5 in the ROI head; also return res2/res3 so every stage can be compared.
        "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"] if fpn else ["res2", "res3", "res4"],
    ])
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is stride_in_1x1 and cfg.INPUT.FORMAT == "RGB"
    return build_model(cfg).eval()


def d2_stages(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    backbone = getattr(model.backbone, "bottom_up", model.backbone)
    out = backbone(x)
    if "res5" not in out:  # C4: res5 is the ROI head's stage (its extra norm is a new layer after it)
        out["res5"] = model.roi_heads.res5[:-1](out["res4"])
    return out


def tv_stages(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for i in range(1, 5):
        h = getattr(model, f"layer{i}")(h)
        out[f"res{i + 1}"] = h
    return out


def read_pkl(path: Path) -> dict:
    """A pickle this test wrote itself (the project never unpickles files, see transfer/backbones/resnet/detectron2.py)."""
    with open(path, "rb") as f:
        return pickle.load(f)


def convert_to_pkl(tv_model, tmp_path: Path) -> Path:
    ckpt = tmp_path / "tv.pth"
    torch.save(tv_model.state_dict(), ckpt)
    state, info = load(ckpt)
    pkl = tmp_path / "tv.pkl"
    pickle_atomic(pkl, to_detectron2(state, info))
    return pkl


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


EQUIVALENCE = [
    pytest.param("resnet50", "coco_R_50_C4_1x.yaml", marks=pytest.mark.slow, id="R50-C4"),
    pytest.param("resnet50", "coco_R_50_FPN_1x.yaml", marks=pytest.mark.slow, id="R50-FPN"),
    pytest.param("resnet18", "demo_synthetic_R_18_FPN.yaml", id="R18-FPN"),
]


@pytest.mark.parametrize("arch,config", EQUIVALENCE)
def test_converted_backbone_matches_torchvision(arch, config, tmp_path):
    from transfer.backbones.resnet.detectron2 import backbone_keys, load_verified

    tv = random_resnet(arch)
    pkl = convert_to_pkl(tv, tmp_path)
    model = build_d2(config, depth=int(arch[6:]))
    report = load_verified(model, read_pkl(pkl))  # the file transfer.convert wrote, as a user loads it
    # zero missing backbone keys: every ResNet tensor of the model came from the pickle
    expected = [k for k in backbone_keys(model) if not k.startswith("roi_heads.res5.norm.")]
    assert sorted(report.placed.values()) == sorted(expected)
    assert not [k for k in report.detectron2_missing if ".res" in k or ".stem." in k]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ours, ref = d2_stages(model, x), tv_stages(tv, x)
    for name in ("res2", "res3", "res4", "res5"):
        assert ours[name].shape == ref[name].shape
        assert max_rel_err(ours[name], ref[name]) <= 1e-4, name


@pytest.mark.slow
def test_equivalence_check_catches_stride_in_1x1(tmp_path):
    """The comparison above is sensitive: the classic STRIDE_IN_1X1 True mistake fails it."""
    from transfer.backbones.resnet.detectron2 import load_verified

    tv = random_resnet("resnet50")
    model = build_d2("coco_R_50_FPN_1x.yaml", depth=50, stride_in_1x1=True)
    load_verified(model, read_pkl(convert_to_pkl(tv, tmp_path)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_err(d2_stages(model, x)["res3"], tv_stages(tv, x)["res3"]) > 1e-2


def _wrappings(state: dict) -> dict[str, object]:
    with_fc = {**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    pre = lambda p: {p + k: v for k, v in state.items()}  # noqa: E731
    return {
        "plain.pth": state, "torchvision_with_fc.pth": with_fc,
        "state_dict.pth": {"state_dict": state}, "model.pth": {"model": state}, "teacher.pth": {"teacher": state},
        "module.pth": pre("module."), "backbone_prefix.pth": pre("backbone."),
        "module_backbone.pth": {"state_dict": pre("module.backbone.")},
        "moco.pth": {"state_dict": {**pre("module.encoder_q."), **{"module.encoder_k." + k: v for k, v in state.items()}}},
        "encoder.pth": pre("encoder."),
        "last.pth": {"model": {**pre("backbone."), "projector.0.weight": torch.zeros(4, 512)}, "config": {"method": "mast"}},
        "backbone.pth": state,
    }


def test_every_wrapping_converts_to_the_identical_pkl(tmp_path):
    state = random_resnet("resnet18").state_dict()
    models = {}
    for name, obj in _wrappings(state).items():
        torch.save(obj, tmp_path / name)
        assert main(["--ckpt", str(tmp_path / name), "--to", "detectron2", "--out", str(tmp_path / f"{name}.pkl")]) == 0
        with open(tmp_path / f"{name}.pkl", "rb") as f:
            data = pickle.load(f)
        assert data["source_sha256"] == sha256_file(tmp_path / name)
        assert data["mapping_version"] == MAPPING_VERSION and data["matching_heuristics"] is True
        assert data["__author__"] and data["arch"] == "resnet18"
        models[name] = pickle.dumps(data["model"], protocol=4)
    reference = models.pop("plain.pth")
    assert all(blob == reference for blob in models.values()), [k for k, b in models.items() if b != reference]
    names = pickle.loads(reference)
    assert len(names) == len([k for k in state if not k.endswith("num_batches_tracked") and not k.startswith("fc.")])
    assert names["res5.1.conv2.norm.running_var"].dtype == np.float32


def _bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    state = random_resnet("resnet18").state_dict()
    good = tmp_path / "good.pth"
    torch.save(state, good)
    blob = good.read_bytes()
    files = {"wrong_prefix": {"sparrow." + k: v for k, v in state.items()},
             "vit": {"cls_token": torch.zeros(1, 1, 192), "pos_embed": torch.zeros(1, 197, 192),
                     "patch_embed.proj.weight": torch.zeros(192, 3, 16, 16),
                     "blocks.0.attn.qkv.weight": torch.zeros(576, 192), "head.weight": torch.zeros(1000, 192)},
             "missing_stage": {k: v for k, v in state.items() if not k.startswith("layer3.1.")}}
    paths = {}
    for name, obj in files.items():
        paths[name] = tmp_path / f"{name}.pth"
        torch.save(obj, paths[name])
    paths["truncated"] = tmp_path / "truncated.pth"
    paths["truncated"].write_bytes(blob[: len(blob) // 2])
    return paths


def test_bad_checkpoints_give_one_line_errors(tmp_path, capsys):
    for name, path in _bad_checkpoints(tmp_path).items():
        out = tmp_path / f"{name}.pkl"
        assert main(["--ckpt", str(path), "--to", "detectron2", "--out", str(out)]) == 1, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err, (name, err)
        assert not out.exists(), name


def _info(arch: str = "resnet18") -> CheckpointInfo:
    return CheckpointInfo(path="x.pth", sha256="0" * 64, arch=arch, method=None, source_format="test", run_dir=None,
                          family="resnet")


def test_coverage_check_rejects_leftovers_and_gaps():
    state = random_resnet("resnet18").state_dict()
    assert detectron2_name("fc.weight") is None and detectron2_name("layer1.0.bn1.num_batches_tracked") is None
    assert detectron2_name("layer4.0.downsample.1.running_mean") == "res5.0.shortcut.norm.running_mean"
    assert detectron2_name("bn1.bias") == "stem.conv1.norm.bias"
    with pytest.raises(ConversionError, match="no detectron2 mapping"):
        detectron2_name("layer1.0.se.fc1.weight")
    with pytest.raises(ConversionError, match="left over"):
        to_detectron2({**state, "layer1.0.se.weight": torch.zeros(3)}, _info())
    with pytest.raises(ConversionError, match="1 missing"):
        to_detectron2({k: v for k, v in state.items() if k != "layer2.1.bn2.running_var"}, _info())
    with pytest.raises(ConversionError, match="not a complete resnet34"):
        to_detectron2(state, _info("resnet34"))  # basic blocks, but more of them per stage


def test_to_mmseg_is_prefixed_torchvision_layout():
    state = random_resnet("resnet18").state_dict()
    out = to_mmseg({**state, "fc.weight": torch.zeros(1000, 512)}, _info())
    assert set(out) == {"backbone." + k for k in state if not k.startswith("fc.")}
    assert torch.equal(out["backbone.layer3.0.downsample.0.weight"], state["layer3.0.downsample.0.weight"])
