"""Intervals, verdicts and the Markdown/PNG report of ``benchmarks/mechanism.py``.

Intervals: transfer/stats.py only (95 % percentile bootstrap; content accuracy and R² hierarchical
over seeds and test items, D_k and the other per-run numbers over seeds; MAST minus a control paired
by seed and by test item).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plumbing.atomic import write_text_atomic  # noqa: E402
from transfer.stats import Interval, difference_interval, group_interval  # noqa: E402

PER_RUN = ("D", "D_known", "D_random", "logit_spread", "subspace_size", "relief_share", "u_exponent")  # per factor
SCALARS = ("w_mean_heldout", "w_eff_heldout", "cv_pairs", "cv_dims")  # one number per run
D_MIN = 0.2  # a D_k interval entirely above this = the mask ranks the dimensions k drives
TITLE = "# Which part of MAST does the work? The ground-truth mechanism benchmark (issues 25, 35)"
OLD_TITLES = ("# Does MAST's mechanism work when the answer is known?",)  # reports this benchmark wrote before
#: (A, B): A minus B, paired by seed and test item; only those whose two arms ran are computed
COMPARISONS = [("mast", "vicreg"), ("mast", "mast_tied"), ("mast", "matched_mast"), ("mast", "matched_mean_mast"),
               ("mast_tied", "matched_mast_tied"), ("mast_tied", "matched_mean_mast_tied"),
               ("mast_unc_none", "matched_mast_unc_none"), ("mast", "mast_unc_none"),
               ("mast_budget", "mast_budget_tied"), ("mast_budget", "matched_mast_budget"),
               ("mast_budget_tied", "matched_mast_budget_tied"), ("mast_budget", "mast")]
GATE = {"D_known_min": 0.8, "D_random_max": 0.2}  # fixed before the issue-35 rerun, with 16384 held-out pairs

# Stated before the issue-35 run: one verdict per claim; each reads the R² of `strong` (the strongly augmented
# factor a downstream task reads) or content accuracy, from intervals of paired differences.
VERDICTS = {
    "a_per_dimension": ("(a) per-dimension relief adds to per-augmentation relief: MAST − MAST with tied masks, "
                        "R² strong, interval entirely above 0", [("mast-mast_tied", "r2", "lo>0")]),
    "b_per_pair": ("(b) per-pair δ weighting adds to uniform relief: MAST with tied masks (the uncertainty head, no "
                   "per-dimension choice) − its own matched-λ VICReg (w_eff), R² strong, interval entirely above 0",
                   [("mast_tied-matched_mast_tied", "r2", "lo>0")]),
    "c_no_content_cost": ("(c) both at no content cost: content accuracy of MAST − tied and of tied − its own matched "
                          "control, neither interval entirely below 0",
                          [("mast-mast_tied", "content_acc", "hi>=0"), ("mast_tied-matched_mast_tied", "content_acc", "hi>=0")]),
    "variant_per_dimension": ("(a′) the same test for the budget variant (docs/MECHANISM.md says why it was built): "
                              "budget − budget with tied masks, R² strong, interval entirely above 0",
                              [("mast_budget-mast_budget_tied", "r2", "lo>0")]),
    "ground_truth_ok": (f"gate of D_k (read only when it holds): with the known answer as masks D_k > "
                        f"{GATE['D_known_min']} for every factor, with random masks |D_k| < {GATE['D_random_max']}, "
                        "for MAST", []),
    "masks_differentiate": (f"MAST's D_k interval entirely above {D_MIN} for every strongly perturbed factor "
                            "(`strong`, `nuisance`); not read when the gate fails", []),
}
CRITERIA = [text for text, _ in VERDICTS.values()]


def _iv(iv: Interval) -> dict:
    return {"value": iv.value, "lo": iv.lo, "hi": iv.hi, "n_seeds": iv.n_seeds}


def _per_seed(values: list) -> dict | None:
    vals = [np.array([float(v)]) for v in values if v is not None]
    return _iv(group_interval(vals)) if vals else None


def arm_entry(rs: list[dict], names: list[str]) -> dict:
    """One arm's intervals: content accuracy and R² (hierarchical), per-run measures (over seeds)."""
    entry = {"content_acc": _iv(group_interval([r["content_correct"] for r in rs])),
             "r2": {n: _iv(group_interval([r["r2_items"][k] for r in rs])) for k, n in enumerate(names)},
             "inv_coeff": _per_seed([r["inv_coeff"] for r in rs])}
    for key in PER_RUN:
        if all(key in r for r in rs):
            entry[key] = {n: _per_seed([r[key][k] for r in rs]) for k, n in enumerate(names)}
    for key in SCALARS:
        if all(key in r for r in rs):
            entry[key] = _per_seed([r[key] for r in rs])
    if all("var_share" in r for r in rs):
        entry["var_share"] = {c: _per_seed([r["var_share"][c] for r in rs]) for c in rs[0]["var_share"]}
    return entry


