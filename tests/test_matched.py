"""Matched-invariance control: ``loss.inv_coeff=auto:RUN_DIR`` resolves to λ_MAST × the MAST run's mean w
over its last epoch, records its source in config.yaml, and refuses a missing or foreign run in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mast.config import ConfigError, load_config, write_yaml


def fake_run(root: Path, method: str = "mast", finished: bool = True, w_means: dict | None = None,
             inv_coeff: float = 25.0) -> Path:
    """A run directory with the files a pretraining run writes (config.yaml, metrics.jsonl, mast_state.pth)."""
    run = root / f"run_{method}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": method, "loss": {"inv_coeff": inv_coeff}}))
    lines = [{"step": 0, "epoch": 0, "knn_top1": 12.0}]
    step = 0
    for epoch, values in (w_means if w_means is not None else {1: [0.9, 0.8], 2: [0.3, 0.2, 0.25]}).items():
        for w in values:
            step += 1
            lines.append({"step": step, "epoch": epoch, "loss": 1.0, "w_min": w / 2, "w_mean": w, "w_max": 1.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if finished:
        (run / "mast_state.pth").write_bytes(b"")
    return run


def test_auto_resolves_to_lambda_times_last_epoch_mean_w(tmp_path):
    run = fake_run(tmp_path, inv_coeff=20.0)
    cfg = load_config("demo", ["method=vicreg", f"loss.inv_coeff=auto:{run}"])
    assert cfg.loss.inv_coeff == pytest.approx(20.0 * 0.25)  # epoch 2 only: (0.3 + 0.2 + 0.25) / 3
    assert str(run / "metrics.jsonl") in cfg.loss.inv_coeff_source and "epoch 2" in cfg.loss.inv_coeff_source
    write_yaml(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())["loss"]
    assert written["inv_coeff"] == pytest.approx(5.0) and written["inv_coeff_source"].startswith("auto: 20 x")
    spaced = load_config("demo", ["method=vicreg", f"loss.inv_coeff=auto: {run}"])  # YAML reads it as a mapping
    assert spaced.loss.inv_coeff == cfg.loss.inv_coeff
    assert load_config("demo", ["loss.inv_coeff=3"]).loss.inv_coeff_source is None


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a pretraining run directory"),
    ("vicreg", "is a 'vicreg' run; expected a MAST run"),
    ("unfinished", "has not finished (no mast_state.pth)"),
    ("no_w", "logs no w_mean"),
    ("empty", "expected auto:RUN_DIR"),
])
def test_auto_refuses_a_missing_or_foreign_run_in_one_line(tmp_path, case, message):
    target = {"missing": lambda: tmp_path / "nope", "vicreg": lambda: fake_run(tmp_path, "vicreg"),
              "unfinished": lambda: fake_run(tmp_path, finished=False),
              "no_w": lambda: fake_run(tmp_path, w_means={}), "empty": lambda: ""}[case]()
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["method=vicreg", f"loss.inv_coeff=auto:{target}"])
    assert message in str(err.value) and "loss.inv_coeff=auto:" in str(err.value)
    assert "\n" not in str(err.value)
