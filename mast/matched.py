"""Matched-invariance control: ``loss.inv_coeff=auto:RUN_DIR`` (issue 14).

MAST's eq. (4) v2 weights every squared residual by w = 1/q ≤ 1, so besides *reweighting* pairs
and dimensions it also *weakens* the invariance term on average. A VICReg run with λ set to the
MAST run's λ times the mean w it applied separates the two: ``method=vicreg
loss.inv_coeff=auto:runs/pretrain/mast_s0`` resolves, when the config is loaded, to

    λ = λ_MAST × mean of ``w_mean`` over the MAST run's last epoch (its metrics.jsonl lines),

and records where the number came from in ``loss.inv_coeff_source`` of the run's config.yaml.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mast import rundir

PREFIX = "auto:"


class MatchedError(ValueError):
    """The run named by ``auto:RUN_DIR`` cannot give a matched λ (one-line message)."""


def is_auto(value: object) -> bool:
    return isinstance(value, str) and value.strip().startswith(PREFIX)


def matched_inv_coeff(spec: str) -> tuple[float, str]:
    """``auto:RUN_DIR`` -> (λ, a one-line account of its source). Raises MatchedError."""
    raw = spec.strip()[len(PREFIX):].strip()
    key = f"loss.inv_coeff={spec}"
    if not raw:
        raise MatchedError(f"{key}: expected auto:RUN_DIR, a finished MAST pretraining run directory")
    run = Path(raw)
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
                           "logged mean invariance weight w_mean is what is matched")
    if not (run / rundir.MAST_STATE).is_file():
        raise MatchedError(f"{key}: {run} has not finished (no mast_state.pth); its last epoch's w_mean is needed")
    try:
        last = last_epoch_w_mean(metrics_path)
    except MatchedError as e:
        raise MatchedError(f"{key}: {e}") from None
    if last is None:
        raise MatchedError(f"{key}: {metrics_path} logs no w_mean (a run from before MAST v2's eq. 4?)")
    base = float((config.get("loss") or {}).get("inv_coeff", 25.0))
    source = (f"auto: {base:g} x mean w_mean {last.value:.6f} over epoch {last.epoch} ({last.n_steps} logged steps, "
              f"steps {last.first_step}-{last.last_step}) of {metrics_path}")
    return base * last.value, source


@dataclass(frozen=True)
class EpochMean:
    """The mean of ``w_mean`` (eq. 4's mean invariance weight) over the logged steps of one epoch."""
    value: float
    epoch: int
    n_steps: int
    first_step: int
    last_step: int


def last_epoch_w_mean(metrics_path: Path) -> EpochMean | None:
    """Mean ``w_mean`` over a run's last logged epoch (its metrics.jsonl); None when no line logs it.

    The one place this number is computed: the matched λ above and the study report both read it.
    Raises :class:`MatchedError` for a line that is not JSON.
    """
    lines = []
    for n, text in enumerate(Path(metrics_path).read_text().splitlines(), 1):
        if text.strip():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                raise MatchedError(f"{metrics_path} line {n} is not JSON") from None
            if isinstance(record, dict) and "w_mean" in record and "epoch" in record:
                lines.append(record)
    if not lines:
        return None
    epoch = max(int(r["epoch"]) for r in lines)
    last = [r for r in lines if int(r["epoch"]) == epoch]
    steps = [int(r.get("step", 0)) for r in last]
    return EpochMean(sum(float(r["w_mean"]) for r in last) / len(last), epoch, len(last), min(steps), max(steps))


def resolve_loss_section(data: dict) -> None:
    """Replace ``loss.inv_coeff: auto:RUN_DIR`` in a raw config mapping by its number (in place)."""
    loss = data.get("loss")
    if not isinstance(loss, dict):
        return
    value = loss.get("inv_coeff")
    if isinstance(value, dict) and list(value) == ["auto"]:  # YAML reads "auto:" / "auto: DIR" as a mapping
        loss["inv_coeff"] = value = f"{PREFIX}{value['auto'] or ''}"
    if is_auto(value):
        loss["inv_coeff"], loss["inv_coeff_source"] = matched_inv_coeff(loss["inv_coeff"])
