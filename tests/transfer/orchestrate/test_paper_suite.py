"""The paper suite as a user runs it (issue 16): one dataset root, any working directory, --smoke,
overrides, segmentation at the protocol's global batch on any world size, and reports that never
show a stale or shortened number as a paper result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from paper_layouts import make_all
from reports.results import load_results, select_records
from transfer.orchestrate.run_all import main as run_all_main
from transfer.orchestrate.console import outcome
from transfer.segmentation.batch import BatchError, plan_batch
from plumbing import PROJECT
from transfer.orchestrate.suite import SuiteError, load_suite, parse_task_args

REPO = Path(__file__).resolve().parents[3]
VOC = REPO / "transfer" / "mmseg_configs" / "fcn_r50_d8_voc12aug_512x512_20k.py"
CITY = REPO / "transfer" / "mmseg_configs" / "fcn_r50_d8_cityscapes_769x769_40k.py"


@pytest.fixture(scope="module")
def r50(tmp_path_factory) -> Path:
    """An untrained torchvision ResNet-50: what a user's SSL checkpoint looks like on disk."""
    path = tmp_path_factory.mktemp("ckpt") / "r50.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def _seg_config(ckpt: Path, config: Path, world: int, *extra: str, monkeypatch):
    from transfer.backbones import load
    from transfer.segmentation.runner import build_parser, load_config

    monkeypatch.setenv("WORLD_SIZE", str(world))
    launcher = "pytorch" if world > 1 else "none"
    args = build_parser().parse_args(["--ckpt", str(ckpt), "--out", "unused", "--config", str(config),
                                      "--launcher", launcher, *extra])
    return load_config(args, load(ckpt)[1])


@pytest.mark.parametrize("config,protocol", [(VOC, 16), (CITY, 8)])
def test_segmentation_keeps_the_protocols_global_batch_on_any_world_size(r50, monkeypatch, config, protocol):
    for world in (1, 2, 4, 8):
        cfg = _seg_config(r50, config, world, monkeypatch=monkeypatch)
        accumulation = cfg.optim_wrapper.get("accumulative_counts", 1)
        assert cfg.train_dataloader.batch_size * world * accumulation == protocol
        assert cfg.batch_plan == dict(world_size=world, per_gpu=protocol // world, accumulation=1,
                                      protocol=protocol, effective=protocol)
    # a per-process cap (the batch does not fit): accumulation keeps the global batch and the schedule
    cfg = _seg_config(r50, config, 2, "--cfg-options", "train_dataloader.batch_size=2", monkeypatch=monkeypatch)
    accumulation = protocol // 4
    assert (cfg.train_dataloader.batch_size, cfg.optim_wrapper.accumulative_counts) == (2, accumulation)
    iters = 20000 if config == VOC else 40000
    assert cfg.train_cfg.max_iters == iters * accumulation == cfg.param_scheduler[0]["end"]
    # another effective batch is refused, unless asked for (and then marked)
    with pytest.raises(ValueError, match=f"effective global batch 4 differs from the protocol's {protocol}.*--any-batch"):
        _seg_config(r50, config, 1, "--cfg-options", "global_batch=4", monkeypatch=monkeypatch)
    cfg = _seg_config(r50, config, 1, "--cfg-options", "global_batch=4", "--any-batch", monkeypatch=monkeypatch)
    assert cfg.batch_plan["effective"] == 4 and cfg.batch_plan["protocol"] == protocol


def test_batch_plan_splits_or_says_why():
    with pytest.raises(BatchError, match="global batch 16 cannot be split over 3 processes"):
        plan_batch(16, 3)
    with pytest.raises(BatchError, match="over 16 processes"):
        plan_batch(8, 16)
    p = plan_batch(16, 2, max_per_gpu=3)
    assert (p.per_gpu, p.accumulation, p.effective) == (2, 4, 16)


@pytest.mark.slow
def test_two_cpu_processes_accumulate_to_the_global_batch(synthetic_root, tmp_path):
    """A real torchrun launch (gloo, 2 processes), per-process batch 2, accumulation 2 -> global 8."""
    root = synthetic_root
    r18_ckpt = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18_ckpt)
    out = tmp_path / "seg2"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "transfer.segmentation", "--ckpt", str(r18_ckpt), "--out", str(out),
           "--data-root", str(root), "--num-gpus", "2", "--threads", "1", "--cfg-options", "global_batch=8",
           "train_dataloader.batch_size=2", "train_cfg.max_iters=2", "train_cfg.val_interval=2",
           "param_scheduler.0.end=2", "default_hooks.logger.interval=1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    record = json.loads((out / "record.json").read_text())
    assert done.returncode == 0 and record["status"] == "ok", done.stdout[-2000:] + done.stderr[-2000:]
    assert record["batch"] == dict(world_size=2, per_gpu=2, accumulation=2, protocol=None, effective=8,
                                   off_protocol=False)
    assert "Iter(train) [4/4]" in (out / "train.log").read_text()  # 2 optimizer steps = 4 forward passes
    resolved = (out / "mmseg_config.py").read_text()
    assert "accumulative_counts=2" in resolved and "backend='gloo'" in resolved


