"""reports/: tables from a fixed results.jsonl, well-formed LaTeX, MAST plots from real tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from reports import build, mast_plots, tables
from reports.results import load_results
import latex_check
from synthetic_state import make_state, save_state

DATA = Path(__file__).resolve().parents[1] / "data"
NAMES = ["vicreg", "mast", "random_init"]


@pytest.fixture(scope="module")
def results():
    with pytest.warns(UserWarning, match="corrupt line"):
        return load_results(DATA / "results.jsonl")


def test_tables_match_expected_markdown(results):
    assert tables.markdown_report(results, "vicreg") == (DATA / "expected_tables.md").read_text()


def test_latest_record_of_a_config_wins_and_failures_show(results):
    # mast/knn_shape: an ok record followed by a failed re-run of the same config -> the failure is
    # shown (issue 16: a stale ok number must not look current)
    assert results.get("mast", "knn_shape")["status"] == "failed"
    # mast/detection_scenes: a failed record followed by an ok one -> the ok one
    assert results.get("mast", "detection_scenes")["metrics"]["bbox_AP"] == 11.9
    summary = tables.summary_table(results, "vicreg")
    col = summary.columns.index(("knn_side", "top1_k20"))
    assert summary.cells[("mast", col)].note == "failed"
    assert summary.cells[("random_init", col)].note == "skipped"


def test_latex_is_one_well_formed_booktabs_table_per_family(results):
    tex = tables.latex_report(results, "vicreg")
    found = latex_check.check_structure(tex)
    assert r"random\_init" in tex and r"\cmidrule(lr){2-4}" in tex and r"$\pm$" in tex
    # detection, instance and semantic segmentation, few-shot, linear, kNN: one table each
    assert [t["columns"] - 1 for t in found] == [3, 3, 1, 2, 1, 2]
    for t in found:  # a row per group, a Δ row under each group that has a difference
        assert [x for x in t["labels"] if not x.startswith(r"\quad")] == ["vicreg", "mast", r"random\_init"]
    assert found[0]["labels"][2] == r"\quad $\Delta$ vs vicreg"
    assert found[0]["header"] == [r"Method & \multicolumn{3}{c}{scenes} \\",
                                  r" & AP$^{\rm bb}$ & AP$^{\rm bb}_{50}$ & AP$^{\rm bb}_{75}$ \\"]


def test_tidy_csv_has_one_row_per_metric(results):
    df = tables.tidy_frame(results, "vicreg")
    ok = df[df.status == "ok"]
    n_metrics = sum(len([m for m in r["metrics"] if not m.endswith("_ci95")])  # a _ci95 is its metric's interval
                    for r in results.records.values() if r["status"] == "ok")
    assert len(ok) == n_metrics and ok[["checkpoint", "task", "metric"]].duplicated().sum() == 0
    row = ok[(ok.checkpoint == "mast") & (ok.task == "linear_color") & (ok.metric == "top1")].iloc[0]
    assert row.value == 90.08 and row.delta == pytest.approx(-0.04)
    assert set(df[df.status != "ok"].task) == {"knn_shape", "knn_side", "segmentation_scenes"}


def test_unknown_baseline_is_refused(results, tmp_path, capsys):
    with pytest.raises(ValueError, match="--baseline nope"):
        tables.markdown_report(results, "nope")
    assert build.main(["--results", str(tmp_path / "absent"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "results.jsonl" in err


def test_sensitivity_statistics_follow_eq_1prime():
    state = {"mask_logits": torch.tensor([[10.0, -10.0, -10.0, 10.0], [10.0, -10.0, -10.0, 10.0]]),
             "u_bar": torch.tensor([2.0, 0.2])}
    e = mast_plots.sensitivities(state)
    np.testing.assert_allclose(e, 2.0 * (1 - torch.sigmoid(state["mask_logits"].double())).numpy() * [[1], [0.1]], rtol=1e-6)
    stats = mast_plots.subspace_stats(e, tau=0.5)
    # aug 0 disturbs dims 1, 2 (e ~ 2); aug 1's e ~ 0.2 < τ everywhere: it leaves all 4 invariant
    assert stats["size"] == [2, 4] and stats["non_invariant"] == [2, 0]
    assert stats["unique"] == [0, 2] and stats["unique_total"] == 2 and stats["shared_total"] == 2
    corr, jac = mast_plots.relations(e, 0.5)
    assert np.isnan(jac[1, 1]) and jac[0, 0] == 1.0 and jac[0, 1] == 0.0
    assert corr[0, 1] == pytest.approx(1.0)  # same profile shape, different scale


def test_uncertainty_curves_rank_correlation():
    d = np.linspace(0, 1, 200)[:, None].repeat(2, 1)
    u = np.stack([d[:, 0] ** 2, np.zeros(200)], 1)
    curves = mast_plots.uncertainty_curves(d, u, bins=5)
    assert curves[0]["rho"] == pytest.approx(1.0) and curves[1]["rho"] is None
    assert curves[0]["median"] == sorted(curves[0]["median"]) and sum(curves[0]["count"]) == 200


def _fixture_with_runs(tmp_path: Path) -> Path:
    """The fixed results, pointed at run dirs that hold real (torch.save'd) mast_state.pth files."""
    save_state(tmp_path / "pretrain/demo_mast/mast_state.pth", dim=96)
    save_state(tmp_path / "pretrain/demo_vicreg/mast_state.pth", dim=96, method="vicreg")
    lines = []
    for line in (DATA / "results.jsonl").read_text().splitlines():
        lines.append(line.replace('"/runs/pretrain/', f'"{tmp_path}/pretrain/'))
    (tmp_path / "res").mkdir()
    (tmp_path / "res/results.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "res"


def test_build_writes_tables_plots_and_index(tmp_path):
    res = _fixture_with_runs(tmp_path)
    with pytest.warns(UserWarning, match="corrupt line"):
        index = build.build(res, tmp_path / "report", baseline="vicreg", command="pytest")
    out = index.parent
    text = index.read_text()
    assert "`pytest`" in text and "## Tasks without a result" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(images) == sorted(p.name for p in out.glob("*.png"))
    assert {f"bars_{t}.png" for t in ("knn_shape", "linear_color", "fewshot_shape_color", "detection_scenes",
                                      "knn_side")} <= set(images)
    # MAST figures only for the MAST run, not for VICReg (no masks) nor the random-init floor
    assert {"mast_mast_sensitivity.png", "mast_mast_subspaces.png", "mast_mast_relations.png",
            "mast_mast_uncertainty.png"} <= set(images)
    assert not [i for i in images if i.startswith(("mast_vicreg", "mast_random_init"))]
    for name in images:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 200
    assert "Spearman" in text and "crop" in text
    assert (out / "tables.md").read_text() == (DATA / "expected_tables.md").read_text()
    df = pd.read_csv(out / "results.csv")
    assert {"checkpoint", "task", "metric", "value", "std", "delta", "status"} <= set(df.columns)


def test_fabricated_state_round_trips_weights_only(tmp_path):
    path = save_state(tmp_path / "mast_state.pth", dim=32, pairs=64)
    state = mast_plots.load_state(path)
    assert state["mask_logits"].shape == (6, 32) and state["heldout"]["u"].shape == (64, 6)
    assert json.dumps(state["aug_names"]) and make_state(method="vicreg").get("mask_logits") is None


def test_rebuild_keeps_foreign_files_and_drops_only_its_own_stale_ones(tmp_path):
    res = _fixture_with_runs(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    (out / "logo.png").write_bytes(b"a user's picture")
    (out / "notes.md").write_text("mine")
    with pytest.warns(UserWarning):
        build.build(res, out, baseline="vicreg", command="pytest")
    ours = json.loads((out / build.MANIFEST).read_text())
    assert "index.md" in ours and "bars_knn_shape.png" in ours and "logo.png" not in ours
    # the next results lack knn_shape: its figure goes, the user's files stay
    lines = [ln for ln in (res / "results.jsonl").read_text().splitlines() if '"knn_shape"' not in ln]
    (res / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning):
        build.build(res, out, baseline="vicreg", command="pytest")
    assert not (out / "bars_knn_shape.png").exists() and (out / "bars_knn_side.png").exists()
    assert (out / "logo.png").read_bytes() == b"a user's picture" and (out / "notes.md").read_text() == "mine"


def test_report_out_that_is_a_file_is_one_line(tmp_path, capsys):
    res = _fixture_with_runs(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.warns(UserWarning):
        assert build.main(["--results", str(res), "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a folder" in err and "\n" not in err


def test_heldout_mean_w_reaches_the_mast_section(tmp_path):
    """eq. (4) v2: the held-out pass's mean invariance weight is printed with the MAST figures."""
    state = make_state()
    assert "w_mean_heldout" not in mast_plots.mast_figures(state, tmp_path, "m")
    state["heldout"]["w_mean"] = 0.297
    res = mast_plots.mast_figures(state, tmp_path, "m")
    assert res["w_mean_heldout"] == 0.297
    assert any("held-out pairs: 0.297" in line for line in build._mast_numbers(res))


def test_quotes_are_generated_from_their_reports_and_checked(tmp_path, capsys):
    from reports import quote

    (tmp_path / "reports/demo").mkdir(parents=True)
    source = tmp_path / "reports/demo/index.md"
    source.write_text("# Report\n\n## What the numbers say\n\nline one\n\n![forest](forest.png) see "
                      "[tables](tables.md), [docs](https://x.org/a)\n\n## Checkpoints\n\nnot quoted\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- quote: reports/demo/index.md#What the numbers say -->\n> stale\n<!-- /quote -->\nend\n")
    assert quote.main(["--check", str(readme)]) == 1
    assert "the quote of reports/demo/index.md#What the numbers say differs" in capsys.readouterr().err
    assert quote.main([str(readme)]) == 0
    assert readme.read_text() == (
        "intro\n<!-- quote: reports/demo/index.md#What the numbers say -->\n> line one\n>\n"
        "> ![forest](reports/demo/forest.png) see [tables](reports/demo/tables.md), [docs](https://x.org/a)\n"
        "<!-- /quote -->\nend\n")
    assert quote.main(["--check", str(readme)]) == 0
    source.write_text(source.read_text().replace("line one", "line 1"))  # the report was rebuilt
    assert quote.main(["--check", str(readme)]) == 1
    source.write_text("# Report\n")  # the section is gone: one line, exit 2
    assert quote.main(["--check", str(readme)]) == 2
    assert capsys.readouterr().err.strip().endswith("reports/demo/index.md: no section '## What the numbers say'")


def test_the_documents_quote_the_committed_reports_verbatim():
    from reports import quote

    repo = Path(__file__).resolve().parents[2]
    files = quote.default_files(repo)
    sources = {f.name: [m.group("source") for m in quote._BLOCK.finditer(f.read_text())] for f in files}
    assert sources["DEMO.md"] == ["../reports/demo/index.md#What the numbers say"]
    assert sources["STUDY.md"] == ["../reports/study/summary.md"]
    assert quote.main(["--check", *map(str, files)]) == 0, "run: python -m reports.quote"


def test_rho_of_u_and_delta_is_not_reported_where_it_cannot_fail():
    """uncertainty: none makes u = δ × a learned scalar, so ρ(u, δ) = 1 by construction (issue 35): no number."""
    import torch

    from reports.study_runs import uncertainty_rho

    gen = torch.Generator().manual_seed(0)
    delta = torch.rand(64, 3, generator=gen)
    held = {"delta": delta, "u": delta * torch.tensor([0.5, 2.0, 3.0])}
    assert uncertainty_rho({"model": {"uncertainty": "none"}}, held, 3) == [None, None, None]
    assert uncertainty_rho({"model": {"uncertainty": "head"}}, held, 3) == pytest.approx([1.0, 1.0, 1.0])
    noise = {"delta": delta, "u": torch.rand(64, 3, generator=gen)}  # a head whose u ignores δ: ρ can fail
    assert all(abs(r) < 0.5 for r in uncertainty_rho({"model": {}}, noise, 3))
    assert uncertainty_rho({}, {}, 2) == [None, None]
