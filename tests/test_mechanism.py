"""benchmarks/mechanism.py at a tiny size: the ground truth is what the benchmark says it is, and its
JSON and report have the promised shape (issue 25)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACTORS = ["strong", "mild", "nuisance"]
ARMS = ["vicreg", "vicreg_matched", "mast_unc_none", "mast"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("mechanism")
    cmd = [sys.executable, "benchmarks/mechanism.py", "--seeds", "2", "--steps", "30", "--train-size", "512",
           "--test-size", "256", "--heldout-pairs", "2048", "--embed-dim", "64", "--jobs", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), out


def _interval(x: dict) -> bool:
    return set(x) == {"value", "lo", "hi", "n_seeds"} and x["lo"] <= x["value"] <= x["hi"]


@pytest.mark.slow  # the tiny benchmark: ~25 s of CPU, shared with the next test
def test_known_answer_reads_one_and_random_masks_read_chance(tiny):
    res, _ = tiny
    for arm in ("mast_unc_none", "mast"):
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
        assert ("D" in e) == masks and ("logit_spread" in e) == masks and ("rho_u_delta" in e) == masks
    assert set(res["differences"]) == {"mast-vicreg", "mast-vicreg_matched", "mast-mast_unc_none"}
    assert set(res["verdict"]) == {"masks_differentiate", "keeps_style", "content_kept", "ground_truth_ok",
                                   "mechanism_works"}
    assert res["time"]["wall_s"] > 0 and res["time"]["cpu_s"] > 0 and len(res["runs"]) == 8
    matched = [r for r in res["runs"] if r["arm"] == "vicreg_matched"]
    assert all(0 < r["inv_coeff"] < 25 and "w_mean" in r["inv_coeff_source"] for r in matched)  # mast/matched.py
    assert json.loads((out / "results.json").read_text()) == res
    text = (out / "index.md").read_text()
    assert "stated before the run" in text and "| mast |" in text and (out / "mechanism.png").stat().st_size > 0


def test_bad_arms_are_one_line(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import mechanism

    with pytest.raises(SystemExit) as exc:
        mechanism.parse(["--arms", "vicreg_matched"])
    assert exc.value.code == 2 and "add mast" in capsys.readouterr().err
