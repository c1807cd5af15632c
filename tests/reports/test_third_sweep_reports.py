"""The third fault sweep (issue 36): reports read and write only inside their own tree, read records
streaming and defensively; resumes never hang and restore the whole model or refuse. Real FIFOs, real
symlinks, a real planted manifest, real deep and huge JSON files, a real payload pickle, a real Runner
file written by mmengine's own Runner."""
from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from plumbing.provenance import file_sha256
from reports import build, quote
from test_reports import _fixture_with_runs

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path) -> Path:
    """A git-like tree: the quote's confinement root (a ``.git`` folder marks it, as in a clone)."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "reports").mkdir()
    (root / "reports" / "index.md").write_text("## Summary\nthe numbers\n")
    return root


def _doc(root: Path, source: str, newline: str = "\n") -> Path:
    doc = root / "docs" / "D.md"
    doc.write_bytes(newline.join(["# Doc", f"<!-- quote: {source} -->", "stale", "<!-- /quote -->", ""]).encode())
    return doc


@pytest.mark.parametrize("source", ["../leak.md", "../../../../../../../etc/hostname", "link.md"])
def test_quote_sources_outside_the_tree_are_refused(tmp_path, capsys, source):
    root = _tree(tmp_path)
    (root.parent / "leak.md").write_text("secret outside the tree\n")
    (root / "docs" / "link.md").symlink_to("/etc/passwd")
    doc = _doc(root, source.replace("../leak.md", "../../leak.md"))
    before = doc.read_bytes()
    for check in ([], ["--check"]):
        assert quote.main([*check, str(doc)]) == 2
        err = capsys.readouterr().err.strip()
        assert "outside the document's tree" in err and err.count("\n") == 0, err
    assert doc.read_bytes() == before and b"root:" not in doc.read_bytes()


def test_a_fifo_quote_source_or_document_never_hangs(tmp_path, capsys, no_hang):
    root = _tree(tmp_path)
    os.mkfifo(root / "reports" / "fifo.md")
    doc = _doc(root, "../reports/fifo.md")
    for check in ([], ["--check"]):
        assert quote.main([*check, str(doc)]) == 2
        assert "is a FIFO" in capsys.readouterr().err
    os.mkfifo(root / "docs" / "F.md")
    assert quote.main([str(root / "docs" / "F.md")]) == 2 and "is a FIFO" in capsys.readouterr().err


def test_quote_keeps_crlf_and_a_self_quoting_document_reaches_a_fixed_point(tmp_path, capsys):
    root = _tree(tmp_path)
    doc = _doc(root, "../reports/index.md#Summary", newline="\r\n")
    assert quote.main([str(doc)]) == 0
    text = doc.read_bytes()
    assert b"> the numbers\r\n" in text and b"\n" not in text.replace(b"\r\n", b"")
    assert quote.main(["--check", str(doc)]) == 0
    selfish = root / "docs" / "S.md"
    selfish.write_text("# S\n\n## Part\nsome text\n<!-- quote: S.md -->\n<!-- /quote -->\n")
    sizes = []
    for _ in range(3):
        assert quote.main([str(selfish)]) == 0
        sizes.append(selfish.stat().st_size)
    assert sizes[0] == sizes[1] == sizes[2] and quote.main(["--check", str(selfish)]) == 0
    capsys.readouterr()


def test_build_deletes_only_files_whose_hash_it_recorded(tmp_path):
    """Item 8: a planted manifest naming a user's file (by name, or with a forged hash) deletes nothing."""
    res = _fixture_with_runs(tmp_path)
    out = tmp_path / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build.build(res, out, baseline="vicreg", command="pytest")
    ours = json.loads((out / build.MANIFEST).read_text())
    assert all(len(digest) == 64 for digest in ours.values())
    (out / "precious.txt").write_text("a user's file")
    for planted in ({**ours, "precious.txt": None}, {**ours, "precious.txt": "0" * 64}, [*ours, "precious.txt"]):
        (out / build.MANIFEST).write_text(json.dumps(planted))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build.build(res, out, baseline="vicreg", command="pytest")
        assert (out / "precious.txt").read_text() == "a user's file"
        assert any("precious.txt: not removed" in str(w.message) for w in caught)
    # its own stale file (recorded hash, unchanged) still goes
    (out / "stale.png").write_bytes(b"old figure")
    manifest = json.loads((out / build.MANIFEST).read_text())
    manifest["stale.png"] = file_sha256(out / "stale.png")
    (out / build.MANIFEST).write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build.build(res, out, baseline="vicreg", command="pytest")
    assert not (out / "stale.png").exists()


