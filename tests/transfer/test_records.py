"""transfer/records.py: the one typed record (Record) that tasks write, run_all completes and reports read.

PROTOCOLS.md's field table is checked against the class; records written before the class existed
(tests/data/results.jsonl, written by the earlier dict-based code) still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.results import load_results, well_formed
from transfer.records import Record, RecordError, TaskRun, complete, fields_table, new_record, record_problem

REPO = Path(__file__).resolve().parents[2]
OLD = REPO / "tests" / "data" / "results.jsonl"  # records as the code before Record wrote them


def _old_records() -> list[dict]:
    out = []
    for line in OLD.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the fixture holds a corrupt line on purpose
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def test_protocols_field_table_is_the_record_class():
    doc = (REPO / "docs" / "PROTOCOLS.md").read_text()
    start, end = "<!-- record fields: generated from transfer.records.Record -->\n", "\n<!-- end of record fields -->"
    assert start in doc and end in doc, "docs/PROTOCOLS.md lost its generated record table markers"
    table = doc.split(start, 1)[1].split(end, 1)[0]
    assert table == fields_table(), ("docs/PROTOCOLS.md 'Results' differs from transfer.records.Record: paste "
                                     "python -c 'from transfer.records import fields_table; print(fields_table())'")


def test_the_table_names_every_field_with_its_writer():
    rows = [r for r in fields_table().splitlines()[2:]]
    assert [r.split("`")[1] for r in rows] == [n for n in Record.__dataclass_fields__ if n != "more"]
    assert "| `predictions` | `str or None` | task, when it has it |" in fields_table()


def test_old_records_load_unchanged():
    records = _old_records()
    assert len(records) >= 10 and any(r.get("status") == "failed" for r in records)
    for record in records:
        assert record_problem(record) is None and well_formed(record, OLD)
        loaded = Record.from_json(record)
        assert loaded.task == record["task"] and loaded.metrics == record["metrics"]
        assert loaded.wall_s is None and loaded.seed_index is None  # fields this old record lacks: their default
        again = loaded.to_json()
        assert {k: again[k] for k in record} == record  # every value read back as written
    assert load_results(OLD).names  # the report reads them


def test_a_key_the_class_does_not_know_is_kept():
    record = dict(_old_records()[0], from_the_future={"x": 1})
    loaded = Record.from_json(record)
    assert loaded.more == {"from_the_future": {"x": 1}} and loaded.to_json()["from_the_future"] == {"x": 1}


@pytest.mark.parametrize("key, value, said", [
    ("metrics", {"top1": [1.0, 2.0]}, "metric 'top1' is a list, not a number"),
    ("metrics_std", {"top1": "nan"}, "metric 'top1' is a str, not a number"),
    ("checkpoint", "mast.pth", "'checkpoint' is a str"),
    ("exit_code", True, "'exit_code' is a bool"),
    ("seeds", [0, "1"], "'seeds' is a list"),
    ("overrides", "SOLVER.MAX_ITER 5", "'overrides' is a str"),
])
def test_a_field_of_the_wrong_type_is_named(key, value, said):
    record = dict(_old_records()[0], **{key: value})
    assert record_problem(record) == said
    with pytest.raises(RecordError, match=said):
        Record.from_json(record)
    with pytest.warns(UserWarning, match=said):
        assert not well_formed(record, OLD)


def test_a_task_record_holds_no_run_all_field():
    record = new_record("knn", "synthetic/shape", "demo", None, None, seeds=[0])
    assert list(record)[:3] == ["task", "dataset", "scale"] and record["status"] == "running"
    assert not {"name", "task_name", "wall_s", "cluster_state"} & set(record)


def test_taskrun_refuses_to_call_a_record_of_the_wrong_shape_ok(tmp_path):
    with TaskRun(task="knn", dataset="d", scale="demo", out_dir=tmp_path, ckpt_info=None) as run:
        run.metrics["top1"] = 50.0
        run.extra["predictions"] = ["not", "a", "path"]
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert on_disk["status"] == "failed" and "'predictions' is a list" in on_disk["error"]


def _known(**over) -> Record:
    given = dict(task="knn", dataset="d", scale="demo", checkpoint={"path": "/c.pth", "sha256": "ab"}, method="mast",
                 name="mast", task_name="knn_d", task_config_hash="h", ckpt_sha256="ab", exit_code=0, wall_s=3.5,
                 seed_index=0)
    return Record(**{**given, **over})


def test_complete_adds_run_alls_fields_and_rewrites_the_task_record(tmp_path):
    out = tmp_path / "mast" / "knn_d"
    with TaskRun(task="knn", dataset="d", scale="demo", out_dir=out, ckpt_info=None) as run:
        run.metrics["top1"] = 50.0
        run.extra["predictions"] = "predictions.npz"
    record = complete(out, _known(), root=tmp_path)
    assert record["status"] == "ok" and record["metrics"] == {"top1": 50.0}
    assert record["name"] == "mast" and record["wall_s"] == 3.5 and record["command"] is None  # always written
    assert "cluster_state" not in record and "smoke" not in record  # written only when set
    assert record["checkpoint"] == {"path": "/c.pth", "sha256": "ab"}  # the task read none: run_all's
    assert record["predictions"] == "mast/knn_d/predictions.npz"  # relative to results.jsonl's folder
    on_disk = json.loads((out / "record.json").read_text())
    assert on_disk == dict(record, predictions="predictions.npz")  # relative to its own folder there
    assert record_problem(record) is None


def test_complete_without_a_record_or_ended_by_the_cluster_is_failed(tmp_path):
    (tmp_path / "run_all.log").write_text("Traceback\nMemoryError: boom\n")
    record = complete(tmp_path, _known(exit_code=-9))
    assert record["status"] == "failed" and record["error"].startswith("exit code -9 without a record; log tail:")
    assert "MemoryError: boom" in record["error"] and record["task_name"] == "knn_d" and record["code_version"]
    ended = complete(tmp_path, _known(exit_code=None, cluster_state="TIMEOUT", slurm_job_id="42", timed_out=False),
                     ended="ended by the cluster: TIMEOUT (SLURM job 42)")
    assert ended["status"] == "failed" and ended["error"].startswith("ended by the cluster: TIMEOUT")
    assert ended["cluster_state"] == "TIMEOUT" and ended["slurm_job_id"] == "42" and ended["timed_out"] is False
    smoke = complete(tmp_path, _known(scale="smoke", smoke=True))
    assert smoke["scale"] == "smoke" and smoke["smoke"] is True and smoke["overrides"] == []


def test_a_task_run_all_did_not_start_is_recorded_with_its_reason(tmp_path):
    (tmp_path / "record.json").write_text(json.dumps(new_record("knn", "d", "demo", None, None)))  # an earlier attempt
    record = complete(tmp_path, _known(exit_code=3), verdict=("skipped", "dataset check: no data/shape"))
    assert (record["status"], record["error"]) == ("skipped", "dataset check: no data/shape")
    assert json.loads((tmp_path / "record.json").read_text()) == record and record_problem(record) is None
