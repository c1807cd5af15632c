"""ViT checkpoints in mmseg (UperNet on mmseg's MAE backbone): the backbone's outputs are the reference ViT's."""

from __future__ import annotations

import pytest
import torch

import vit_writers as W
from transfer.backbones.info import BackboneMismatch
from transfer.backbones.vit.mmseg import build_backbone, check_vit_cfg, to_mae_state
from transfer.backbones import load

pytestmark = pytest.mark.usefixtures("one_thread")
OUT = [1, 3]


def _mae_cfg(patch: int, img: int, **kw) -> dict:
    return dict(type="MAE", img_size=(img, img), patch_size=patch, embed_dims=192, num_layers=4, num_heads=3,
                mlp_ratio=4, out_indices=OUT, init_values=1.0, norm_cfg=dict(type="LN", eps=1e-6), **kw)


@pytest.mark.parametrize("patch, ls, train_img, img", [(16, False, 32, 32), (8, True, 32, 48)])
def test_mmseg_mae_outputs_equal_the_reference_vit(tmp_path, patch, ls, train_img, img):
    ref = W.timm_vit(patch, train_img, ls=ls, depth=4)
    torch.save(W.dino(ref.state_dict(), ref.state_dict()), tmp_path / "d.pth")
    state, info = load(tmp_path / "d.pth")
    cfg = _mae_cfg(patch, img)
    assert check_vit_cfg({"backbone": cfg}, info, "test") == []
    backbone = build_backbone(cfg)
    backbone.eval()  # mmseg's BEiT.train returns None
    converted, new, unused = to_mae_state(state, info, backbone.state_dict(), img)
    backbone.load_state_dict(converted, strict=True)
    assert unused == ["norm.weight", "norm.bias"]  # final_norm=False: UperNet reads the blocks un-normed
    assert all(k.endswith("relative_position_bias_table") for k in new if "gamma" not in k)
    assert any("gamma" in k for k in new) != ls  # a ViT with LayerScale keeps its own gammas
    if img != train_img:  # the reference at the new resolution: timm's own resampling (MAE's, no antialias)
        from timm.layers import resample_abs_pos_embed
        from transfer.backbones.vit.load import VitSpec

        ref = W.timm_vit(patch, img, ls=ls, depth=4)
        sd = dict(state, pos_embed=resample_abs_pos_embed(state["pos_embed"], [img // patch] * 2, antialias=False))
        ref.load_state_dict(sd)
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        got = backbone(x)
        want = ref.forward_intermediates(x, indices=OUT, intermediates_only=True, norm=False)
    diffs = [float((g - w).abs().max()) for g, w in zip(got, want)]
    print(f"mmseg MAE vs timm ViT (patch {patch}, LayerScale {ls}, {train_img}->{img} px): max |Δ| = {max(diffs):.2e}")
    assert len(got) == len(OUT) and max(diffs) <= 1e-5


def test_swapped_blocks_are_caught_numerically(tmp_path):
    ref = W.timm_vit(16, 32, depth=4)
    torch.save(W.swap_blocks(ref.state_dict()), tmp_path / "bad.pth")
    state, info = load(tmp_path / "bad.pth")
    backbone = build_backbone(_mae_cfg(16, 32))
    backbone.eval()
    backbone.load_state_dict(to_mae_state(state, info, backbone.state_dict(), 32)[0])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        diff = (backbone(x)[-1] - ref.forward_intermediates(x, indices=OUT, intermediates_only=True)[-1]).abs().max()
    assert diff > 1e-3


def test_config_for_another_vit_is_refused(tmp_path):
    torch.save(W.timm_vit(16, 32, depth=4).state_dict(), tmp_path / "v.pth")
    _, info = load(tmp_path / "v.pth")
    with pytest.raises(BackboneMismatch, match="does not match the checkpoint's vit_tiny_patch16"):
        check_vit_cfg({"backbone": dict(_mae_cfg(16, 32), patch_size=8)}, info, "x.py")
    with pytest.raises(BackboneMismatch, match="cannot hold a ViT checkpoint"):
        check_vit_cfg({"backbone": dict(type="ResNet", depth=50)}, info, "x.py")
    # another width: adapted when the neck and heads read that width, refused otherwise
    model = {"backbone": dict(_mae_cfg(16, 32), embed_dims=768, num_heads=12), "neck": dict(embed_dim=768),
             "decode_head": dict(in_channels=[768] * 4), "auxiliary_head": dict(in_channels=768)}
    assert check_vit_cfg(model, info, "x.py") and model["backbone"]["embed_dims"] == 192
    assert model["decode_head"]["in_channels"] == [192] * 4 and model["neck"]["embed_dim"] == 192
    model = {"backbone": dict(_mae_cfg(16, 32), embed_dims=768), "decode_head": dict(in_channels=[384] * 4)}
    with pytest.raises(BackboneMismatch, match="neck/heads read"):
        check_vit_cfg(model, info, "x.py")
    torch.save(W.dinov2(W.timm_vit(16, 32, reg=4, depth=4).state_dict()), tmp_path / "r.pth")
    _, info = load(tmp_path / "r.pth")
    with pytest.raises(BackboneMismatch, match="no register tokens"):
        check_vit_cfg({"backbone": _mae_cfg(16, 32)}, info, "x.py")


DEMO_VIT = "transfer/mmseg_configs/upernet_mae_vit-t16_synthetic_64x64_demo.py"
PAPER_VIT = "transfer/mmseg_configs/upernet_mae_vit-b16_ade20k_512x512_160k.py"


def test_paper_config_is_the_mae_protocol():
    from mmengine.config import Config

    cfg = Config.fromfile(PAPER_VIT)
    assert cfg.model.backbone.type == "MAE" and cfg.model.backbone.out_indices == (3, 5, 7, 11)
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimizerConstructor"
    assert cfg.optim_wrapper.paramwise_cfg == dict(num_layers=12, layer_decay_rate=0.65)
    assert cfg.train_cfg.max_iters == 160000 and cfg.global_batch == 16 and cfg.crop_size == (512, 512)
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset" and cfg.model.decode_head.num_classes == 150


@pytest.mark.slow
def test_vit_segmentation_tiny_finetuning_run(tmp_path, synthetic_root):
    import json

    from transfer.segmentation.runner import main

    ref = W.timm_vit(16, 64, dim=384, depth=12)  # a DINO ViT-S/16: the ViT-Tiny demo config is widened
    torch.save(W.dino(ref.state_dict(), ref.state_dict()), tmp_path / "dino.pth")
    out = tmp_path / "seg"
    code = main(["--ckpt", str(tmp_path / "dino.pth"), "--out", str(out), "--data-root", str(synthetic_root),
                 "--config", DEMO_VIT, "--threads", "1", "--cfg-options", "train_cfg.max_iters=2",
                 "train_cfg.val_interval=2", "param_scheduler.0.end=1", "param_scheduler.1.begin=1",
                 "param_scheduler.1.end=2", "train_dataloader.batch_size=2"])
    record = json.loads((out / "record.json").read_text())
    assert code == 0, record["error"]
    assert record["checkpoint"]["codebase"] == "DINO" and record["config"]["model"]["backbone"]["embed_dims"] == 384
    new = record["vit_conversion"]["new_tensors"]
    assert len(new) == 12 * 3 and all("relative_position_bias_table" in k or "gamma" in k for k in new)
    assert set(record["metrics"]) == {"mIoU", "mAcc", "aAcc"}
    assert "backbone: all weights of" in (out / "train.log").read_text()


@pytest.mark.parametrize("patch, ls", [(16, False), (8, True)])
def test_convert_cli_writes_mae_keys_mmseg_loads_strictly(tmp_path, patch, ls):
    """``python -m transfer.convert --to mmseg`` on a DINO file: mmengine loads it into mmseg's MAE with
    ``strict=True`` and every block's output is the reference ViT's."""
    from mmengine.runner import load_checkpoint

    from transfer.backbones.vit.mmseg import mae_cfg
    from transfer.convert import main

    ref = W.timm_vit(patch, 32, ls=ls, depth=4)
    torch.save(W.dino(ref.state_dict(), ref.state_dict()), tmp_path / "dino_vit.pth")
    out = tmp_path / "mae.pth"
    assert main(["--ckpt", str(tmp_path / "dino_vit.pth"), "--to", "mmseg", "--out", str(out)]) == 0
    _, info = load(tmp_path / "dino_vit.pth")
    backbone = build_backbone(mae_cfg(info))
    backbone.eval()
    load_checkpoint(backbone, str(out), map_location="cpu", strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = backbone(x)
        want = ref.forward_intermediates(x, indices=list(range(4)), intermediates_only=True, norm=False)
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
    print(f"transfer.convert --to mmseg, MAE vs timm (patch {patch}, LayerScale {ls}): max |Δ| over 4 blocks = {diff:.2e}")
    assert len(got) == 4 and diff <= 1e-5