def summarise(runs: list[dict], world, arms: list[str]) -> dict:
    """Per arm: intervals of every measure; the differences of COMPARISONS; the VERDICTS."""
    names = list(world.spec.factors)
    out: dict = {"world": world.describe(), "factors": names, "arms": {}, "differences": {}, "criteria": CRITERIA,
                 "gate": GATE, "runs": [{k: v for k, v in r.items() if k not in ("content_correct", "r2_items")}
                                        for r in runs], "interval_scheme": INTERVAL_SCHEME}
    by_arm = {a: [r for r in runs if r["arm"] == a] for a in arms}
    for arm, rs in by_arm.items():
        out["arms"][arm] = arm_entry(rs, names)
    for a_name, b_name in COMPARISONS:
        if a_name in by_arm and b_name in by_arm:
            a, b = by_arm[a_name], by_arm[b_name]
            out["differences"][f"{a_name}-{b_name}"] = {
                "content_acc": _iv(difference_interval([r["content_correct"] for r in a], [r["content_correct"] for r in b])),
                "r2": {n: _iv(difference_interval([r["r2_items"][k] for r in a], [r["r2_items"][k] for r in b]))
                       for k, n in enumerate(names)}}
    out["verdict"] = verdict(out, world)
    return out


def _holds(out: dict, comparison: str, measure: str, rule: str) -> bool | None:
    d = out["differences"].get(comparison)
    if d is None:
        return None
    iv = d["content_acc"] if measure == "content_acc" else d["r2"]["strong"]
    return iv["lo"] > 0 if rule == "lo>0" else iv["hi"] >= 0


def verdict(out: dict, world) -> dict:
    """Every entry of VERDICTS: True / False / None (not measurable: an arm it needs did not run)."""
    res: dict = {}
    for key, (_, tests) in VERDICTS.items():
        if tests:
            parts = [_holds(out, *t) for t in tests]
            res[key] = None if None in parts else all(parts)
    mast = out["arms"].get("mast")
    strong = [n for n, a in zip(world.spec.factors, world.spec.strengths) if a >= 1]
    res["ground_truth_ok"] = res["masks_differentiate"] = None
    if mast and "D" in mast:
        known = [v["value"] for v in mast["D_known"].values() if v]
        rand = [v["value"] for v in mast["D_random"].values() if v]
        res["ground_truth_ok"] = bool(known and rand and min(known) > GATE["D_known_min"]
                                      and max(abs(x) for x in rand) < GATE["D_random_max"])
        if res["ground_truth_ok"]:  # VERDICTS: the measure is not read when its gate fails
            res["masks_differentiate"] = all((mast["D"][n] or {}).get("lo", -1) > D_MIN for n in strong)
    return res


