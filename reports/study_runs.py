"""What the study's pretraining runs say about themselves (the study report's run sections).

Per run folder (``RUNS/study_<arm>_s<seed>/``, files named by :mod:`mast.rundir`): the resolved
config, steps and training time (``summary.csv``), the mean w and the effective w_eff of eq. (4) over
the matching window (:func:`mast.matched.window_means`, the rule of the matched controls) and, for a MAST run, what it learned
(``mast_state.pth``: ū_k, mask-logit spread, subspace sizes at τ, ρ(u_k, δ_k); METHOD.md eq. 1', §5).
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from mast import rundir
from mast.matched import MatchedError, WindowMean, window_means
from plumbing.safe_read import UnreadableFile, read_regular_text, short
from reports.mast_plots import StateError, load_state, sensitivities, subspace_stats, uncertainty_curves


def train_weights(run_dir: Path) -> WindowMean | None:
    """The run's w over the matching window (mast/matched.py); None when it logs none (VICReg) or is unreadable."""
    metrics = run_dir / rundir.METRICS
    try:
        return window_means(metrics) if metrics.is_file() else None
    except (MatchedError, OSError):
        return None


def run_config(path: Path) -> dict[str, Any]:
    """A run's ``config.yaml`` as a mapping whose sections are mappings; {} (with a one-line warning) for
    a file that is missing, unreadable or of another shape (``augment: [..]`` must not stop a report)."""
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(read_regular_text(path, "run config", 1 << 20))
    except (UnreadableFile, yaml.YAMLError, RecursionError) as e:
        warnings.warn(f"{path}: run config skipped ({short(e, 120)})", stacklevel=2)
        return {}
    if not isinstance(config, dict):
        warnings.warn(f"{path}: run config skipped (a {type(config).__name__}, expected a mapping)", stacklevel=2)
        return {}
    bad = [k for k in SECTIONS if k in config and not isinstance(config[k], dict)]
    for key in bad:
        warnings.warn(f"{path}: section {key!r} is a {type(config[key]).__name__}, expected a mapping; ignored",
                      stacklevel=2)
    return {k: v for k, v in config.items() if k not in bad}


SECTIONS = ("optim", "model", "augment", "loss", "data", "runtime")


def run_facts(run_dir: Path) -> dict[str, Any]:
    """What one pretraining run says about itself: config, wall time and, for MAST, what it learned."""
    facts: dict[str, Any] = {"dir": run_dir}
    facts["config"] = run_config(run_dir / rundir.CONFIG)
    summary = run_dir / rundir.SUMMARY
    if summary.is_file():
        rows = list(csv.DictReader(io.StringIO(summary.read_text())))
        facts["steps"] = int(rows[-1]["step"]) if rows else 0
        facts["train_s"] = sum(float(r["elapsed_s"]) for r in rows if r.get("elapsed_s"))
    win = train_weights(run_dir)
    facts["w_mean_train"] = None if win is None else win.w_mean
    facts["w_eff_train"] = None if win is None else win.w_eff
    state_path = run_dir / rundir.MAST_STATE
    if not state_path.is_file() or facts["config"].get("method") != "mast":
        return facts
    try:
        state = load_state(state_path)
    except StateError as e:  # the run's other facts still count; what it learned is not shown
        warnings.warn(f"{e}; its learned masks are left out of the report", stacklevel=2)
        return facts
    names = [str(n) for n in state["aug_names"]]
    tau = float(state.get("tau", 0.5))
    held = state.get("heldout") or {}
    rho = uncertainty_rho(facts["config"], held, len(names))
    facts["learned"] = {
        "aug_names": names, "tau": tau, "d": int(state["mask_logits"].shape[1]),
        "u_bar": state["u_bar"].tolist(), "logit_std": state["mask_logits"].std(dim=1).tolist(),
        "subspace_size": subspace_stats(sensitivities(state), tau)["size"], "rho": rho,
        "w_mean_heldout": held.get("w_mean"), "D": _differentiation(held, len(names)),
    }
    return facts


def uncertainty_rho(config: dict, held: dict, k: int) -> list[float | None]:
    """Spearman ρ(u_k, δ_k) per augmentation on the held-out pairs; None where absent, and where it cannot fail:
    with ``model.uncertainty: none`` u is δ times one learned scalar per augmentation, so ρ = 1 by construction
    (issue 35). The head's ρ is read beside that, not as evidence on its own."""
    if (config.get("model") or {}).get("uncertainty") == "none":
        return [None] * k
    if not (isinstance(held.get("u"), torch.Tensor) and held["u"].numel()):
        return [None] * k
    return [c["rho"] for c in uncertainty_curves(held["delta"].double().numpy(), held["u"].double().numpy())]


