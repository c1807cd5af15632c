"""The paper suite as a newcomer runs it (issue 26): the README's commands as written, from another
directory, on a checkpoint without a run config; --check that opens each dataset through its
reader; one headline metric per dataset (the registry's) with its interval; records that agree."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision

import probe_standins
from transfer.orchestrate import run_all
from transfer.probes.cli import record_class_avg
from transfer.records import TaskRun

REPO = Path(__file__).resolve().parents[1]


def _broken_layouts(root: Path) -> Path:
    """The newcomer's mistakes: CIFAR batches of another format, Food-101 one level too high, Pets
    without its oxford-iiit-pet/, DTD without its inner dtd/, CIFAR-100 absent; Flowers-102 right."""
    for name in ("cifar10", "food101", "pets", "dtd", "flowers102"):
        probe_standins.BUILDERS[name](root / name)
    with open(root / "cifar10" / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"images": np.zeros((2, 3072), np.uint8)}, f, protocol=2)  # no 'data' key
    for name, inner in (("food101", "food-101"), ("pets", "oxford-iiit-pet")):
        for child in (root / name / inner).iterdir():
            child.rename(root / name / child.name)
        (root / name / inner).rmdir()
    inner = root / "dtd" / "dtd" / "dtd"  # the stand-in is ROOT/dtd/dtd/dtd/{images,labels}: flatten it
    shutil.move(str(inner), str(root / "dtd_flat"))
    shutil.rmtree(root / "dtd")
    (root / "dtd_flat").rename(root / "dtd")
    return root


def test_check_opens_every_dataset_through_its_reader(tmp_path, capsys):
    root = _broken_layouts(tmp_path / "data")
    rc = run_all.main(["--suite", "paper", "--check", "--var", f"datasets={root}", "--tasks", "linear"])
    lines = {line.split(":", 1)[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rc == 1
    assert lines["linear_flowers102"] == f"linear_flowers102: found {root}/flowers102 (3 classes; train 6, val 6, test 6)"
    assert lines["linear_cifar100"].startswith(f"linear_cifar100: missing {root}/cifar100; expected "
                                               f"{root}/cifar100/cifar-100-python/")
    for name, layout in (("cifar10", "cifar-10-batches-py/"), ("food101", "food-101/"),
                         ("pets", "oxford-iiit-pet/"), ("dtd", "dtd/ (images/")):
        line = lines[f"linear_{name}"]
        assert line.startswith(f"linear_{name}: unreadable {root}/{name} (") and \
            f"; expected {root}/{name}/{layout}" in line, line
    assert "cifar-10-batches-py/data_batch_1: no 'data' entry" in lines["linear_cifar10"]  # the file, named
    assert lines["paper"] == "paper: 1 found, 8 missing, 4 unreadable"  # mit67 ... cars: absent here
    # run_all runs the same check first: nothing is started for them, each gets its record and reason
    ckpt = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    shutil.rmtree(root / "flowers102")  # no task left to start: the check decides every one
    out = tmp_path / "runs"
    rc = run_all.main(["--suite", "paper", "--var", f"datasets={root}", "--tasks", "linear", "--ckpt", str(ckpt),
                       "--out", str(out), "--no-report"])
    records = {r["task_name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rc == 1 and len(records) == 13
    assert records["linear_pets"]["status"] == "failed" and "oxford-iiit-pet" in records["linear_pets"]["error"]
    assert records["linear_cifar100"]["status"] == "skipped" and "cifar-100-python" in records["linear_cifar100"]["error"]
    assert not (out / "r18" / "linear_pets" / "traceback.txt").exists()  # never started
    assert json.loads((out / "r18" / "linear_pets" / "record.json").read_text())["error"] == records["linear_pets"]["error"]


def test_class_avg_interval_recomputes_the_class_average_per_draw():
    labels = np.array([0] * 8 + [1] * 2 + [2] * 5)
    correct = np.array([1] * 8 + [0, 1] + [1, 0, 0, 1, 1], dtype=float)
    run = SimpleNamespace(metrics={}, extra={}, item_scores={})
    record_class_avg(run, "class_avg", correct, labels, n_boot=500)
    per_class = [1.0, 0.5, 0.6]
    assert run.metrics["class_avg"] == pytest.approx(100 * np.mean(per_class))
    assert run.item_scores["class_avg"].mean() == pytest.approx(np.mean(per_class))  # pairs item by item
    # reference: a plain loop over draws, same generator
    rng = np.random.default_rng(0)
    draws = []
    for idx in rng.integers(labels.size, size=(500, labels.size)):
        draws.append(np.mean([correct[idx][labels[idx] == c].mean() for c in np.unique(labels[idx])]))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    iv = run.extra["intervals"]["class_avg"]
    assert (iv["lo"], iv["hi"]) == pytest.approx((100 * lo, 100 * hi))
    assert iv["lo"] < run.metrics["class_avg"] < iv["hi"]


def _record(name: str, value: float, tmp: Path) -> dict:
    return {"name": name, "task_name": "linear_pets", "task": "linear", "dataset": "pets", "scale": "paper",
            "status": "ok", "task_config_hash": "h", "headline": "class_avg",
            "metrics": {"top1": value + 5, "class_avg": value}, "checkpoint": {"path": str(tmp / f"{name}.pth")},
            "intervals": {"class_avg": {"lo": value - 2, "hi": value + 2}}}


def test_headline_is_the_records_registry_metric_and_ties_are_not_bold(tmp_path):
    from reports import tables
    from reports.results import headline_metric, load_results

    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(_record(n, v, tmp_path)) + "\n" for n, v in (("a", 70.0), ("b", 60.0))))
    res = load_results(results)
    assert headline_metric(res, "linear_pets") == "class_avg"
    summary = tables.summary_table(res, "b")
    assert summary.columns == [("linear_pets", "class_avg")]
    md = tables.to_markdown(summary)
    assert "**70.0** [68.0, 72.0]" in md and "(+10.0" in md
    results.write_text("".join(json.dumps(_record(n, 0.0, tmp_path)) + "\n" for n in ("a", "b")))
    assert "**" not in tables.to_markdown(tables.summary_table(load_results(results), None))


def test_reports_build_reads_single_task_folders(tmp_path):
    from reports import build

    runs = tmp_path / "runs"
    for name, value in (("lin/pets", 70.0), ("lin2/pets", 60.0)):
        (runs / name).mkdir(parents=True)
        record = dict(_record(name.split("/")[0], value, tmp_path), task_name=None, name=None, predictions="predictions.npz")
        (runs / name / "record.json").write_text(json.dumps(record))
        np.savez(runs / name / "predictions.npz", class_avg=np.full(6, value / 100))
    assert build.main(["--results", str(runs), "--out", str(tmp_path / "report")]) == 0
    index = (tmp_path / "report" / "index.md").read_text()
    assert index.startswith("# Transfer report\n") and "linear_pets" in index
    assert index.count("1 seed per checkpoint") == 1  # the seeds note once


def test_a_rerun_removes_what_the_earlier_attempt_left(tmp_path):
    with TaskRun("knn", "d", "demo", tmp_path, None) as run:
        raise ValueError("first attempt")
    assert run.record["status"] == "failed" and (tmp_path / "traceback.txt").is_file()
    (tmp_path / "log.txt.rank1").write_text("old")
    with TaskRun("knn", "d", "demo", tmp_path, None, force=True) as run:
        run.metrics["top1_k20"] = 1.0
    assert run.record["status"] == "ok"
    assert not (tmp_path / "traceback.txt").exists() and not (tmp_path / "log.txt.rank1").exists()


def test_one_line_cuts_between_words_and_moco_names():
    from transfer.orchestrate import console
    from transfer.orchestrate.resolve import default_name

    assert console.clip("checkpoint has no recorded pretraining resolution", 30) == "checkpoint has no recorded…"
    assert console.clip("short", 30) == "short"
    assert default_name(Path("/x/moco_v2_800ep_pretrain.pth.tar")) == "moco_v2_800ep_pretrain"
    assert default_name(Path("/x/r50.pth")) == "r50"


def test_single_task_protocol_follows_its_config_or_dataset(tmp_path, monkeypatch, capsys):
    from transfer.detection.runner import parse_args
    from transfer.probes.cli import resolve_defaults
    from transfer.probes.linear import build_parser

    monkeypatch.chdir(tmp_path)  # outside the clone: project configs still found by name
    base = ["--ckpt", "x.pth", "--out", "o"]
    args = parse_args([*base, "--config", "detectron_configs/coco_R_50_FPN_1x.yaml"])
    assert args.scale == "paper" and Path(args.config) == REPO / "detectron_configs" / "coco_R_50_FPN_1x.yaml"
    assert parse_args([*base, "--config", "detectron_configs/demo_synthetic_R_18_FPN.yaml"]).scale == "demo"
    assert parse_args(base).scale == "demo"
    smoke = parse_args([*base, "--config", "detectron_configs/voc_R_50_C4_24k.yaml", "--smoke", "--seeds", "3", "4"])
    assert smoke.seeds == [3] and "TEST.PRECISE_BN.ENABLED" in smoke.opts
    probe = build_parser()
    assert resolve_defaults(probe.parse_args([*base, "--data", "d", "--dataset", "pets"])).scale == "paper"
    plain = resolve_defaults(probe.parse_args([*base, "--data", "d"]))
    assert plain.scale == "demo" and Path(plain.cache_dir).is_relative_to(os.environ["XDG_CACHE_HOME"])
    if not torch.cuda.is_available():  # detectron2 on CPU processes: refused in one line, before anything
        with pytest.raises(SystemExit) as stop:
            parse_args([*base, "--config", "detectron_configs/coco_R_50_FPN_1x.yaml", "--num-gpus", "2"])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and len(err.splitlines()) == 1 and "--num-gpus 2" in err
    # segmentation: a config that is nowhere is one line, before torchrun starts 8 processes
    from transfer.segmentation.runner import main as seg_main

    assert seg_main([*base, "--config", "transfer/mmseg_configs/nope.py", "--num-gpus", "8"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written here


def _sh(cmd: str, cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    import shlex

    return subprocess.run(shlex.split(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_readme_commands_from_another_directory(tmp_path, monkeypatch):
    """The docs' commands as written, from outside the clone, on checkpoints without a run config."""
    root = tmp_path / "data"
    for name in ("pets", "fc100"):
        probe_standins.BUILDERS[name](root / name)
    probe_standins.BUILDERS["cifar100"](root / "cifar100")
    (root / "cifar100" / "cifar-100-python" / "train").write_bytes(b"not a pickle")  # must be caught
    r18, moco = tmp_path / "ckpt" / "r18.pth", tmp_path / "ckpt" / "moco_v2_800ep_pretrain.pth.tar"
    r18.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}},
               moco)  # MoCo's wrapping (refused by --num-gpus 8 on a CPU before it is read)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp_path / "xdg"))

    check = _sh(f"{sys.executable} -m transfer.run_all --suite paper --check --var datasets={root} "
                "--tasks linear fewshot", cwd, env)
    verdicts = {line.split(":")[0]: line.split(": ", 1)[1] for line in check.stdout.splitlines()}
    assert check.returncode == 1, check.stdout + check.stderr
    assert verdicts["linear_pets"].startswith("found") and verdicts["fewshot_fc100"].startswith("found")
    assert verdicts["linear_cifar100"].startswith(f"unreadable {root}/cifar100 (")
    assert verdicts["linear_food101"] == f"missing {root}/food101; expected {root}/food101/food-101/ (images/, meta/)"
    shutil.rmtree(root / "cifar100")

    smoke = _sh(f"{sys.executable} -m transfer.run_all --suite paper --smoke --var datasets={root} --ckpt {r18} "
                "--out runs/smoke --tasks linear fewshot", cwd, env)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    records = {r["task_name"]: r for r in map(json.loads, (cwd / "runs/smoke/results.jsonl").read_text().splitlines())}
    assert {n for n, r in records.items() if r["status"] == "ok"} == {"linear_pets", "fewshot_fc100"}
    assert not [r for r in records.values() if r["status"] == "failed"]
    pets = records["linear_pets"]
    assert pets["scale"] == "smoke" and pets["headline"] == "class_avg" and "class_avg" in pets["intervals"]
    assert json.loads((cwd / "runs/smoke/r18/linear_pets/record.json").read_text())["scale"] == "smoke"
    report = (cwd / "runs/smoke/report/tables.md").read_text()  # a labelled column, never a paper number
    assert "## linear_pets [smoke] (linear, pets)" in report and "| Pets [smoke] |" in report

    if not torch.cuda.is_available():  # the README's detection command on a CPU: one line, before anything starts
        det = _sh(f"{sys.executable} -m transfer.detection --ckpt {moco} --config "
                  "detectron_configs/coco_R_50_FPN_1x.yaml --out runs/det/coco_fpn --num-gpus 8", cwd, env)
        assert det.returncode == 2 and len(det.stderr.strip().splitlines()) == 1, det.stderr
    # the probes' commands as the docs write them, in this process (the same argv, cwd and cache folder):
    # detection and segmentation --smoke from another directory run in tests/transfer/orchestrate/test_paper_suite.py
    from reports.build import main as build_main
    from transfer.probes import fewshot, knn, linear

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    for main, argv in ((fewshot.main, f"--ckpt {r18} --data {root}/fc100 --dataset fc100 --out runs/fs/fc100"),
                       (linear.main, f"--ckpt {r18} --data {root}/pets --dataset pets --out runs/lin/pets"),
                       (knn.main, f"--ckpt {r18} --data {root}/pets --dataset pets --train-split trainval "
                                  "--out runs/knn/pets")):
        assert main([*argv.split(), "--image-size", "224", "--normalize", "imagenet", "--no-progress"]) == 0, argv
    rec = {p.parent.relative_to(cwd / "runs").as_posix(): json.loads(p.read_text())
           for p in (cwd / "runs").glob("*/*/record.json")}
    assert {rec[k]["scale"] for k in ("fs/fc100", "lin/pets", "knn/pets")} == {"paper"}  # registry dataset: paper
    assert rec["lin/pets"]["headline"] == "class_avg" and rec["knn/pets"]["headline"] == "class_avg_k20"
    assert set(rec["knn/pets"]["metrics"]) >= {"top1_k10", "top1_k20", "top1_k100", "top1_k200"}
    assert rec["knn/pets"]["preprocess"]["resize"] == 256  # the paper's 256 -> 224
    assert build_main(["--results", "runs", "--out", "reports/mine"]) == 0
    index = (cwd / "reports/mine/index.md").read_text()
    assert "linear_pets" in index and "knn_pets" in index
    assert sorted(p.name for p in cwd.iterdir()) == ["reports", "runs"]  # nothing else in the working directory
