"""Build a report folder from ``results.jsonl``: tables.md, tables.tex, results.csv, plots, index.md.

    python -m reports.build --results runs/transfer --out reports/NAME [--baseline NAME]

Also run by ``transfer/run_all.py`` (as a subprocess) at the end of a suite. For every checkpoint that comes from
a MAST pretraining run (its folder holds ``mast_state.pth``), index.md adds the METHOD.md §5
figures: sensitivity heat map, subspace sizes, augmentation relations, uncertainty vs. strength.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

from mast import rundir
from plumbing.atomic import write_text_atomic
from plumbing.lock import LOCK_NAME, FolderBusyError, FolderLock
from plumbing.provenance import code_version, file_sha256
from plumbing.safe_read import UnreadableFile, read_regular_text, short
from reports import mast_plots, narrative, plots, tables
from reports.results import Results, commands, load_results


def mast_state_path(results: Results, name: str) -> Path | None:
    """``mast_state.pth`` next to the checkpoint of ``name``; None for the random-init floor or other files."""
    for (n, _), record in results.records.items():
        path = (record.get("checkpoint") or {}).get("path")
        if n == name and path and Path(path).name != rundir.BACKBONE_INIT:
            candidate = Path(path).parent / rundir.MAST_STATE
            if candidate.is_file():
                return candidate
    return None


MANIFEST = ".report-files"  # what the last build wrote, with each file's sha256: the only files a rebuild may remove
_SHA256 = re.compile(r"[0-9a-f]{64}")


def build(results_path: str | Path, out: str | Path, baseline: str | None = None, command: str | None = None) -> Path:
    """Write the whole report into ``out``; returns the path of index.md. Files in ``out`` that an
    earlier build did not write (a user's notes, a logo) are never touched; one build at a time."""
    results = load_results(results_path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder (expected the report folder)")
    with FolderLock(out, "reports.build"):
        tables.ordered_names(results, baseline)  # checks the baseline before anything is written
        _claim(out, _planned_names(results))
        md = tables.markdown_report(results, baseline)
        write_text_atomic(out / "tables.md", md)
        write_text_atomic(out / "tables.tex", tables.latex_report(results, baseline))
        write_text_atomic(out / "results.csv", tables.tidy_frame(results, baseline).to_csv(index=False))
        bars = [(t, plots.task_bars(results, t, baseline, out / f"bars_{t}.png")) for t in results.tasks]
        forest = plots.forest(results, baseline, out / "forest.png")
        mast = {}
        for name in results.names:
            state_path = mast_state_path(results, name)
            if state_path is not None:
                state = mast_plots.load_state(state_path)
                mast[name] = (state_path, mast_plots.mast_figures(state, out, f"mast_{name}"))
        if command is None:
            command = "python -m reports.build " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        write_text_atomic(out / "index.md", _index(results, results_path, out, baseline, command, md, bars, mast,
                                                   forest))
        written = {"index.md", "tables.md", "tables.tex", "results.csv"} | ({forest.name} if forest else set())
        written |= {p.name for _, p in bars if p is not None}
        written |= {p.name for _, (_, res) in mast.items() for _, p in res["figures"]}
        _replace_manifest(out, written)
    return out / "index.md"


MAST_FIGURES = ("sensitivity", "subspaces", "relations", "uncertainty")  # mast_plots.mast_figures' file names


def _planned_names(results: Results) -> set[str]:
    """Every file a build of ``results`` may write into its folder."""
    names = {"index.md", "tables.md", "tables.tex", "results.csv", "forest.png"}
    names |= {f"bars_{t}.png" for t in results.tasks}
    return names | {f"mast_{n}_{figure}.png" for n in results.names for figure in MAST_FIGURES}


def _read_manifest(out: Path) -> tuple[dict[str, str | None], str]:
    """({file name: sha256 it had when the previous build wrote it, or None}, what was wrong or "").

    Only a name with a recorded hash may ever be deleted, and only while the file still has that hash
    (a planted or edited manifest cannot make this tool delete a file it did not write). An entry
    that is not a plain file name of ``out`` (``..``, a path, a number) is ignored with a warning; a
    list of names (the older manifest) claims names without hashes: overwritten, never deleted."""
    path = out / MANIFEST
    if not os.path.lexists(path):
        return {}, ""
    try:
        entries = json.loads(read_regular_text(path, "report manifest", 1 << 20, follow=False))
    except (UnreadableFile, ValueError, RecursionError) as e:
        return {}, f"{path} is unreadable ({short(e, 100) if isinstance(e, UnreadableFile) else type(e).__name__})"
    if isinstance(entries, list):
        entries = {e: None for e in entries if isinstance(e, str)}
    if not isinstance(entries, dict) or not all(h is None or isinstance(h, str) and _SHA256.fullmatch(h)
                                                for h in entries.values()):
        return {}, f"{path} is not a mapping of file names to their sha256"

    def plain(e) -> bool:
        return isinstance(e, str) and e not in (".", "..", MANIFEST, LOCK_NAME) and Path(e).name == e \
            and "\\" not in e and "\0" not in e

    good = {e: h for e, h in entries.items() if plain(e)}
    bad = [short(e, 60) for e in entries if not plain(e)][:3]
    if bad:
        warnings.warn(f"{path}: entries {bad} are not file names of this folder; ignored", stacklevel=2)
    return good, ""


def _claim(out: Path, planned: set[str]) -> None:
    """Refuse to overwrite a file this tool did not write (a user's own index.md); record the planned
    names before writing, so a build stopped half-way still owns what it wrote."""
    previous, problem = _read_manifest(out)
    foreign = sorted(n for n in planned if os.path.lexists(out / n) and n not in previous)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        why = f"{problem}: cannot tell which files it wrote" if problem else f"not in {MANIFEST}"
        raise FileExistsError(f"--out {out}: {foreign[0]}{more} exists and was not written by reports.build "
                              f"({why}); move it or choose another --out")
    write_text_atomic(out / MANIFEST, json.dumps({n: previous.get(n) for n in sorted(set(previous) | planned)},
                                                 indent=0) + "\n")


def _replace_manifest(out: Path, written: set[str]) -> None:
    """Remove what the previous build wrote and this one did not (stale figures), only while it holds
    exactly what was written (its recorded sha256); record this build's files with their hashes."""
    for name, digest in _read_manifest(out)[0].items():
        path = out / name
        if name in written or not os.path.lexists(path):
            continue
        if digest is None or path.is_symlink() or not path.is_file() or file_sha256(path) != digest:
            warnings.warn(f"{path}: not removed: its content is not what reports.build recorded writing", stacklevel=2)
            continue
        try:
            path.unlink()
        except OSError as e:
            warnings.warn(f"{path}: stale report file not removed ({e.strerror or type(e).__name__})", stacklevel=2)
    write_text_atomic(out / MANIFEST, json.dumps({n: file_sha256(out / n) for n in sorted(written)}, indent=0) + "\n")


def _index(results: Results, results_path, out: Path, baseline, command: str, md: str, bars, mast,
           forest: Path | None) -> str:
    versions = sorted({str(r.get("code_version")) for r in results.records.values() if r.get("code_version")})
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Transfer report" + (f": {out.name}" if out.name.lower() not in ("report", "reports") else ""), "",
        f"How this was made: `{command}` on {now}; report code {code_version()}; results from "
        f"`{results_path}` ({len(results.records)} task records, code versions {', '.join(versions) or 'unknown'}). "
        f"Rebuild with `python -m reports.build --results {results_path} --out {out}"
        + (f" --baseline {baseline}`." if baseline else "`."), "",
        *_made_by(results),
        "Files: [tables.md](tables.md), [tables.tex](tables.tex) (booktabs), [results.csv](results.csv) "
        "(tidy: one row per metric, and per seed; `delta`, `delta_lo`, `delta_hi`, `n_seeds`). How the intervals "
        "are computed: docs/STATISTICS.md.", "",
        "## What the numbers say", "", *narrative.summary_lines(results, baseline),
        *([f"![differences to {baseline}]({forest.name})", ""] if forest else []),
        "## Checkpoints", "", "| name | method | arch | sha256 | file |", "|---|---|---|---|---|",
    ]
    for name in tables.ordered_names(results, baseline):
        seeds: dict[int, dict] = {}  # seed index -> the first record that names its checkpoint
        for (n, _), runs in results.runs.items():
            for i, r in enumerate(runs):
                if n == name and (r.get("checkpoint") or {}).get("sha256"):
                    seeds.setdefault(int(r.get("seed_index") or i), r)
        for i, rec in sorted(seeds.items()) or [(0, {})]:
            ck = rec.get("checkpoint") or {}
            label = tables.seed_label(name, i) if len(seeds) > 1 else name
            method = tables.method_label(rec, name)  # a foreign file: the codebase that wrote it
            lines.append(f"| {label} | {method} | {ck.get('arch', '?')} | "
                         f"`{str(ck.get('sha256', ''))[:12]}` | `{ck.get('resolved') or _rel(ck.get('path', '?'))}` |")
    lines += ["", md.split("\n", 1)[1].replace("\n## ", "\n### ").strip(), ""]
    failed = [(n if len(runs) == 1 else tables.seed_label(n, i), t, r)
              for (n, t), runs in results.runs.items() for i, r in enumerate(runs) if r.get("status") != "ok"]
    if failed:
        lines += ["## Tasks without a result", "", "| checkpoint | task | status | reason |", "|---|---|---|---|"]
        lines += [f"| {n} | {t} | {r.get('status')} | {' '.join(str(r.get('error') or '').split())[:300].replace('|', '/')} |"
                  for n, t, r in failed]
        lines.append("")
    lines += ["## Per-task plots", ""]
    lines += [f"![{t}]({p.name})" for t, p in bars if p is not None]
    for name, (state_path, res) in mast.items():
        if not res["figures"]:  # e.g. a VICReg run: no masks, no uncertainty
            continue
        lines += ["", f"## MAST subspaces and uncertainty: {name}", "",
                  f"From `{_rel(state_path)}` (METHOD.md §5; τ = {res['tau']:g}).", ""]
        lines += _mast_numbers(res)
        for title, path in res["figures"]:
            lines += [f"**{title}**", "", f"![{title}]({path.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _made_by(results: Results) -> list[str]:
    """The commands behind the shown records (results.commands), one bullet each."""
    made = commands(results)
    return ["The shown records were made by:", "", *[f"- `{c}`" for c in made], ""] if made else []


def _rel(path) -> str:
    """A path relative to the working directory when it lies below it (a committed report stays portable)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _mast_numbers(res: dict) -> list[str]:
    names = res["aug_names"]
    lines = []
    if "stats" in res:
        s = res["stats"]
        lines += [f"d = {s['d']}: {s['unique_total']} dimensions in exactly one subspace (unique), "
                  f"{s['shared_total']} in several (shared), {s['in_none']} in none.", ""]
    if "w_mean_heldout" in res:
        lines += [f"Mean invariance weight w = 1/q (eq. 4) over the held-out pairs: {res['w_mean_heldout']:.3f}.", ""]
    diff = res.get("differentiation")
    if "stats" in res:
        lines += [MASK_DIFFERENTIATION_NOTE if diff else
                  "Mask differentiation D_k: not in this run's mast_state.pth (a run from before issue 25).", ""]
    if "stats" in res or "rho" in res:
        lines += ["| augmentation | " + ("size of S_k | unique | non-invariant | " if "stats" in res else "")
                  + ("D_k | mask-logit spread | " if diff else "") + ("Spearman ρ(u_k, δ_k) |" if "rho" in res else ""),
                  "|---|" + ("---|---|---|" if "stats" in res else "") + ("---|---|" if diff else "")
                  + ("---|" if "rho" in res else "")]
        for k, n in enumerate(names):
            row = f"| {n} | "
            if "stats" in res:
                s = res["stats"]
                row += f"{s['size'][k]} | {s['unique'][k]} | {s['non_invariant'][k]} | "
            if diff:
                row += f"{_num(diff['D'].get(n))} | {_num(diff['logit_spread'].get(n))} | "
            if "rho" in res:
                rho = res["rho"].get(n)
                row += ("n/a" if rho is None else f"{rho:.2f}") + " |"
            lines.append(row)
        lines.append("")
    return lines


MASK_DIFFERENTIATION_NOTE = (
    "Beside each subspace (eq. 1'), its mask differentiation D_k (METHOD.md §5): on held-out images, the "
    "Spearman correlation over dimensions between 1 − m_kj and each dimension's measured sensitivity to k "
    "(pairs where only k differs). D_k ≈ 1: mask k knows which dimensions k moves; D_k ≈ 0: it does not, "
    "and an all-or-nothing S_k is then a per-augmentation weight set by ū_k, not a subspace.")


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True, help="results.jsonl or the folder holding it")
    p.add_argument("--out", type=Path, required=True, help="report folder, e.g. reports/NAME")
    p.add_argument("--baseline", default=None, help="checkpoint name the tables compare against")
    p.add_argument("--command", default=None, help="the command index.md says made the report (default: this one)")
    args = p.parse_args(argv)
    try:
        index = build(args.results, args.out, args.baseline, args.command)
    except (FileNotFoundError, ValueError, FolderBusyError, OSError) as e:
        print(f"reports.build: error: {e}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