def test_reports_read_deep_and_huge_json_and_bad_names_in_one_line(tmp_path):
    """JSON nested 100,000 deep (RecursionError), a name with a NUL byte and a 50 MB name: the line or
    record is skipped with a warning naming it (truncated), the report is built from the rest."""
    res = _fixture_with_runs(tmp_path)
    good = [ln for ln in (res / "results.jsonl").read_text().splitlines() if ln.startswith("{") and ln.endswith("}")]
    nul, big = json.loads(good[0]), json.loads(good[0])
    nul["task_name"], big["name"] = "knn\0x", "x" * (50 << 20)
    planted = ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000, json.dumps(nul),
               json.dumps(big)]
    (res / "results.jsonl").write_text("\n".join([*planted, *good]) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build.build(res, tmp_path / "report", baseline="vicreg", command="pytest")
    messages = [str(w.message) for w in caught]
    assert index.is_file()
    assert sum("nested too deeply" in m for m in messages) == 2, messages
    assert any("field 'task_name'" in m and "NUL byte" in m for m in messages)
    assert any("field 'name' is 52,428,800 characters long" in m for m in messages)
    assert max(len(m) for m in messages) < 1000


def test_a_million_records_are_read_streaming(tmp_path):
    """1,000,000 records: only the latest per cell is kept (latest_records), the report equals the one
    built from the records it shows. Measured peak memory: docs/RELIABILITY.md (third sweep)."""
    from reports.results import load_results

    res = _fixture_with_runs(tmp_path)
    good = [ln for ln in (res / "results.jsonl").read_text().splitlines() if ln.startswith("{") and ln.endswith("}")]
    expected = load_results(res)
    with open(res / "results.jsonl", "w") as f:
        for i in range(1_000_000 // len(good)):
            f.write("\n".join(good) + "\n")
    results = load_results(res)
    assert results.names == expected.names and results.tasks == expected.tasks
    assert {k: r["metrics"] for k, r in results.records.items()} == {k: r["metrics"] for k, r in expected.records.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=80), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "task", "task_name", "metrics", "checkpoint", "seed_index", "status", "x"]), inner,
        max_size=5), max_leaves=15).map(lambda v: json.dumps(v).encode())), max_size=8))
