"""benchmarks/mechanism.py at a tiny size: the ground truth is what the benchmark says it is, its JSON and
report have the promised shape, each matched control's λ comes from its own arm's run (issues 25, 35), and
its command line refuses bad values in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FACTORS = ["strong", "mild", "nuisance"]
ARMS = ["vicreg", "mast", "mast_tied", "matched_mast", "matched_mast_tied", "matched_mean_mast"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("mechanism")
    cmd = [sys.executable, "benchmarks/mechanism.py", "--seeds", "2", "--steps", "30", "--train-size", "512",
           "--test-size", "256", "--heldout-pairs", "2048", "--embed-dim", "64", "--jobs", "1", "--out", str(out),
           "--arms", ",".join(ARMS)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), out


def _interval(x: dict) -> bool:
    return set(x) == {"value", "lo", "hi", "n_seeds"} and x["lo"] <= x["value"] <= x["hi"]


@pytest.mark.slow  # the tiny benchmark: ~25 s of CPU, shared with the next test
def test_known_answer_reads_one_and_random_masks_read_chance(tiny):
    res, _ = tiny
    for arm in ("mast", "mast_tied"):
        e = res["arms"][arm]
        assert all(e["D_known"][f]["value"] > 0.8 for f in FACTORS), e["D_known"]
        assert all(abs(e["D_random"][f]["value"]) < 0.35 for f in FACTORS), e["D_random"]
    assert res["verdict"]["ground_truth_ok"] is True


@pytest.mark.slow
def test_json_schema_and_report(tiny):
    res, out = tiny
    assert res["factors"] == FACTORS and list(res["arms"]) == ARMS
    for arm, e in res["arms"].items():
        assert _interval(e["content_acc"]) and e["content_acc"]["n_seeds"] == 2
        assert all(_interval(e["r2"][f]) for f in FACTORS)
        masks = arm.startswith("mast")
        assert ("D" in e) == masks and ("var_share" in e) == masks and ("u_exponent" in e) == masks
        assert "rho_u_delta" not in e  # 1 by construction in this world: dropped (issue 35)
    assert all(v is None for v in res["arms"]["mast_tied"]["D"].values())  # a tied mask ranks nothing
    assert res["arms"]["mast_tied"]["cv_dims"]["value"] == pytest.approx(0.0, abs=1e-9)  # w constant over dims
    assert set(res["differences"]) == {"mast-vicreg", "mast-mast_tied", "mast-matched_mast", "mast-matched_mean_mast",
                                       "mast_tied-matched_mast_tied"}
    assert set(res["verdict"]) == {"a_per_dimension", "b_per_pair", "c_no_content_cost", "variant_per_dimension",
                                   "ground_truth_ok", "masks_differentiate"}
    assert res["verdict"]["variant_per_dimension"] is None  # its arms did not run
    assert res["time"]["wall_s"] > 0 and res["time"]["cpu_s"] > 0 and len(res["runs"]) == 2 * len(ARMS)
    assert res["interval_scheme"].startswith("seeds crossed with test items")  # a probe from this code: unmarked
    assert json.loads((out / "results.json").read_text()) == res
    text = (out / "index.md").read_text()
    assert "stated in the code before the run" in text and "| mast_tied |" in text
    assert (out / "mechanism.png").stat().st_size > 0


@pytest.mark.slow
def test_each_matched_control_reads_its_own_arms_run(tiny):
    res, _ = tiny
    runs = {(r["arm"], r["seed"]): r for r in res["runs"]}
    for seed in (0, 1):
        for control, source, stat in (("matched_mast", "mast", "w_eff"), ("matched_mast_tied", "mast_tied", "w_eff"),
                                      ("matched_mean_mast", "mast", "w_mean")):
            r = runs[(control, seed)]
            assert f"{source}_s{seed}/metrics.jsonl" in r["inv_coeff_source"] and f"mean {stat} " in r["inv_coeff_source"]
            assert 0 < r["inv_coeff"] < 25
        assert runs[("matched_mast", seed)]["inv_coeff"] != runs[("matched_mast_tied", seed)]["inv_coeff"]
        assert runs[("matched_mast", seed)]["inv_coeff"] < runs[("matched_mean_mast", seed)]["inv_coeff"]  # w_eff < mean w


def _parse_error(capsys, argv: list[str]) -> str:
    import mechanism

    with pytest.raises(SystemExit) as exc:
        mechanism.parse(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err  # one line, no usage block
    return err


@pytest.mark.parametrize("argv, message", [
    (["--arms", "matched_mast_tied,mast"], "add mast_tied"),
    (["--arms", "nope"], "--arms: expected names from"),
    (["--mask-coeff", "nan"], "--mask-coeff nan: expected a finite number >= 0"),
    (["--mask-init", "inf"], "--mask-init inf: expected a finite number"),
    (["--threads", "0"], "--threads 0: expected an integer >= 1"),
    (["--train-size", "0"], "--train-size 0: expected an integer >= 64"),
    (["--heldout-pairs", "-1"], "--heldout-pairs -1: expected an integer >= 64"),
    (["--out", "/proc/nope"], "--out /proc/nope: cannot write a report folder there"),
])
def test_bad_values_are_one_line(capsys, monkeypatch, argv, message):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    assert message in _parse_error(capsys, argv)


def test_out_never_replaces_what_it_did_not_write(capsys, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import mechanism

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert "exists and is not a folder" in _parse_error(capsys, ["--out", str(a_file)])
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.md").write_text("# my own notes\n")
    assert "index.md there was not written by this benchmark" in _parse_error(capsys, ["--out", str(tmp_path / "report")])
    assert (tmp_path / "report" / "index.md").read_text() == "# my own notes\n" and a_file.read_text() == "mine"
    assert mechanism.parse(["--out", str(tmp_path / "report"), "--no-report"]).out == tmp_path / "report"
    (tmp_path / "report" / "results.json").write_text("{}")
    assert "results.json there was not written" in _parse_error(capsys, ["--out", str(tmp_path / "report"), "--no-report"])


def test_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.mechanism", "--threads", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("--threads 0: expected an integer >= 1")
    assert "No module named" not in proc.stderr


def test_a_probe_from_before_the_crossed_bootstrap_is_marked(tmp_path):
    """A probe file written before group_interval crossed seeds with items (no ``interval_scheme``) has its R²
    interval marked and the note says why; one written by this code has neither."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import mechanism_report

    iv = {"value": 0.8, "lo": 0.7, "hi": 0.9, "n_seeds": 3}
    probe = {"factors": FACTORS, "command": "python benchmarks/mechanism.py --probe p", "settings": {"heldout_pairs": 8},
             "arms": {"mast": {"D": {f: iv for f in FACTORS}, "logit_spread": {f: iv for f in FACTORS}, "r2": {"strong": iv}}}}
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "old.json").write_text(json.dumps(probe))
    (tmp_path / "probes" / "new.json").write_text(json.dumps({**probe, "interval_scheme": mechanism_report.INTERVAL_SCHEME}))
    lines = mechanism_report.probe_lines(tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "`" in line}
    assert rows["old"].endswith(f"0.80 [0.70, 0.90]{mechanism_report.NESTED} |")
    assert rows["new"].endswith("0.80 [0.70, 0.90] |")
    assert lines[-1].startswith(f"{mechanism_report.NESTED}: a probe written before 2026-12-06")
    (tmp_path / "probes" / "old.json").unlink()
    assert not any("2026-12-06" in line for line in mechanism_report.probe_lines(tmp_path))