def test_suite_overrides_smoke_and_one_dataset_root():
    suite = load_suite("paper", {"datasets": "/data"}, task_args=parse_task_args(
        ["detection=SOLVER.MAX_ITER 5", "detection_coco_FPN_1x=SOLVER.BASE_LR 0.001",
         "segmentation=--cfg-options train_cfg.max_iters=3"]))
    by = {s.name: s for s in suite.tasks}
    assert by["segmentation_voc12aug"].args["data_root"] == "/data/VOCdevkit/VOC2012"
    assert by["segmentation_cityscapes"].args["data_root"] == "/data/cityscapes"
    assert by["fewshot_fc100"].args["data"] == "/data/fc100"
    assert by["detection_coco_C4_1x"].env == {"DETECTRON2_DATASETS": "/data"}
    fpn = by["detection_coco_FPN_1x"]
    assert fpn.overrides == ("SOLVER.MAX_ITER", "5", "SOLVER.BASE_LR", "0.001")
    assert fpn.scale_label == "paper+overrides" and by["fewshot_fc100"].scale_label == "paper"
    cmd = fpn.command("python", "c.pth", "out")
    assert cmd[cmd.index("--config") + 1] == str(PROJECT / "detectron_configs" / "coco_R_50_FPN_1x.yaml")
    assert cmd[-4:] == ["SOLVER.MAX_ITER", "5", "SOLVER.BASE_LR", "0.001"]
    plain = load_suite("paper", {"datasets": "/data"})
    assert {s.name: s.config_hash for s in plain.tasks}["fewshot_fc100"] == by["fewshot_fc100"].config_hash
    assert {s.name: s.config_hash for s in plain.tasks}["detection_coco_FPN_1x"] != fpn.config_hash
    smoke = {s.name: s for s in load_suite("paper", smoke=True).tasks}
    assert smoke["segmentation_voc12aug"].scale_label == "smoke"
    assert "--smoke" in smoke["segmentation_voc12aug"].command("python", "c", "o")
    det = smoke["detection_coco_C4_1x"].command("python", "c", "o")
    assert "--smoke" in det  # transfer.detection's own smoke (SMOKE_OPTS: precise-BN off, score threshold 0)
    from transfer.detection.runner import SMOKE_OPTS
    assert SMOKE_OPTS[SMOKE_OPTS.index("MODEL.ROI_HEADS.SCORE_THRESH_TEST") + 1] == "0.0"
    assert SMOKE_OPTS[SMOKE_OPTS.index("TEST.PRECISE_BN.ENABLED") + 1] == "False"
    # a checkpoint without a run config: --smoke gives the probes the documented 224 px / ImageNet statistics
    assert smoke["linear_pets"].args["image_size"] == "224" and smoke["linear_pets"].args["normalize"] == "imagenet"
    mine = {s.name: s for s in load_suite("paper", {"image_size": "96"}, smoke=True).tasks}
    assert mine["linear_pets"].args["image_size"] == "96"  # the user's choice wins
    with pytest.raises(SuiteError, match="--task-args detectoin: not a task type"):
        load_suite("paper", task_args={"detectoin": ["X"]})
    with pytest.raises(SuiteError, match="expected TASK=ARGS"):
        parse_task_args(["detection"])


