"""docs/COMPUTE.md is what reports.compute writes, every estimate names its source, and the work it counts is
the work the engines' own config loaders read from the project's configs."""

from __future__ import annotations

import math

import pytest
import yaml

from reports import compute


def test_committed_doc_is_the_generated_text():
    assert compute.DOC.read_text() == compute.render(*compute.load()), \
        "docs/COMPUTE.md is stale: run `python -m reports.compute`"


def test_check_flag_tells_a_stale_doc(tmp_path):
    out = tmp_path / "COMPUTE.md"
    assert compute.main(["--out", str(out)]) == 0
    assert compute.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("V100", "H100", 1))
    assert compute.main(["--check", "--out", str(out)]) == 1


def test_every_estimate_names_its_source_and_gpu():
    data, rows, probes = compute.load()
    assert probes, "the suite's cached-feature probes are counted by the 'probes' row"
    for row in rows:
        spec = row.job_spec
        if row.hours is None:
            assert spec["figure"]["kind"] == "none" and "no published figure" in spec["note"], row.job
            continue
        src = data["sources"][spec["source"]]
        assert src["gpu"] and src["says"], row.job
        assert ("repo" in src and "path" in src and len(src["commit"]) == 40) or "paper" in src, row.job
        assert spec["row"] and spec["match"] in ("same", "close", "proxy"), row.job
        assert row.hours > 0, row.job


def test_a_suite_task_without_a_row_is_one_line(tmp_path):
    suite = yaml.safe_load(compute.SUITE.read_text())
    suite["tasks"].append({"name": "new_task", "task": "detection", "args": {}})
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ValueError, match="no job row: new_task"):
        compute.load(suite=path)


def test_an_unknown_source_is_one_line(tmp_path):
    data = yaml.safe_load(compute.SOURCES.read_text())
    data["jobs"][0]["source"] = "nowhere"
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=f"job {data['jobs'][0]['job']}: source 'nowhere'"):
        compute.load(sources=path)


def test_classification_rows_read_the_configs_the_runner_runs():
    from transfer.classification.runner import PROTOCOLS
    data, rows, _ = compute.load()
    tasks = {t["name"]: t for t in yaml.safe_load(compute.SUITE.read_text())["tasks"]}
    for row in rows:
        task = tasks.get(row.job)
        if task and task["task"] == "classification":
            assert compute.REPO / row.job_spec["config"] == PROTOCOLS[task["args"]["protocol"]], row.job


def test_detection_work_is_what_detectron2_reads():
    """The _BASE_ merge and the LazyConfig lines agree with detectron2's own loaders."""
    pytest.importorskip("detectron2")
    from detectron2.config import LazyConfig, get_cfg
    tasks = [t for t in yaml.safe_load(compute.SUITE.read_text())["tasks"] if t["task"] == "detection"]
    assert tasks
    for task in tasks:
        path = compute.REPO / task["args"]["config"]
        work = compute.detectron2_work(path, 1)
        if path.suffix == ".py":
            cfg = LazyConfig.load(str(path))
            expected = (cfg.train.max_iter, cfg.dataloader.train.total_batch_size)
        else:
            cfg = get_cfg()
            cfg.set_new_allowed(True)  # the project's head adds no keys, but allow extras all the same
            cfg.merge_from_file(str(path))
            expected = (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH)
        assert (work.iterations, work.batch) == expected, path.name


def test_gpu_hours_formulas():
    # s/iter at the published batch: iterations x s/iter x GPUs; a half-size crop halves it
    fig = {"kind": "s_per_iter", "value": 0.5, "gpus": 8, "batch": 16}
    work = compute.Work("w", iterations=3600, batch=16, runs=2)
    assert compute.gpu_hours(fig, work) == pytest.approx(2 * 3600 * 0.5 * 8 / 3600)
    half = compute.Work("w", iterations=3600, batch=16, pixels=512 * 512)
    assert compute.gpu_hours({**fig, "pixels": [1024, 512]}, half) == pytest.approx(0.5 * 3600 * 0.5 * 8 / 3600)
    # a smaller batch than published: fewer GPU-seconds per iteration
    assert compute.gpu_hours(fig, compute.Work("w", iterations=3600, batch=8)) == pytest.approx(2.0)
    thr = {"kind": "img_per_s", "value": 100, "val_img_per_s": 400}
    assert compute.gpu_hours(thr, compute.Work("w", images=360000, val_images=1440000)) == pytest.approx(2.0)
    assert compute.gpu_hours({"kind": "hours_per_epoch", "value": 0.1, "gpus": 4},
                             compute.Work("w", epochs=10)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="figure kind 'fps'"):
        compute.gpu_hours({"kind": "fps"}, work)


def test_classification_work_counts_the_shipped_subset():
    data = yaml.safe_load(compute.SOURCES.read_text())
    work = compute.classification_work(
        compute.REPO / "transfer/mmpretrain_configs/resnet50_semisup_1pct_imagenet_vicreg.py", data["datasets"])
    listed = len((compute.REPO / "transfer/imagenet_subsets/1percent.txt").read_text().split())
    assert listed == 12811 and work.images == 20 * listed
    assert work.iterations == 20 * math.ceil(listed / 256)


def test_a_seed_group_counts_every_fine_tuning_seed():
    """The paper suite's semi-supervised tasks are groups of seeds: the estimate counts each run."""
    data, rows, _ = compute.load()
    tasks = {t["name"]: t for t in yaml.safe_load(compute.SUITE.read_text())["tasks"]}
    row = next(r for r in rows if r.job == "semisup_imagenet_1pct")
    seeds = len(tasks["semisup_imagenet_1pct"]["args"]["seeds"])
    one = compute.classification_work(compute.REPO / row.job_spec["config"], data["datasets"])
    group = compute.classification_work(compute.REPO / row.job_spec["config"], data["datasets"], seeds)
    assert seeds == 3 and group.runs == 3
    assert compute.gpu_hours(row.job_spec["figure"], group) == pytest.approx(3 * compute.gpu_hours(row.job_spec["figure"], one))
