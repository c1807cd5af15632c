"""The probes on ViT checkpoints: the features each codebase evaluates, recorded and selectable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vit_writers as W
from transfer.probes import knn, linear
from transfer.probes.features import FeatureError, FeatureExtractor
from transfer.probes.linear import batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")


def _dino(tmp_path, dim=192):
    ref, other = W.timm_vit(16, 32, seed=0, dim=dim, depth=4), W.timm_vit(16, 32, seed=1, dim=dim, depth=4)
    path = tmp_path / "dino.pth"
    torch.save(W.dino(ref.state_dict(), other.state_dict()), path)
    return path, ref


def _pixels(extractor, root, split):
    from transfer.probes.datasets import load_split
    from transfer.probes.features import _ImageList

    items = load_split(root, split, None, None, False, False)
    return torch.stack([_ImageList(items, extractor.preprocess)[i] for i in range(len(items))])


@pytest.mark.parametrize("pool, last_blocks", [(None, None), ("avg", None), ("cls+avg", None), ("cls", 2)])
def test_features_are_the_reference_vits_tokens(synthetic_root, tmp_path, pool, last_blocks):
    path, ref = _dino(tmp_path)
    root = synthetic_root / "classification" / "shape"
    ex = FeatureExtractor(path, cache_dir=tmp_path / "cache", progress=False, vit_pool=pool, vit_last_blocks=last_blocks)
    assert ex.image_size == 32 and ex.vit_pool == (pool or "cls")  # DINO evaluates the class token
    got = ex.features(root, "test").features
    x = _pixels(ex, root, "test")
    with torch.no_grad():
        tokens = ref.forward_features(x)
        want = {"cls": tokens[:, 0], "avg": tokens[:, 1:].mean(1),
                "cls+avg": torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1)}[pool or "cls"]
        if last_blocks:
            want = torch.cat([o[1][:, 0] for o in ref.get_intermediate_layers(x, 2, return_prefix_tokens=True,
                                                                                 norm=True)], 1)
    assert float((got - want).abs().max()) <= 1e-5
    again = FeatureExtractor(path, cache_dir=tmp_path / "cache", progress=False, vit_pool="avg" if pool is None else None)
    assert not torch.equal(again.features(root, "test").features, got)  # another pooling: another cache key


class _CountPasses:
    """Counts the images that go through a timm ViT's blocks (both entry points the probes use)."""

    def __init__(self, monkeypatch) -> None:
        from timm.models.vision_transformer import VisionTransformer

        self.images = 0
        for name in ("forward_features", "forward_intermediates"):
            original = getattr(VisionTransformer, name)

            def counted(model, x, *args, _original=original, **kwargs):
                self.images += len(x)
                return _original(model, x, *args, **kwargs)

            monkeypatch.setattr(VisionTransformer, name, counted)


def _reference(ref, x, pool, last_blocks):
    """A separate pass of timm's own ViT for one feature set (what each probe task computed on its own)."""
    with torch.no_grad():
        tokens = ref.forward_features(x)
        cls, avg = tokens[:, 0], tokens[:, 1:].mean(1)
        if last_blocks > 1:
            outs = ref.get_intermediate_layers(x, last_blocks, return_prefix_tokens=True, norm=True)
            cls, avg = torch.cat([o[1][:, 0] for o in outs], 1), outs[-1][0].mean(1)
    return {"cls": cls, "avg": avg, "cls+avg": torch.cat([cls, avg], 1)}[pool]


def test_one_pass_fills_every_pooling_and_the_next_task_reads_them(synthetic_root, tmp_path, monkeypatch):
    from transfer.backbones.vit.pooling import probe_feature_sets

    path, ref = _dino(tmp_path)
    root, cache = synthetic_root / "classification" / "shape", tmp_path / "cache"
    passes = _CountPasses(monkeypatch)
    knn_like = FeatureExtractor(path, cache_dir=cache, progress=False)  # kNN: DINO's class token, last block
    first = knn_like.features(root, "train")
    n = len(first.labels)
    assert not first.from_cache and passes.images == n  # one pass over the images
    sets = probe_feature_sets(knn_like.info, "cls", 1)
    assert ("cls", 4) in sets and ("avg", 1) in sets and len(list(cache.glob("*.pt"))) == len(sets)
    x = _pixels(knn_like, root, "train")
    for pool, blocks in sets:  # each task that asks for another pooling: the cache, no network, the same numbers
        task, seen = FeatureExtractor(path, cache_dir=cache, progress=False, vit_pool=pool, vit_last_blocks=blocks), passes.images
        got = task.features(root, "train")
        assert got.from_cache and task.model is None and passes.images == seen, (pool, blocks)
        assert float((got.features - _reference(ref, x, pool, blocks)).abs().max()) <= 1e-6, (pool, blocks)
    linear_like, seen = FeatureExtractor(path, cache_dir=cache, progress=False, linear=True), passes.images
    assert (linear_like.vit_pool, linear_like.vit_last_blocks) == ("cls", 4)  # DINO ViT-S: the last 4 blocks
    assert linear_like.features(root, "train").from_cache and passes.images == seen
    test = linear_like.features(root, "test")  # other images: one pass of its own
    assert not test.from_cache and passes.images == seen + len(test.labels)


def test_shallow_vit_keeps_kNN_and_names_the_depth_for_linear(synthetic_root, tmp_path):
    ref = W.timm_vit(16, 32, depth=2)  # fewer blocks than DINO's linear default (4)
    torch.save(W.dino(ref.state_dict(), ref.state_dict()), tmp_path / "dino2.pth")
    root = synthetic_root / "classification" / "shape"
    knn_like = FeatureExtractor(tmp_path / "dino2.pth", cache_dir=tmp_path / "c", progress=False)
    assert knn_like.features(root, "test").features.shape[1] == 192  # the pass leaves out what it cannot give
    linear_like = FeatureExtractor(tmp_path / "dino2.pth", cache_dir=tmp_path / "c", progress=False, linear=True)
    with pytest.raises(ValueError, match="--vit-last-blocks 4: the ViT has only 2 blocks"):
        linear_like.features(root, "test")


