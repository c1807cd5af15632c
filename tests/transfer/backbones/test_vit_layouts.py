"""Every ViT layout is read into timm's ViT with the same features as the model that wrote it.

Each case writes a checkpoint as that codebase saves it (tests/vit_writers.py; random weights,
ViT-Tiny width and depth, patch 8 and 16, with and without registers/LayerScale), reads it with
:func:`transfer.backbones.load`, builds timm's ViT from the result and compares the final tokens with
the writer's model (≤ 1e-5). A file whose blocks are swapped gives other features, and tensors the
reference ViT has no place for are refused in one line.
"""

from __future__ import annotations

import pytest
import torch

import vit_writers as W
from transfer.backbones import CheckpointError, load
from transfer.backbones.vit.pooling import POOLS, feature_width, vit_features
from transfer.backbones.vit.load import build_vit, load_state, resize_pos_embed, spec_of

TOL = 1e-5
IMG = 32


def _read(tmp_path, obj, backbone=None, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    state, info = load(path, backbone)
    model = load_state(build_vit(spec_of(info)), state, spec_of(info)).eval()
    return model, info


def _diff(a, b) -> float:
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    return float((W.features(a, x) - W.features(b, x)).abs().max())


# (layout, writer from (reference state, other state), the arch's flags, expected codebase, default pool)
CASES = {
    "timm": (lambda s, o: W.timm_train(s), dict(), "timm", "cls"),
    "dino": (lambda s, o: W.dino(s, o), dict(), "DINO", "cls"),
    "ibot": (lambda s, o: W.ibot(s, o), dict(), "iBOT", "cls"),
    "mae": (lambda s, o: W.mae(s), dict(), "MAE", "avg"),
    "dinov2": (lambda s, o: W.dinov2(s), dict(reg=4, ls=True), "DINOv2", "cls+avg"),
    "dinov2_noreg": (lambda s, o: W.dinov2(s), dict(ls=True), "DINOv2", "cls+avg"),
    "dinov2_train_chunked": (lambda s, o: W.dinov2(s, chunks=4), dict(reg=4, ls=True), "DINOv2", "cls+avg"),
    "mocov3": (lambda s, o: W.mocov3(s, o), dict(), "MoCo v3", "cls"),
    "mmpretrain": (lambda s, o: W.mmpretrain(s), dict(), "mmpretrain", "cls"),
    "mmpretrain_ls": (lambda s, o: W.mmpretrain(s), dict(ls=True), "mmpretrain", "cls"),
}


@pytest.mark.parametrize("patch", [8, 16])
@pytest.mark.parametrize("layout", sorted(CASES))
def test_layout_reads_to_reference_features(tmp_path, layout, patch):
    write, flags, codebase, pool = CASES[layout]
    ref, other = W.timm_vit(patch, IMG, seed=0, **flags), W.timm_vit(patch, IMG, seed=1, **flags)
    model, info = _read(tmp_path, write(ref.state_dict(), other.state_dict()))
    diff = _diff(model, ref)
    print(f"{layout} patch {patch}: max |Δ| = {diff:.2e}")
    assert diff <= TOL
    spec = spec_of(info)
    assert (spec.embed_dim, spec.depth, spec.patch_size, spec.img_size) == (192, 12, patch, IMG)
    assert spec.reg_tokens == flags.get("reg", 0) and spec.layer_scale == flags.get("ls", False)
    assert info.codebase == codebase and info.default_pool == pool
    assert info.arch.startswith(f"vit_tiny_patch{patch}")


def test_dino_teacher_by_default_student_on_request(tmp_path):
    ref, other = W.timm_vit(16, IMG, seed=0), W.timm_vit(16, IMG, seed=1)
    obj = W.dino(ref.state_dict(), other.state_dict())
    model, info = _read(tmp_path, obj)
    assert info.backbone == "teacher.backbone." and "DINO evaluates the teacher" in info.backbone_choice
    assert _diff(model, ref) <= TOL
    assert "teacher.head.*" not in info.unused  # outside the chosen prefix: another module, not the ViT
    student, info = _read(tmp_path, obj, backbone="student")
    assert info.backbone == "student.module.backbone." and _diff(student, other) <= TOL


def test_mae_decoder_and_mask_token_reported_unused(tmp_path):
    ref = W.timm_vit(16, IMG)
    _, info = _read(tmp_path, W.mae(ref.state_dict()))
    assert info.unused["model.mask_token"] == "mask token (pretraining only)"
    assert info.unused["model.decoder_blocks.*"] == "MAE decoder (pretraining only)"
    assert info.unused["model.decoder_pos_embed"] == "MAE decoder (pretraining only)"


def test_mocov3_base_encoder_over_momentum(tmp_path):
    ref, other = W.timm_vit(16, IMG, seed=0), W.timm_vit(16, IMG, seed=1)
    model, info = _read(tmp_path, W.mocov3(ref.state_dict(), other.state_dict()))
    assert info.backbone == "state_dict.module.base_encoder." and _diff(model, ref) <= TOL
    assert info.unused["state_dict.module.base_encoder.head.*"].startswith("classifier/projection head")


def test_swapped_blocks_change_the_features(tmp_path):
    ref = W.timm_vit(16, IMG)
    model, _ = _read(tmp_path, W.dino(W.swap_blocks(ref.state_dict()), ref.state_dict()))
    assert _diff(model, ref) > 1e-3


def test_leftover_and_missing_tensors_refused_in_one_line(tmp_path):
    state = W.timm_vit(16, IMG).state_dict()
    extra = {**state, "blocks.0.attn.rel_pos_h": torch.zeros(3, 16)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"1 unexpected \['blocks.0.attn.rel_pos_h'\]") as e:
        load(tmp_path / "extra.pth")
    assert "\n" not in str(e.value)
    missing = {k: v for k, v in state.items() if k != "blocks.3.mlp.fc2.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 missing tensors \['blocks.3.mlp.fc2.bias'\]"):
        load(tmp_path / "missing.pth")
    torch.save({"state_dict": {"conv.weight": torch.zeros(4, 3, 3, 3)}}, tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="no backbone weights found"):
        load(tmp_path / "none.pth")


def test_two_unknown_vits_need_backbone(tmp_path):
    a, b = W.timm_vit(16, IMG, seed=0).state_dict(), W.timm_vit(16, IMG, seed=1).state_dict()
    torch.save({"net_a": a, "net_b": b}, tmp_path / "two.pth")
    with pytest.raises(CheckpointError, match="--backbone"):
        load(tmp_path / "two.pth")
    state, info = load(tmp_path / "two.pth", backbone="net_b")
    assert info.backbone == "net_b." and torch.equal(state["cls_token"], b["cls_token"])


@pytest.mark.parametrize("reg", [0, 4])
def test_pos_embed_resampled_as_mae_with_prefix_tokens_kept(tmp_path, reg):
    ref = W.timm_vit(8, IMG, reg=reg, ls=reg > 0)
    state, info = load(_save(tmp_path, W.dinov2(ref.state_dict()) if reg else ref.state_dict()))
    spec = spec_of(info)
    pos = resize_pos_embed(state["pos_embed"], spec, 64)
    prefix = 0 if reg else 1
    assert pos.shape[1] == prefix + 64 and torch.equal(pos[:, :prefix], state["pos_embed"][:, :prefix])
    # the reference: MAE's interpolate_pos_embed (util/pos_embed.py), written out (timm's function does the work now)
    grid = state["pos_embed"][:, prefix:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    want = torch.cat([state["pos_embed"][:, :prefix], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    assert float((pos - want).abs().max()) <= 1e-6
    model = load_state(build_vit(spec, 64), state, spec, 64).eval()
    assert W.features(model, torch.randn(1, 3, 64, 64)).shape[1] == 64 + 1 + reg


def _save(tmp_path, obj):
    torch.save(obj, tmp_path / "c.pth")
    return tmp_path / "c.pth"


def test_vit_pools(tmp_path):
    ref = W.timm_vit(16, IMG, reg=4, ls=True)
    x = torch.randn(2, 3, IMG, IMG)
    tokens = W.features(ref, x)
    with torch.no_grad():
        assert torch.equal(vit_features(ref, x, "cls"), tokens[:, 0])
        assert torch.allclose(vit_features(ref, x, "avg"), tokens[:, 5:].mean(1))
        assert vit_features(ref, x, "cls+avg").shape == (2, 384)
        four = vit_features(ref, x, "cls", last_blocks=4)
        assert four.shape == (2, 4 * 192) and torch.allclose(four[:, -192:], tokens[:, 0], atol=1e-6)
        for pool in POOLS:  # the width the linear engine sizes its head by (feature_width) is the features'
            for blocks in (1, 3):
                assert vit_features(ref, x, pool, blocks).shape[1] == feature_width(192, pool, blocks), (pool, blocks)


@pytest.mark.parametrize("layout", ["mae", "dinov2"])
def test_inspect_shows_the_vit(tmp_path, layout, capsys):
    from transfer.inspect_checkpoint import main

    write, flags, codebase, pool = CASES[layout]
    path = _save(tmp_path, write(W.timm_vit(16, IMG, **flags).state_dict(), None))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"written by: {codebase}" in out and f"probe features: {pool}" in out
    assert "vit_tiny_patch16" in out and "mask token (pretraining only)" in out


def test_one_load_names_the_family(tmp_path):
    """One reader for both families: the info says which (no exception switches family)."""
    import torchvision

    _, vit = load(_save(tmp_path, W.timm_vit(16, IMG).state_dict()))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r.pth")
    _, resnet = load(tmp_path / "r.pth")
    assert (vit.family, vit.arch, resnet.family, resnet.arch) == ("vit", "vit_tiny_patch16", "resnet", "resnet18")
