"""ViTDet through detectron2's LazyConfig: the paper config's protocol keys, the model built from it with
the converted ViT loaded (only the heads from init), the refused pairings, and one tiny real fine-tuning
run of the demo twin on the synthetic scenes (nothing mocked)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torchvision

import vit_writers as W
from tensorboard_reader import read_scalars
from transfer.detection import main
from transfer.backbones.vit.detectron2 import VITDET_PREFIX

REPO = Path(__file__).resolve().parents[3]
PAPER = str(REPO / "detectron_configs" / "vitdet" / "mask_rcnn_vitdet_b_100ep.py")
DEMO = str(REPO / "detectron_configs" / "vitdet" / "demo_synthetic_vitdet_t16.py")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dino_vit(tmp_path_factory) -> Path:
    """A DINO-layout ViT-Tiny/16 (12 blocks, 64 px), as dino_vits16.pth is laid out."""
    ref = W.timm_vit(16, 64, depth=12)
    path = tmp_path_factory.mktemp("vit") / "dino_vitt16.pth"
    torch.save(W.dino(ref.state_dict(), ref.state_dict()), path)
    return path


def test_paper_config_resolves_with_the_vitdet_schedule_and_loads_every_vit_tensor(dino_vit):
    from detectron2.config import instantiate

    from transfer.detection.vitdet import (convert_for, load_lazy_config, load_vitdet_verified, resolve_vitdet,
                                           vitdet_summary)
    from transfer.backbones import load

    cfg = load_lazy_config(PAPER, [])
    keys = vitdet_summary(cfg)
    assert keys == {"lr": 1e-4, "weight_decay": 0.1, "betas": [0.9, 0.999], "layer_decay": 0.7, "max_iter": 184375,
                    "batch": 64, "milestones": [163889, 177546], "warmup_iters": 250, "drop_path": 0.1,
                    "image_size": 1024, "window_size": 14, "window_blocks": [0, 1, 3, 4, 6, 7, 9, 10],
                    "rel_pos": True, "amp": True}
    assert cfg.optimizer.params.overrides == {"pos_embed": {"weight_decay": 0.0}}
    assert cfg.optimizer.params.weight_decay_norm == 0.0 and cfg.train.init_checkpoint == ""
    state, info = load(dino_vit)
    resolved, notes = resolve_vitdet(cfg, info, "paper", [])
    cfg = load_lazy_config(PAPER, resolved)
    assert cfg.model.backbone.net.embed_dim == 192 and any("width 768 -> 192" in n for n in notes)
    model = instantiate(cfg.model)
    converted, new, unused = convert_for(cfg, state, info)
    report = load_vitdet_verified(model, converted, new, source=str(dino_vit))
    n_backbone = sum(1 for k in model.state_dict() if k.startswith(VITDET_PREFIX))
    heads = report.summary()["head_prefixes"]
    print(f"ViTDet paper config, ViT-Tiny/16: {report.loaded} of {n_backbone} ViT tensors loaded and verified, "
          f"{len(new)} new rel-pos tables at zero, {len(report.heads)} head tensors from init {heads}")
    assert report.loaded == n_backbone and len(new) == 24 and set(unused) == {"cls_token", "norm.weight", "norm.bias"}
    assert all(float(model.state_dict()[k].abs().sum()) == 0 for k in new)
    assert model.state_dict()[VITDET_PREFIX + "blocks.0.attn.rel_pos_h"].shape == (2 * 14 - 1, 64)
    assert model.state_dict()[VITDET_PREFIX + "blocks.2.attn.rel_pos_h"].shape == (2 * 64 - 1, 64)
    assert {h.split(".")[0] for h in report.heads} == {"backbone", "proposal_generator", "roi_heads"}
    assert not any(h.startswith(VITDET_PREFIX) for h in report.heads)


def _record(out: Path) -> dict:
    return json.loads((out / "record.json").read_text())


def test_backbone_and_config_families_must_agree(dino_vit, tmp_path):
    resnet = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    assert main(["--ckpt", str(resnet), "--config", DEMO, "--out", str(tmp_path / "a")]) != 0
    assert "holds a ResNet (resnet18) and --config demo_synthetic_vitdet_t16.py is a ViTDet config" \
        in _record(tmp_path / "a")["error"]
    yaml_cfg = str(REPO / "detectron_configs" / "demo_synthetic_R_18_FPN.yaml")
    assert main(["--ckpt", str(dino_vit), "--config", yaml_cfg, "--out", str(tmp_path / "b")]) != 0
    error = _record(tmp_path / "b")["error"]
    assert "holds a Vision Transformer (vit_tiny_patch16) and --config demo_synthetic_R_18_FPN.yaml is a ResNet " \
        "config: use a ViTDet config" in error and "\n" not in error
    with pytest.raises(SystemExit):  # a YAML-style override on a LazyConfig: usage error before anything runs
        main(["--ckpt", str(dino_vit), "--config", DEMO, "--out", str(tmp_path / "c"), "SOLVER.MAX_ITER", "2"])


@pytest.mark.slow
def test_tiny_vitdet_fine_tuning_on_the_synthetic_scenes(dino_vit, synthetic_root, tmp_path):
    out = tmp_path / "vitdet"
    start = time.monotonic()
    code = main(["--ckpt", str(dino_vit), "--config", DEMO, "--out", str(out), "--data-root", str(synthetic_root),
                 "--threads", "1", "train.max_iter=3", "model.roi_heads.box_predictor.test_score_thresh=0.0"])
    elapsed = time.monotonic() - start
    record = _record(out)
    print(f"tiny ViTDet run (ViT-Tiny/16, 64 px, 3 iterations): {elapsed:.1f} s; metrics {record['metrics']}")
    assert code == 0, record.get("error")
    assert record["status"] == "ok" and record["scale"] == "demo"
    assert {f"{t}_{m}" for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75")} <= set(record["metrics"])
    conversion = record["vit_conversion"]
    assert len(conversion["new_tensors"]) == 24 and conversion["verified"]
    assert record["config"]["vitdet"]["layer_decay"] == 0.7 and record["config"]["vitdet"]["max_iter"] == 3
    assert (out / "seed_0" / "metrics.json").is_file()
    scalars = read_scalars(out / "seed_0")  # detectron2's TensorboardXWriter, as on the ResNet path
    assert "total_loss" in scalars and "lr" in scalars
    assert scalars["bbox/AP"][-1][1] == pytest.approx(record["metrics"]["bbox_AP"], abs=1e-4)


def test_suites_have_the_vitdet_tasks_and_the_dataset_check_reads_their_lazyconfig(tmp_path, monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)  # the suite's env says where
    from transfer.orchestrate.dataset_check import check_task
    from transfer.orchestrate.suite import load_suite

    paper = {s.name: s for s in load_suite("paper", {"datasets": str(tmp_path)}).tasks}
    demo = {s.name: s for s in load_suite("demo").tasks}
    task = paper["detection_coco_vitdet"]
    assert task.takes("vit") and not task.takes("resnet") and demo["detection_scenes_vitdet"].takes("vit")
    assert not demo["detection_scenes"].takes("vit")
    verdict = check_task(task)
    assert verdict.status == "missing" and str(tmp_path / "coco" / "train2017") in verdict.detail
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    for p in ("coco/train2017", "coco/val2017", "coco/annotations/instances_train2017.json",
              "coco/annotations/instances_val2017.json"):
        (tmp_path / p).mkdir() if "2017" in p and not p.endswith(".json") else (tmp_path / p).write_text("{}")
    assert check_task(task).status == "found"
