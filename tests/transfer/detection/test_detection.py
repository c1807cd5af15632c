"""transfer.detection: the runner end to end on the synthetic scenes, and every refusal it promises.

The real detectron2 trains and evaluates (tiny schedule); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from tensorboard_reader import read_scalars
from transfer.detection import main
from transfer.detection.heads import register_heads

REPO = Path(__file__).resolve().parents[3]
DEMO = str(REPO / "detectron_configs" / "demo_synthetic_R_18_FPN.yaml")
# A few iterations on a few images; score threshold 0 so a barely-trained model still predicts.
TINY = ["SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2",
        "TEST.PRECISE_BN.NUM_ITER", "1", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
COCO_METRICS = {f"{t}_{m}" for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75")}


@pytest.fixture(scope="module")
def r18_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "backbone.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def run_detection(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "transfer.detection", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def read_record(out: Path) -> dict:
    return json.loads((out / "record.json").read_text())


@pytest.mark.slow
def test_runner_trains_evaluates_and_records(r18_ckpt, synthetic_root, tmp_path, capsys):
    out = tmp_path / "det"
    proc = run_detection("--ckpt", r18_ckpt, "--config", DEMO, "--out", out, "--data-root", synthetic_root,
                         "--seeds", "3", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = read_record(out)
    assert rec["status"] == "ok" and rec["error"] is None
    assert rec["task"] == "detection" and rec["dataset"] == "synthetic/scenes" and rec["seeds"] == [3]
    assert set(rec["metrics"]) == COCO_METRICS
    assert all(0.0 <= v <= 100.0 for v in rec["metrics"].values())
    assert rec["checkpoint"]["arch"] == "resnet18" and len(rec["checkpoint"]["sha256"]) == 64
    d2 = rec["config"]["detectron2"]
    assert d2["MODEL"]["RESNETS"]["DEPTH"] == 18 and d2["MODEL"]["RESNETS"]["NORM"] == "BN"  # SyncBN fallback
    assert d2["SOLVER"]["MAX_ITER"] == 2
    seed_cfg = yaml.safe_load((out / "seed_3" / "config.yaml").read_text())  # what detectron2 ran
    assert seed_cfg["SEED"] == 3 and seed_cfg["MODEL"]["WEIGHTS"] == ""  # nothing for detectron2 to unpickle
    assert "converted in memory" in rec["config"]["weights"]
    assert "MODEL.RESNETS.NORM: SyncBN -> BN" in rec["config"]["norm_fallback"]
    for name in ("config.yaml", "detectron2_config.yaml", "log.txt", "seed_3/config.yaml", "seed_3/metrics.json"):
        assert (out / name).is_file(), name
    log = (out / "log.txt").read_text()
    assert "backbone tensors (all verified)" in log and "Starting training" in log
    assert not (out / "seed_3" / "model_final.pth").exists()  # demo scale keeps no model file
    assert not list(out.rglob("*.pkl"))  # the conversion never touches the disk
    # detectron2's TensorboardXWriter: the training scalars per iteration and the evaluation's APs
    scalars = read_scalars(out / "seed_3")
    metrics = [json.loads(ln) for ln in (out / "seed_3" / "metrics.json").read_text().splitlines()]
    for tag in ("total_loss", "loss_cls", "loss_box_reg", "lr", "bbox/AP", "bbox/AP50"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["total_loss"]] == [m["iteration"] for m in metrics if "total_loss" in m]
    assert scalars["bbox/AP"][-1][1] == pytest.approx(rec["metrics"]["bbox_AP"], abs=1e-4)
    # an existing record is never overwritten silently
    before = (out / "record.json").read_bytes()
    assert main(["--ckpt", str(r18_ckpt), "--config", DEMO, "--out", str(out), "--data-root", str(synthetic_root)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "record.json").read_bytes() == before


@pytest.mark.slow
def test_nan_during_training_is_a_failed_record(r18_ckpt, synthetic_root, tmp_path):
    out = tmp_path / "nan"
    diverge = ["SOLVER.BASE_LR", "1e30", "SOLVER.CLIP_GRADIENTS.ENABLED", "False", "SOLVER.WARMUP_ITERS", "0",
               "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2"]
    proc = run_detection("--ckpt", r18_ckpt, "--config", DEMO, "--out", out, "--data-root", synthetic_root,
                         *diverge)
    assert proc.returncode == 1
    rec = read_record(out)
    assert rec["status"] == "failed" and rec["metrics"] == {}
    assert "NaN/Inf during training" in rec["error"] and "iteration=" in rec["error"]
    assert "\n" not in rec["error"]


def test_refusals_before_training(r18_ckpt, synthetic_root, tmp_path):
    """Missing dataset -> skipped (names DETECTRON2_DATASETS); ViT / C4-with-R18 -> failed; no training.

    The first case runs in a subprocess: detectron2 reads DETECTRON2_DATASETS when it is imported.
    """
    missing = tmp_path / "missing"
    proc = run_detection("--ckpt", r18_ckpt, "--config", REPO / "detectron_configs" / "coco_R_50_FPN_1x.yaml",
                         "--out", missing,
                         env={"DETECTRON2_DATASETS": str(tmp_path / "no_datasets")})
    assert proc.returncode == 3, proc.stderr[-2000:]
    rec = read_record(missing)
    assert rec["status"] == "skipped" and "DETECTRON2_DATASETS" in rec["error"] and "coco/" in rec["error"]

    import vit_writers

    vit = tmp_path / "vit.pth"
    torch.save(vit_writers.timm_vit(16, 32, depth=2).state_dict(), vit)
    c4 = REPO / "detectron_configs" / "coco_R_50_C4_1x.yaml"
    for name, ckpt, config, expected in [("vit", vit, DEMO, "holds a Vision Transformer"),
                                         ("c4_r18", r18_ckpt, c4, "use an FPN config")]:
        code = main(["--ckpt", str(ckpt), "--config", str(config), "--out", str(tmp_path / name),
                     "--data-root", str(synthetic_root)])
        rec = read_record(tmp_path / name)
        assert code == 1 and rec["status"] == "failed" and expected in rec["error"], rec["error"]
        assert not (tmp_path / name / "seed_0").exists()  # refused before any training


def _build_demo_model():
    register_heads()
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(DEMO)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN"])
    return build_model(cfg)


def _converted(r18_ckpt: Path) -> dict:
    from transfer.backbones import load
    from transfer.backbones.resnet.detectron2 import to_detectron2

    return to_detectron2(*load(r18_ckpt))


def test_weights_that_do_not_load_are_refused(r18_ckpt, tmp_path):
    """detectron2 only warns about unmatched names; load_verified refuses."""
    from transfer.backbones.resnet.detectron2 import WeightsNotLoaded, load_verified

    good = _converted(r18_ckpt)
    wrong_prefix = {**good, "model": {f"encoder.{k}": v for k, v in good["model"].items()}}
    gap = {**good, "model": {k: v for k, v in good["model"].items() if k != "res3.1.conv2.weight"}}
    for name, data, expected in [("prefix", wrong_prefix, "matches 0 model tensors"),
                                 ("gap", gap, "1 backbone tensors not loaded")]:
        with pytest.raises(WeightsNotLoaded, match=expected):
            load_verified(_build_demo_model(), data)
    report = load_verified(_build_demo_model(), good)
    assert len(report.placed) == len(good["model"]) and not report.new_layers


def test_sync_norms_fall_back_to_bn_with_one_process():
    from transfer.detection.runner import load_config, sync_norm_fallback

    fpn = load_config(str(REPO / "detectron_configs" / "coco_R_50_FPN_1x.yaml"), [])
    assert sorted(sync_norm_fallback(fpn)) == ["MODEL.FPN.NORM: SyncBN -> BN", "MODEL.RESNETS.NORM: SyncBN -> BN"]
    voc = load_config(str(REPO / "detectron_configs" / "voc_R_50_C4_24k.yaml"), [])
    assert voc.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and voc.TEST.PRECISE_BN.ENABLED
    assert sync_norm_fallback(voc) == ["MODEL.RESNETS.NORM: naiveSyncBN -> BN"] and voc.MODEL.RESNETS.NORM == "BN"