def _differentiation(held: dict, k: int) -> list[float | None]:
    """D_k per augmentation from the held-out pass (METHOD.md §5); None where absent or undefined."""
    diff = held.get("differentiation")
    values = diff.get("D") if isinstance(diff, dict) else None
    return list(values) if isinstance(values, list) and len(values) == k else [None] * k


def _cell(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def learned_tables(runs: dict[str, dict]) -> list[str]:
    """Per MAST run: ū_k, mask-logit std, |S_k| at τ, ρ(u_k, δ_k) per augmentation; mean w and λ of every run."""
    mast_runs = {n: f for n, f in runs.items() if "learned" in f}
    out = [] if mast_runs else ["No MAST run with a mast_state.pth was found.", ""]
    if mast_runs:
        first = next(iter(mast_runs.values()))["learned"]
        names = first["aug_names"]
        for key, title in (("u_bar", "ū_k (running mean of u over training pairs)"),
                           ("logit_std", "spread of the mask logits φ_k over dimensions (std)"),
                           ("subspace_size", f"subspace size |S_k| at τ = {first['tau']:g} (of d = {first['d']})"),
                           ("D", "mask differentiation D_k on held-out images (METHOD.md §5: Spearman over dimensions of "
                                 "1 − m_kj against the measured sensitivity to k; ≈ 0: S_k is a per-augmentation "
                                 "weight, not a subspace)"),
                           ("rho", "Spearman ρ(u_k, δ_k) on held-out pairs (– for `uncertainty: none`: there u is δ times a "
                                   "learned scalar, so ρ = 1 by construction and says nothing)")):
            out += [f"**{title}**", "", "| run | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
            fmt = "{:.0f}" if key == "subspace_size" else "{:.2f}"
            out += [f"| {run} | " + " | ".join(_cell(v, fmt) for v in facts["learned"].get(key, [])) + " |"
                    for run, facts in mast_runs.items()]
            out.append("")
    out += ["**mean invariance weight w (eq. 4) and λ**", "",
            "| run | mean w (training, matching window) | w_eff = Σwr²/Σr² (same window) | mean w, held-out pairs | λ |",
            "|---|---:|---:|---:|---:|"]
    for run, facts in runs.items():
        learned = facts.get("learned", {})
        lam = (facts["config"].get("loss") or {}).get("inv_coeff")
        out.append(f"| {run} | {_cell(facts.get('w_mean_train'), '{:.3f}')} | {_cell(facts.get('w_eff_train'), '{:.3f}')} | "
                   f"{_cell(learned.get('w_mean_heldout'), '{:.3f}')} | {_cell(lam, '{:.2f}')} |")
    return out + [""]


def learned_rows(runs: dict[str, dict]) -> list[dict]:
    """learned.csv: one row per (MAST run, augmentation)."""
    rows = []
    for run, facts in runs.items():
        info = facts.get("learned")
        for k, aug in enumerate(info["aug_names"] if info else []):
            rows.append({"run": run, "augmentation": aug, "u_bar": info["u_bar"][k],
                         "mask_logit_std": info["logit_std"][k], "subspace_size": info["subspace_size"][k],
                         "rho_u_delta": info["rho"][k],
                         "mask_differentiation": info.get("D", [None] * (k + 1))[k], "w_mean_train": facts.get("w_mean_train"),
                         "w_eff_train": facts.get("w_eff_train"),
                         "w_mean_heldout": info.get("w_mean_heldout")})
    return rows


def settings_line(runs: dict[str, dict]) -> str:
    """The pretraining settings, read from the first run's config.yaml."""
    facts = next((f for f in runs.values() if f["config"]), None)
    if facts is None:
        return "No pretraining run directory was found."
    c = facts["config"]
    o, m, a = c.get("optim", {}), c.get("model", {}), c.get("augment", {})
    train_min = sum(f.get("train_s", 0.0) for f in runs.values()) / 60
    return (f"Pretraining: {m.get('arch')}, expander {m.get('expander')}, {a.get('size')} px views, batch "
            f"{o.get('batch_size')}, {o.get('name')} (base lr {o.get('base_lr')}), {o.get('epochs')} epochs = "
            f"{facts.get('steps', '?')} steps per run; {len(runs)} runs, {train_min:.0f} min of training loops "
            "in all (one thread each).")
