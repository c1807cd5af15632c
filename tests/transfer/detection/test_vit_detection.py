"""ViT checkpoints as detectron2's ViTDet backbone: with window attention and relative positions off,
detectron2's ViT computes the reference ViT's patch tokens; switched on, the new tensors are named."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

import vit_writers as W
from transfer.backbones.info import CheckpointError
from transfer.backbones.vit.detectron2 import VITDET_PREFIX, to_vitdet, vitdet_kwargs
from transfer.backbones import load

pytestmark = pytest.mark.usefixtures("one_thread")


def _d2_vit(info, img, **kw):
    from transfer.engines import require_detectron2

    require_detectron2()
    from detectron2.modeling import ViT

    return ViT(img_size=img, norm_layer=partial(nn.LayerNorm, eps=1e-6), **vitdet_kwargs(info), **kw).eval()


def _reference_tokens(ref, state, x, patch):
    """timm's ViT on the same weights without the class token (ViTDet never uses it), blocks un-normed."""
    from timm.models.vision_transformer import VisionTransformer

    img = x.shape[-1]
    spec = dict(img_size=img, patch_size=patch, embed_dim=192, depth=4, num_heads=3, num_classes=0, global_pool="",
                class_token=False, no_embed_class=True, init_values=1e-5 if "blocks.0.ls1.gamma" in state else None)
    model = VisionTransformer(**spec).eval()
    from timm.layers import resample_abs_pos_embed

    grid = state["pos_embed"][:, 1:]
    sd = {k: v for k, v in state.items() if k not in ("cls_token", "pos_embed")}
    sd["pos_embed"] = resample_abs_pos_embed(grid, [img // patch] * 2, num_prefix_tokens=0, antialias=False)
    model.load_state_dict(sd)
    with torch.no_grad():
        return model.forward_intermediates(x, indices=1, intermediates_only=True, norm=False)[-1]


@pytest.mark.parametrize("patch, ls, train_img, img", [(16, False, 32, 32), (8, True, 32, 48)])
def test_vitdet_without_windows_and_rel_pos_equals_the_reference(tmp_path, patch, ls, train_img, img):
    ref = W.timm_vit(patch, train_img, ls=ls, depth=4)
    torch.save(W.dino(ref.state_dict(), ref.state_dict()), tmp_path / "d.pth")
    state, info = load(tmp_path / "d.pth")
    converted, new, unused = to_vitdet(state, info, use_rel_pos=False, input_size=img)
    assert new == [] and set(unused) == {"cls_token", "norm.weight", "norm.bias"}
    net = _d2_vit(info, img)
    net.load_state_dict({k[len(VITDET_PREFIX):]: v for k, v in converted.items()}, strict=True)
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        got = net(x)["last_feat"]
    diff = float((got - _reference_tokens(ref, state, x, patch)).abs().max())
    print(f"detectron2 ViT vs timm ViT (patch {patch}, LayerScale {ls}, {train_img}->{img} px): max |Δ| = {diff:.2e}")
    assert diff <= 1e-5


def test_vitdet_paper_switches_on_windows_and_zero_rel_pos(tmp_path):
    ref = W.timm_vit(16, 64, depth=4)
    torch.save(ref.state_dict(), tmp_path / "v.pth")
    state, info = load(tmp_path / "v.pth")
    windows = (0, 2)
    converted, new, _ = to_vitdet(state, info, use_rel_pos=True, input_size=64, window_size=2,
                                  window_block_indexes=windows)
    assert len(new) == 8 and all(converted[k].abs().sum() == 0 for k in new)
    net = _d2_vit(info, 64, use_rel_pos=True, window_size=2, window_block_indexes=windows)
    net.load_state_dict({k[len(VITDET_PREFIX):]: v for k, v in converted.items()}, strict=True)
    assert net(torch.randn(1, 3, 64, 64))["last_feat"].shape == (1, 192, 4, 4)


def test_vitdet_swapped_blocks_caught_and_registers_refused(tmp_path):
    ref = W.timm_vit(16, 32, depth=4)
    torch.save(W.swap_blocks(ref.state_dict()), tmp_path / "bad.pth")
    state, info = load(tmp_path / "bad.pth")
    net = _d2_vit(info, 32)
    net.load_state_dict({k[len(VITDET_PREFIX):]: v for k, v in to_vitdet(state, info, False, 32)[0].items()})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert float((net(x)["last_feat"] - _reference_tokens(ref, ref.state_dict(), x, 16)).abs().max()) > 1e-3
    torch.save(W.dinov2(W.timm_vit(16, 32, reg=4, depth=4).state_dict()), tmp_path / "r.pth")
    state, info = load(tmp_path / "r.pth")
    with pytest.raises(CheckpointError, match="ViTDet has no register tokens"):
        to_vitdet(state, info, False, 32)


@pytest.mark.parametrize("patch, ls", [(16, False), (8, True)])
def test_convert_cli_writes_vitdet_keys_detectron2_loads_strictly(tmp_path, patch, ls):
    """``python -m transfer.convert --to detectron2`` on a DINO file: detectron2's own checkpointer reads the
    pickle into its ViT with nothing missing, unexpected or mis-shaped, and the ViT computes the reference's tokens."""
    from detectron2.checkpoint import DetectionCheckpointer

    from transfer.convert import main

    ref = W.timm_vit(patch, 32, ls=ls, depth=4)
    torch.save(W.dino(ref.state_dict(), ref.state_dict()), tmp_path / "dino_vit.pth")
    out = tmp_path / "vitdet.pkl"
    assert main(["--ckpt", str(tmp_path / "dino_vit.pth"), "--to", "detectron2", "--out", str(out)]) == 0
    _, info = load(tmp_path / "dino_vit.pth")
    wrapper = nn.Module()  # the names of ViTDet's model: backbone (SimpleFeaturePyramid) -> net (ViT)
    wrapper.backbone = nn.Module()
    wrapper.backbone.net = _d2_vit(info, 32)
    checkpointer = DetectionCheckpointer(wrapper)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(out)))
    assert (incompatible.missing_keys, incompatible.unexpected_keys, incompatible.incorrect_shapes) == ([], [], [])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = wrapper.backbone.net(x)["last_feat"]
    diff = float((got - _reference_tokens(ref, ref.state_dict(), x, patch)).abs().max())
    print(f"transfer.convert --to detectron2, ViTDet vs timm (patch {patch}, LayerScale {ls}): max |Δ| = {diff:.2e}")
    assert diff <= 1e-5