def _fmt(iv: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not iv:
        return "n/a"
    return f"{iv['value'] * scale:.{digits}f} [{iv['lo'] * scale:.{digits}f}, {iv['hi'] * scale:.{digits}f}]"


def arm_table(res: dict) -> list[str]:
    names = res["factors"]
    head = ["arm", "λ", "content acc %"] + [f"R² {n}" for n in names] + [f"D_k {n}" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for arm, e in res["arms"].items():
        d = e.get("D") or {}
        lines.append(f"| {arm} | {_fmt(e.get('inv_coeff'))} | {_fmt(e['content_acc'], 100, 1)} | "
                     + " | ".join(_fmt(e["r2"][n]) for n in names) + " | " + " | ".join(_fmt(d.get(n)) for n in names) + " |")
    return lines


def mask_table(res: dict) -> list[str]:
    names = res["factors"]
    lines = ["| arm | measure | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    labels = {"D_known": "D_k, known answer as masks", "D_random": "D_k, random masks",
              "logit_spread": "mask-logit spread (std over d)", "subspace_size": "size of S_k at τ",
              "relief_share": "share of the relief q − 1 (eq. 2)", "u_exponent": "exponent b of u_k ∝ δ_k^b"}
    for arm, e in res["arms"].items():
        for key, label in labels.items():
            if key in e:
                digits = 0 if key == "subspace_size" else 2
                lines.append(f"| {arm} | {label} | " + " | ".join(_fmt(e[key][n], digits=digits) for n in names) + " |")
    return lines


def weight_table(res: dict) -> list[str]:
    """Where w varies (mechanism_runs.weight_measures), per MAST-type arm."""
    lines = ["| arm | mean w | w_eff = Σwr²/Σr² | CV over pairs | CV over dims | Var(w) share: pairs | dims | "
             "pair × dim |", "|---|" + "---:|" * 7]
    for arm, e in res["arms"].items():
        if "var_share" in e:
            v = e["var_share"]
            lines.append(f"| {arm} | {_fmt(e['w_mean_heldout'], digits=3)} | {_fmt(e['w_eff_heldout'], digits=3)} | "
                         f"{_fmt(e['cv_pairs'])} | {_fmt(e['cv_dims'])} | {_fmt(v['pairs'])} | {_fmt(v['dims'])} | "
                         f"{_fmt(v['pair_x_dim'])} |")
    return lines


def diff_table(res: dict) -> list[str]:
    names = res["factors"]
    lines = ["| comparison | content acc (points) | " + " | ".join(f"R² {n}" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for comp, e in res["differences"].items():
        lines.append(f"| {comp} | {_fmt(e['content_acc'], 100, 1)} | " + " | ".join(_fmt(e["r2"][n]) for n in names) + " |")
    return lines


def verdict_lines(res: dict) -> list[str]:
    """One generated sentence per verdict: its statement, the intervals it read, holds / does not hold."""
    v, yes = res["verdict"], {True: "**holds**", False: "**does not hold**", None: "not measured (an arm is missing)"}
    lines = []
    for key, (text, tests) in VERDICTS.items():
        read = []
        for comp, measure, _ in tests:
            d = res["differences"].get(comp)
            if d is not None:
                iv = d["content_acc"] if measure == "content_acc" else d["r2"]["strong"]
                unit = (100, 1, "points of content accuracy") if measure == "content_acc" else (1, 3, "R² strong")
                read.append(f"{comp} = {_fmt(iv, unit[0], unit[1])} {unit[2]}")
        state = yes[v.get(key)]
        if key == "masks_differentiate" and v.get("ground_truth_ok") is False:
            state = "not read (the gate failed)"
        lines.append(f"- {text}: {state}" + (f" ({'; '.join(read)})." if read else "."))
    return lines


# Intervals over items of a result file written by this code: seeds crossed with the shared test items. A file
# without the key was written before 2026-12-06, when items were resampled anew per seed (too narrow).
INTERVAL_SCHEME = "seeds crossed with test items (transfer.stats.group_interval)"
NESTED = "ⁿ"


def probe_lines(out_dir: Path) -> list[str]:
    files = sorted((out_dir / "probes").glob("*.json"))
    if not files:
        return ["No probe was run."]
    lines = ["| probe | command | held-out pairs | mast D_k (" + ", ".join(json.loads(files[0].read_text())["factors"])
             + ") | mast logit spread | mast R² strong |", "|---|---|---:|---|---|---:|"]
    for f in files:
        r = json.loads(f.read_text())
        m = r["arms"].get("mast") or r["arms"].get("mast_unc_none") or {}
        d = "; ".join(_fmt((m.get("D") or {}).get(n)) for n in r["factors"])
        sp = "; ".join(_fmt((m.get("logit_spread") or {}).get(n)) for n in r["factors"])
        mark = "" if r.get("interval_scheme") == INTERVAL_SCHEME else NESTED
        lines.append(f"| {f.stem} | `{r['command']}` | {r['settings'].get('heldout_pairs', '?')} | {d} | {sp} | "
                     f"{_fmt(m.get('r2', {}).get('strong'))}{mark} |")
    if any(line.endswith(f"{NESTED} |") for line in lines[2:]):
        lines += ["", f"{NESTED}: a probe written before 2026-12-06: its R² interval resampled the test items anew for "
                  "each seed (nested), which counts one test set once per seed and is too narrow; the crossed "
                  "bootstrap of docs/STATISTICS.md is wider. Its command, run again, refreshes it. (D_k and the "
                  "logit spread are one value per seed: their intervals are unchanged.)"]
    return lines


def plot(res: dict, path: Path) -> None:
    """Left: linear R² per style factor per arm; right: MAST arms' D_k (learned, known answer, random)."""
    names, arms = res["factors"], list(res["arms"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        ivs = [res["arms"][arm]["r2"][n] for n in names]
        x = np.arange(len(names)) + (i - (len(arms) - 1) / 2) * width
        y = np.array([v["value"] for v in ivs])
        err = np.array([[v["value"] - v["lo"] for v in ivs], [v["hi"] - v["value"] for v in ivs]])
        axes[0].bar(x, y, width, yerr=err, capsize=2, label=arm, color=plt.cm.tab20(i % 20))
    axes[0].set_xticks(range(len(names)), names)
    axes[0].set_ylabel("linear R² from the backbone output")
    axes[0].set_title("style information kept (95 % intervals over seeds)", fontsize=9)
    axes[0].legend(fontsize=6, ncol=2, loc="lower left")
    series = [(f"{arm}: {key}", res["arms"][arm][key]) for arm in arms for key in ("D", "D_known", "D_random")
              if key in res["arms"][arm]]
    width = 0.8 / max(1, len(series))
    for i, (label, e) in enumerate(series):
        ivs = [e[n] or {"value": np.nan, "lo": np.nan, "hi": np.nan} for n in names]
        x = np.arange(len(names)) + (i - (len(series) - 1) / 2) * width
        y = np.array([v["value"] for v in ivs])
        err = np.array([[v["value"] - v["lo"] for v in ivs], [v["hi"] - v["value"] for v in ivs]])
        axes[1].bar(x, y, width, yerr=err, capsize=2, label=label, color=plt.cm.tab20(i % 20))
    axes[1].axhline(D_MIN, color="grey", lw=0.8, ls="--")
    axes[1].set_xticks(range(len(names)), names)
    axes[1].set_ylim(-1, 1.05)
    axes[1].set_ylabel("D_k (Spearman over dimensions)")
    axes[1].set_title("mask differentiation D_k (METHOD.md §5)", fontsize=9)
    axes[1].legend(fontsize=5, ncol=2, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path) -> Path:
    """index.md + mechanism.png from OUT/results.json (and any OUT/probes/*.json)."""
    res = json.loads((out_dir / "results.json").read_text())
    plot(res, out_dir / "mechanism.png")
    t, s, world = res["time"], res["settings"], res["world"]
    load = t.get("load_avg")
    lines = [
        TITLE, "",
        f"Made by `{res['command']}` ({res['seeds']} seeds per arm, {s['steps']} steps of batch {s['batch']}, "
        f"embedding d = {s['embed_dim']}, {s['heldout_pairs']} held-out pairs; wall {t['wall_s']:.0f} s, CPU "
        f"{t['cpu_s']:.0f} s over {t.get('jobs', 1)} process(es) of {t['threads']} torch thread(s), on "
        f"{t.get('cpus', 2)} CPUs" + (f", 1-min load average {load[0]:.1f} at the start and {load[1]:.1f} at the end"
                                      if load else "") + "). Code: `benchmarks/mechanism*.py`; docs: `docs/MECHANISM.md`.", "",
        f"World: {world['n_classes']} content classes; style factors {', '.join(res['factors'])} with augmentation "
        f"strengths a_k = {', '.join(f'{a:g}' for a in world['strengths'])}; downstream signal: "
        f"{', '.join(n for n, sg in zip(res['factors'], world['signal']) if sg)} (and the class); mixed into "
        f"{world['obs_dim']}-d observations by a fixed random 2-hidden-layer tanh map.", "",
        "Arms: `vicreg` (λ 25); `mast` (METHOD.md); `mast_tied` (masks tied across dimensions: one relief weight per "
        "augmentation, the same head; the control that removes only the per-dimension choice); `mast_unc_none` "
        "(`uncertainty: none`); `mast_budget` / `mast_budget_tied` (the variant of docs/MECHANISM.md: the reliefs "
        "of a dimension share a budget, and its tied control); `matched_X`: VICReg with λ = 25 × w_eff of arm X's own "
        "same-seed run (mast/matched.py: w_eff = Σwr²/Σr², mean over the last max(50, one epoch) steps); "
        "`matched_mean_X`: the same with the mean w.", "",
        "## Verdicts (stated in the code before the run; generated)", "", *verdict_lines(res), "",
        "## Each arm (mean [95 % interval] over seeds)", "", *arm_table(res), "",
        "D_k is n/a without masks (VICReg) and undefined for tied masks (one value over all dimensions ranks nothing).", "",
        "## Differences (A − B, paired by seed and test item)", "", *diff_table(res), "",
        "## Where the invariance weights vary (held-out pairs of the training distribution)", "", *weight_table(res), "",
        "## Masks and uncertainty", "", *mask_table(res), "",
        "![R² and D_k](mechanism.png)", "",
        "## Probes of the cause (MAST arms only, same world; each made by the code of its day)", "",
        *probe_lines(out_dir), "",
    ]
    path = out_dir / "index.md"
    write_text_atomic(path, "\n".join(lines))
    return path
