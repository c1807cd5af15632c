"""Matched-invariance control: ``loss.inv_coeff=auto:RUN_DIR`` resolves to λ_MAST × the MAST run's w_eff
(``auto_mean:``: mean w) over the matching window (mast/matched.py), records its source in config.yaml,
and refuses a missing or foreign run in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mast.config import ConfigError, load_config, write_yaml
from mast.matched import matched_inv_coeff, window_means


def fake_run(root: Path, method: str = "mast", finished: bool = True, w_means: dict | None = None,
             inv_coeff: float = 25.0, eff: float | None = 0.5) -> Path:
    """A run directory with the files a pretraining run writes (config.yaml, metrics.jsonl, mast_state.pth)."""
    run = root / f"run_{method}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": method, "loss": {"inv_coeff": inv_coeff}}))
    lines = [{"step": 0, "epoch": 0, "knn_top1": 12.0}]
    step = 0
    for epoch, values in (w_means if w_means is not None else {1: [0.9, 0.8], 2: [0.3, 0.2, 0.25]}).items():
        for w in values:
            step += 1
            line = {"step": step, "epoch": epoch, "loss": 1.0, "w_min": w / 2, "w_mean": w, "w_max": 1.0}
            lines.append(line if eff is None else dict(line, w_eff=w * eff))
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if finished:
        (run / "mast_state.pth").write_bytes(b"")
    return run


def test_auto_resolves_to_lambda_times_w_eff_over_the_window(tmp_path):
    run = fake_run(tmp_path, inv_coeff=20.0)  # 5 logged steps < 50: the window is all of them
    mean_w = (0.9 + 0.8 + 0.3 + 0.2 + 0.25) / 5
    cfg = load_config("demo", ["method=vicreg", f"loss.inv_coeff=auto:{run}"])
    assert cfg.loss.inv_coeff == pytest.approx(20.0 * 0.5 * mean_w)  # w_eff = 0.5 w on every step
    assert str(run / "metrics.jsonl") in cfg.loss.inv_coeff_source and "w_eff" in cfg.loss.inv_coeff_source
    mean = load_config("demo", ["method=vicreg", f"loss.inv_coeff=auto_mean:{run}"])
    assert mean.loss.inv_coeff == pytest.approx(20.0 * mean_w) and "w_mean" in mean.loss.inv_coeff_source
    write_yaml(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())["loss"]
    assert written["inv_coeff"] == pytest.approx(cfg.loss.inv_coeff) and written["inv_coeff_source"].startswith("auto: 20 x")
    spaced = load_config("demo", ["method=vicreg", f"loss.inv_coeff=auto: {run}"])  # YAML reads it as a mapping
    assert spaced.loss.inv_coeff == cfg.loss.inv_coeff
    spaced = load_config("demo", ["method=vicreg", f"loss.inv_coeff=auto_mean: {run}"])
    assert spaced.loss.inv_coeff == mean.loss.inv_coeff
    assert load_config("demo", ["loss.inv_coeff=3"]).loss.inv_coeff_source is None


def test_the_window_is_at_least_one_epoch_and_fifty_steps(tmp_path):
    long_epochs = fake_run(tmp_path / "a", w_means={e: [float(e)] * 80 for e in range(3)})  # 80 steps per epoch
    win = window_means(long_epochs / "metrics.jsonl")
    assert (win.n_steps, win.epoch_steps, win.last_step, win.w_mean) == (80, 80, 240, pytest.approx(2.0))
    short = fake_run(tmp_path / "b", w_means={e: [float(e)] * 20 + [0.0] * (e == 4) for e in range(5)})
    win = window_means(short / "metrics.jsonl")  # epoch 4 is 21 steps: window = last 50 steps, 3 epochs
    assert (win.n_steps, win.first_step, win.last_step) == (50, 52, 101)
    assert win.w_mean == pytest.approx((2.0 * 9 + 3.0 * 20 + 4.0 * 20) / 50)


def test_each_run_gives_its_own_lambda(tmp_path):
    runs = {name: fake_run(tmp_path / name, w_means={0: [w] * 60}, eff=0.5) for name, w in
            (("mast", 0.2), ("mast_tied", 0.4), ("mast_unc_none", 0.8))}
    lams = {name: matched_inv_coeff(f"auto:{run}") for name, run in runs.items()}
    assert {n: v for n, (v, _) in lams.items()} == pytest.approx({"mast": 2.5, "mast_tied": 5.0, "mast_unc_none": 10.0})
    assert all(str(runs[n] / "metrics.jsonl") in source for n, (_, source) in lams.items())


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a pretraining run directory"),
    ("vicreg", "is a 'vicreg' run; expected a MAST run"),
    ("unfinished", "has not finished (no mast_state.pth)"),
    ("no_w", "logs no w_mean"),
    ("empty", "expected auto:RUN_DIR"),
    ("no_eff", "does not log w_eff"),
])
def test_auto_refuses_a_missing_or_foreign_run_in_one_line(tmp_path, case, message):
    target = {"missing": lambda: tmp_path / "nope", "vicreg": lambda: fake_run(tmp_path, "vicreg"),
              "unfinished": lambda: fake_run(tmp_path, finished=False),
              "no_w": lambda: fake_run(tmp_path, w_means={}), "empty": lambda: "",
              "no_eff": lambda: fake_run(tmp_path, eff=None)}[case]()
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["method=vicreg", f"loss.inv_coeff=auto:{target}"])
    assert message in str(err.value) and "loss.inv_coeff=auto:" in str(err.value)
    assert "\n" not in str(err.value)
