"""Matched-invariance control: ``loss.inv_coeff=auto:RUN_DIR`` (issues 14, 35).

MAST's eq. (4) v2 weights every squared residual by w = 1/q ≤ 1, so besides *reweighting* pairs
and dimensions it also *weakens* the invariance term on average. A VICReg run with λ set to the
MAST-type run's λ times the invariance weight it applied separates the two. The matching rule, stated
once and used for every arm (the benchmark, the image study, a user's ``auto:``):

- statistic: ``auto:RUN_DIR`` matches on **w_eff** = Σ w r² / Σ r² (eq. 4, :func:`mast.loss.effective_weight`,
  logged per step), the factor by which the run's invariance term was weaker than VICReg's at the same
  residuals (L_inv = w_eff · mse exactly), so the control gets the invariance strength the MAST run applied.
  ``auto_mean:RUN_DIR`` matches on the mean weight **w_mean** instead (the rule of issue 14), which
  overstates that strength when the small weights fall on the large residuals (issue 35: 0.151 vs 0.058);
- window: the last ``max(MIN_WINDOW_STEPS, longest epoch)`` logged steps of the run's metrics.jsonl (at
  least one full epoch of steps and at least 50 steps; all of them if the run logged fewer), the mean of
  the per-step statistic over it;
- λ = λ_run × that mean, recorded with its source in ``loss.inv_coeff_source`` of the control's config.yaml.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mast import rundir

#: spec prefix -> the statistic it matches on (``auto:`` is the control the reports read)
PREFIXES = {"auto:": "w_eff", "auto_mean:": "w_mean"}
MIN_WINDOW_STEPS = 50


class MatchedError(ValueError):
    """The run named by ``auto:RUN_DIR`` cannot give a matched λ (one-line message)."""


def _prefix(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return next((p for p in PREFIXES if value.strip().startswith(p)), None)


def is_auto(value: object) -> bool:
    return _prefix(value) is not None


@dataclass(frozen=True)
class WindowMean:
    """Means of the logged per-step w_mean and w_eff over the matching window (module docstring)."""
    w_mean: float
    w_eff: float | None  # None when a step of the window does not log it (a run from before issue 35)
    n_steps: int
    first_step: int
    last_step: int
    epoch_steps: int  # the longest epoch's logged steps (the window covers at least this many)

    def value(self, stat: str) -> float | None:
        return self.w_eff if stat == "w_eff" else self.w_mean


def window_means(metrics_path: Path) -> WindowMean | None:
    """The matching window of a run's metrics.jsonl and its means; None when no line logs w_mean.

    The one place this is computed: the matched λ, the benchmark and the study report all read it.
    Raises :class:`MatchedError` for a line that is not JSON.
    """
    by_step: dict[int, dict] = {}
    for n, text in enumerate(Path(metrics_path).read_text().splitlines(), 1):
        if text.strip():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                raise MatchedError(f"{metrics_path} line {n} is not JSON") from None
            if isinstance(record, dict) and "w_mean" in record and "epoch" in record:
                by_step[int(record.get("step", n))] = record  # a resumed run's rewritten step: the last line
    if not by_step:
        return None
    lines = [by_step[s] for s in sorted(by_step)]
    per_epoch: dict[int, int] = {}
    for r in lines:
        per_epoch[int(r["epoch"])] = per_epoch.get(int(r["epoch"]), 0) + 1
    epoch_steps = max(per_epoch.values())
    window = lines[-max(MIN_WINDOW_STEPS, epoch_steps):]
    effs = [r.get("w_eff") for r in window]
    w_eff = None if any(e is None for e in effs) else sum(float(e) for e in effs) / len(effs)
    steps = [int(r.get("step", 0)) for r in window]
    return WindowMean(sum(float(r["w_mean"]) for r in window) / len(window), w_eff, len(window),
                      min(steps), max(steps), epoch_steps)


def _read_run(run: Path, key: str) -> tuple[dict, Path]:
    config_path, metrics_path = run / rundir.CONFIG, run / rundir.METRICS
    if not config_path.is_file() or not metrics_path.is_file():
        raise MatchedError(f"{key}: {run} is not a pretraining run directory (expected config.yaml and "
                           "metrics.jsonl in it)")
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError:
        raise MatchedError(f"{key}: {config_path} is not valid YAML") from None
    if not isinstance(config, dict) or config.get("method") != "mast":
        method = config.get("method") if isinstance(config, dict) else None
        raise MatchedError(f"{key}: {run} is a {method!r} run; expected a MAST run (method: mast), whose "
                           "logged invariance weights are what is matched")
    if not (run / rundir.MAST_STATE).is_file():
        raise MatchedError(f"{key}: {run} has not finished (no mast_state.pth); its last steps' weights are needed")
    return config, metrics_path


def matched_inv_coeff(spec: str) -> tuple[float, str]:
    """``auto:RUN_DIR`` (w_eff) or ``auto_mean:RUN_DIR`` (w_mean) -> (λ, a one-line account of its source).

    Raises MatchedError."""
    prefix = _prefix(spec) or "auto:"
    stat = PREFIXES[prefix]
    raw = spec.strip()[len(prefix):].strip()
    key = f"loss.inv_coeff={spec}"
    if not raw:
        raise MatchedError(f"{key}: expected {prefix}RUN_DIR, a finished MAST pretraining run directory")
    run = Path(raw)
    config, metrics_path = _read_run(run, key)
    try:
        win = window_means(metrics_path)
    except MatchedError as e:
        raise MatchedError(f"{key}: {e}") from None
    if win is None:
        raise MatchedError(f"{key}: {metrics_path} logs no w_mean (a run from before MAST v2's eq. 4?)")
    value = win.value(stat)
    if value is None:
        raise MatchedError(f"{key}: {metrics_path} does not log w_eff on every step of its last {win.n_steps} "
                           "(a run from before issue 35); match on the mean weight with auto_mean:RUN_DIR")
    base = float((config.get("loss") or {}).get("inv_coeff", 25.0))
    source = (f"{prefix} {base:g} x mean {stat} {value:.6f} over the last {win.n_steps} logged steps "
              f"(steps {win.first_step}-{win.last_step}; window = max({MIN_WINDOW_STEPS}, one epoch = "
              f"{win.epoch_steps})) of {metrics_path}")
    return base * value, source


def resolve_loss_section(data: dict) -> None:
    """Replace ``loss.inv_coeff: auto:RUN_DIR`` (or ``auto_mean:``) in a raw config mapping by its number (in place)."""
    loss = data.get("loss")
    if not isinstance(loss, dict):
        return
    value = loss.get("inv_coeff")
    if isinstance(value, dict) and len(value) == 1 and f"{next(iter(value))}:" in PREFIXES:
        name = next(iter(value))  # YAML reads "auto:" / "auto: DIR" as a mapping
        loss["inv_coeff"] = value = f"{name}:{value[name] or ''}"
    if is_auto(value):
        loss["inv_coeff"], loss["inv_coeff_source"] = matched_inv_coeff(loss["inv_coeff"])