def test_any_results_file_is_read_or_its_lines_skipped(tmp_path_factory, lines):
    """Property: whatever lines results.jsonl holds, the reader returns Results or warns; never a traceback."""
    from reports.results import load_results

    folder = tmp_path_factory.mktemp("res")
    (folder / "results.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = load_results(folder)
    assert isinstance(results.names, list)


def test_a_payload_mast_state_is_one_line_and_never_runs(tmp_path, capsys):
    """reports/mast_plots.py on a pickle that names code: refused in one line, nothing runs."""
    from reports.mast_plots import StateError, load_state

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    path = tmp_path / "mast_state.pth"
    torch.save({"mask_logits": Payload()}, path)
    with pytest.raises(StateError) as err:
        load_state(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value) and not (tmp_path / "PWNED").exists()
    res = _fixture_with_runs(tmp_path)
    torch.save({"mask_logits": Payload()}, tmp_path / "pretrain/demo_mast/mast_state.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert build.main(["--results", str(res), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "MAST state" in err and not (tmp_path / "PWNED").exists(), err


def test_study_report_refuses_runs_that_are_no_folder_and_reads_a_list_augment(tmp_path, capsys):
    from reports import study_report
    from reports.study_runs import run_config, settings_line

    assert study_report.main(["--results", str(tmp_path), "--runs", "/etc/passwd", "--out", str(tmp_path / "o")]) == 2
    assert "--runs /etc/passwd: not a folder" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    config.write_text("method: mast\naugment: [crop, flip]\noptim: {batch_size: 8}\n")
    with pytest.warns(UserWarning, match="section 'augment' is a list"):
        facts = {"config": run_config(config)}
    assert "batch 8" in settings_line({"r": facts})


def test_a_run_config_whose_augment_is_a_list_does_not_stop_a_probe(tmp_path):
    from transfer.backbones.resnet.load import build_resnet
    from transfer.backbones import load
    from transfer.probes.features import pretrain_resolution

    run = tmp_path / "run"
    run.mkdir()
    torch.save(build_resnet("resnet18").state_dict(), run / "backbone.pth")
    (run / "config.yaml").write_text("method: vicreg\naugment: [crop, flip]\n")
    assert pretrain_resolution(load(run / "backbone.pth")[1]) is None


# ---- resumes -------------------------------------------------------------------------------------------------------


def test_detection_resume_on_a_fifo_last_checkpoint_is_one_line_not_a_hang(tmp_path, synthetic_root, no_hang):
    from transfer.backbones.resnet.load import build_resnet
    from transfer.detection import main
    from transfer.detection.resume_checkpoint import checkpoint_to_resume
    from transfer.records import TaskFailed

    out = tmp_path / "det"
    (out / "seed_0").mkdir(parents=True)
    os.mkfifo(out / "seed_0" / "last_checkpoint")
    with pytest.raises(TaskFailed, match="is a FIFO"):
        checkpoint_to_resume(out / "seed_0")
    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    code = main(["--ckpt", str(tmp_path / "r18.pth"), "--config",
                 str(REPO / "detectron_configs" / "demo_synthetic_R_18_FPN.yaml"), "--out", str(out),
                 "--data-root", str(synthetic_root), "--resume"])
    record = json.loads((out / "record.json").read_text())
    assert code != 0 and record["status"] == "failed" and "is a FIFO" in record["error"], record["error"]


def test_run_all_resume_point_never_opens_a_fifo(tmp_path, no_hang):
    from transfer.orchestrate.task_resume import resume_point

    out = tmp_path / "task"
    (out / "seed_0").mkdir(parents=True)
    os.mkfifo(out / "seed_0" / "last_checkpoint")
    (out / "record.prev.json").write_text(json.dumps({"status": "failed", "cluster_state": "PREEMPTED",
                                                      "task_config_hash": "h", "ckpt_sha256": "s",
                                                      "backbone_option": None}))
    assert resume_point(out, "detection", "h", "s", None, False) is None
    (out / "record.prev.json").unlink()
    os.mkfifo(out / "record.prev.json")
    assert resume_point(out, "detection", "h", "s", None, False) is None


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["empty", "partial"])
def test_segmentation_resume_from_an_empty_or_partial_state_dict_refuses(tmp_path, synthetic_root, keep, no_hang):
    """Item 2: mmengine resumes non-strictly; a Runner file (written by mmengine's own Runner) whose
    state_dict was emptied or halved trained nothing and recorded ok (mIoU of the untrained head)."""
    from test_segmentation import TINY_RUN, _save_resnet
    from transfer.records import EXIT_FAILED
    from transfer.backbones.read import read_torch_file, runner_admits
    from transfer.segmentation.runner import main

    signal.alarm(0)  # training is slow on a shared CPU: no 60 s limit here (no FIFO in this test)
    _save_resnet(tmp_path / "r18.pth")
    out = tmp_path / "seg"
    base = ["--ckpt", str(tmp_path / "r18.pth"), "--out", str(out), "--data-root", str(synthetic_root),
            "--cfg-options", *TINY_RUN, "default_hooks.checkpoint.interval=2"]
    assert main(base) == 0
    saved = out / "work" / "iter_2.pth"
    obj = read_torch_file(saved, admit=runner_admits())
    keys = list(obj["state_dict"])
    obj["state_dict"] = {} if keep == "empty" else {k: obj["state_dict"][k] for k in keys[: len(keys) // 2]}
    torch.save(obj, saved)
    code = main(base + ["train_cfg.max_iters=3", "--resume"])
    record = json.loads((out / "record.json").read_text())
    assert code == EXIT_FAILED and record["status"] == "failed" and not record["metrics"], record
    assert "restores" in record["error"] and "of the model's" in record["error"] and "\n" not in record["error"]