def test_resolution_must_fit_the_patch(tmp_path):
    path, _ = _dino(tmp_path)
    with pytest.raises(FeatureError, match="not a multiple of the ViT's patch size 16"):
        FeatureExtractor(path, image_size=40, progress=False)


def test_probe_clis_record_the_pooling(synthetic_root, tmp_path):
    path, _ = _dino(tmp_path)
    common = ["--ckpt", str(path), "--data", str(synthetic_root / "classification" / "color"),
              "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert linear.main([*common, "--out", str(tmp_path / "lin")]) == 0
    assert knn.main([*common, "--out", str(tmp_path / "knn"), "--vit-pool", "cls+avg"]) == 0
    lin = json.loads((tmp_path / "lin" / "record.json").read_text())
    kn = json.loads((tmp_path / "knn" / "record.json").read_text())
    assert lin["status"] == kn["status"] == "ok"
    # DINO's eval_linear on a ViT-S or smaller: the class tokens of the last 4 blocks
    assert (lin["config"]["vit_pool"], lin["config"]["vit_last_blocks"]) == ("cls", 4) and lin["feature_bn"] is False
    assert (kn["config"]["vit_pool"], kn["config"]["vit_last_blocks"]) == ("cls+avg", 1)
    assert lin["checkpoint"]["codebase"] == "DINO" and lin["checkpoint"]["vit"]["patch_size"] == 16


def test_mae_linear_probe_uses_its_batchnorm(synthetic_root, tmp_path):
    ref = W.timm_vit(16, 32, depth=2)
    torch.save(W.mae(ref.state_dict()), tmp_path / "mae.pth")
    args = ["--ckpt", str(tmp_path / "mae.pth"), "--data", str(synthetic_root / "classification" / "color"),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "lin")]
    assert linear.main(args) == 0
    rec = json.loads((tmp_path / "lin" / "record.json").read_text())
    assert rec["feature_bn"] is True and rec["config"]["vit_pool"] == "avg"


def test_batchnorm_is_batchnorm1d_without_affine():
    x, y = torch.randn(50, 7) * 3 + 1, torch.randn(9, 7)
    bn = torch.nn.BatchNorm1d(7, affine=False, eps=1e-6, momentum=1.0).train()
    bn(x)  # momentum 1: running stats = this batch's (running_var unbiased; ours is BatchNorm's batch variance)
    bn.running_var.mul_((len(x) - 1) / len(x))
    assert torch.allclose(batchnorm(x, y)[0], bn.eval()(y), atol=1e-5)


def test_report_says_the_backbones_when_a_vit_is_in_it(tmp_path):
    from reports import build, tables
    from reports.results import load_results

    data = tmp_path / "results.jsonl"
    lines = [json.loads(x) for x in (Path(__file__).resolve().parents[2] / "data" / "results.jsonl").read_text().splitlines()
             if x.startswith("{") and x.rstrip().endswith("}")][:2]
    resnet_only = tables.markdown_report(load_results(_write(data, lines)), None)
    assert "Backbones:" not in resnet_only and "· backbone:" not in resnet_only  # ResNet reports unchanged
    vit = json.loads(json.dumps(lines[0]))
    vit.update(name="dino_vits16", ckpt_sha256="3" * 64)
    vit["checkpoint"].update(arch="vit_small_patch16", family="vit", codebase="DINO", sha256="3" * 64)
    vit.pop("method", None)  # a DINO file names no MAST method
    vit["checkpoint"].pop("method", None)
    report = tables.markdown_report(load_results(_write(data, [*lines, vit])), None)
    assert "Backbones: vicreg resnet18; mast resnet18; dino_vits16 vit_small_patch16 (DINO)" in report
    assert "· backbone: resnet18, vit_small_patch16" in report
    index = build.build(_write(data, [*lines, vit]), tmp_path / "report").read_text()
    assert "| dino_vits16 | DINO | vit_small_patch16 |" in index  # the codebase that wrote it, not "?"


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


_OPENED: list[str] = []  # every file opened while _WATCHING is set (a Python audit hook sees every open)
_WATCHING: list[str] = []


def _count_opens(event: str, args: tuple) -> None:
    if event == "open" and _WATCHING and isinstance(args[0], (str, Path)):
        _OPENED.append(str(Path(args[0]).resolve()))


def test_the_knn_probe_opens_a_dino_vit_file_once(synthetic_root, tmp_path):
    """A DINO ViT into the kNN probe, end to end: the checkpoint file is opened (and read) exactly once;
    it was read twice before transfer.backbones (the ResNet reader raised, then the ViT reader read it again)."""
    import sys

    path, _ = _dino(tmp_path)
    if _count_opens not in getattr(sys, "_mast_audit_hooks", []):  # an audit hook cannot be removed: add it once
        sys.addaudithook(_count_opens)
        sys._mast_audit_hooks = [*getattr(sys, "_mast_audit_hooks", []), _count_opens]
    _OPENED.clear()
    _WATCHING.append("on")
    try:
        code = knn.main(["--ckpt", str(path), "--data", str(synthetic_root / "classification" / "color"),
                         "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "knn")])
    finally:
        _WATCHING.clear()
    assert code == 0
    assert _OPENED.count(str(path.resolve())) == 1, [p for p in _OPENED if "dino" in p]