def test_all_skipped_suite_exits_non_zero_with_one_line(r50, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = run_all_main(["--suite", "paper", "--tasks", "fewshot", "--ckpt", str(r50), "--var",
                       f"datasets={tmp_path / 'none'}", "--out", str(tmp_path / "runs"), "--no-report"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 1 and last.startswith("3 tasks: 0 ok, 3 skipped: fewshot_fc100: "), last
    assert outcome([{"status": "ok"}]) == ("1 tasks: 1 ok", False)


def _rec(task: str, status: str, scale: str = "paper", digest: str = "h1", value: float = 50.0) -> dict:
    return {"name": "mast", "task_name": task, "task": "segmentation", "status": status, "scale": scale,
            "task_config_hash": digest, "metrics": {"mIoU": value} if status == "ok" else {},
            "error": None if status == "ok" else "dataset not found", "command": f"run {task} {scale} {status}"}


def test_stale_ok_and_smoke_records_never_look_like_paper_numbers():
    records = [_rec("seg", "ok", value=61.0), _rec("seg", "ok", "smoke", "h2", 10.5), _rec("seg", "skipped"),
               _rec("det", "ok", digest="old", value=40.0), _rec("det", "ok", digest="new", value=41.0),
               _rec("lin", "failed", digest="a"), _rec("lin", "ok", digest="b", value=70.0)]
    chosen = select_records(records)
    assert chosen[("mast", "seg")]["status"] == "skipped"  # the newer skipped run, not the older 61.0
    assert chosen[("mast", "seg [smoke]")]["metrics"]["mIoU"] == 10.5  # its own, labelled column
    assert chosen[("mast", "det")]["metrics"]["mIoU"] == 41.0
    assert chosen[("mast", "det [config old]")]["metrics"]["mIoU"] == 40.0
    assert ("mast", "lin") in chosen and len([k for k in chosen if k[1].startswith("lin")]) == 1


def test_report_lists_commands_and_labels_smoke_columns(tmp_path):
    from reports import build, tables

    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in
                               [_rec("seg", "ok", value=61.0), _rec("seg", "ok", "smoke", "h2", 10.5),
                                _rec("seg", "skipped")]))
    res = load_results(results)
    assert res.tasks == ["seg", "seg [smoke]"]
    md = tables.markdown_report(res, None)
    assert "61.0" not in md and "10.5" in md
    index = build.build(results, tmp_path / "report").read_text()
    assert "`run seg smoke ok`" in index and "`run seg paper skipped`" in index
    assert "`run seg paper ok`" not in index  # not shown, so not listed


@pytest.mark.slow
def test_paper_smoke_from_another_directory_runs_every_fine_tuning_task(r50, tmp_path):
    """`run_all --suite paper --smoke --var datasets=ROOT` with stand-ins of the official layouts (a ResNet:
    the two ViT tasks, ADE20K UperNet and ViTDet, are checked but not run)."""
    root = make_all(tmp_path / "data")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    env.update(PYTHONPATH="", OMP_NUM_THREADS="2")
    check = subprocess.run([sys.executable, str(REPO / "transfer" / "run_all.py"), "--suite", "paper", "--check",
                            "--var", f"datasets={root}", "--tasks", "detection", "segmentation"],
                           cwd=cwd, env=env, capture_output=True, text=True)
    assert check.returncode == 0 and "all 7 datasets found" in check.stdout, check.stdout + check.stderr
    cmd = [sys.executable, str(REPO / "transfer" / "run_all.py"), "--suite", "paper", "--smoke",
           "--var", f"datasets={root}", "--tasks", "detection", "segmentation", "--ckpt", str(r50)]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (cwd / "runs" / "transfer" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["task_name"] for r in records) == sorted(
        ["detection_voc07_12_C4", "detection_coco_C4_1x", "detection_coco_FPN_1x",
         "segmentation_voc12aug", "segmentation_cityscapes"])
    assert all(r["status"] == "ok" and r["scale"] == "smoke" for r in records), [r.get("error") for r in records]
    seg = next(r for r in records if r["task_name"] == "segmentation_voc12aug")
    assert seg["batch"]["protocol"] == 16 and seg["batch"]["off_protocol"]  # smoke: batch 2, marked
    index = (cwd / "runs" / "transfer" / "report" / "index.md").read_text()  # the default: inside --out
    assert "segmentation_voc12aug [smoke]" in index and "--smoke" in index
    assert "5 tasks: 5 ok" in done.stdout
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"]  # nothing else lands in the working directory
    det = next(r for r in records if r["task_name"] == "detection_coco_FPN_1x")  # transfer.detection --smoke
    assert det["config"]["detectron2"]["TEST"]["PRECISE_BN"]["ENABLED"] is False and det["seeds"] == [0]


def test_readme_gives_the_paper_commands_under_one_root():
    readme = (REPO / "README.md").read_text()
    assert "python transfer/run_all.py --suite paper --check --var datasets=/data" in readme
    assert "python transfer/run_all.py --suite paper --var datasets=/data --var num_gpus=8" in readme


def test_no_predictions_is_the_recorded_cause():
    from detectron2.config import get_cfg

    from transfer.detection.train import _check_predictions
    from transfer.records import TaskFailed

    nan = float("nan")
    with pytest.raises(TaskFailed, match=r"no predictions from the model at SCORE_THRESH_TEST 0.05 \(bbox, segm AP"):
        _check_predictions({"bbox": {"AP": nan, "AP50": nan}, "segm": {"AP": nan}}, get_cfg())
    _check_predictions({"bbox": {"AP": 0.0, "APs": nan}}, get_cfg())  # some AP computed: not this failure
