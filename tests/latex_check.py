"""The structure of a generated tables.tex, checked without a LaTeX compiler (tests/reports/test_family_tables.py
also compiles it with pdflatex where one is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

TABULAR = re.compile(r"\\begin\{tabular\}\{(l(?:c)*)\}\n(.*?)\\end\{tabular\}", re.S)


def _cells(row: str) -> int:
    """Columns a tabular row spans: its & separators + 1, with \\multicolumn{k} counted as k."""
    spans = sum(int(k) - 1 for k in re.findall(r"\\multicolumn\{(\d+)\}", row))
    return row.count(" & ") + 1 + spans


def check_structure(tex: str) -> list[dict]:
    """Asserts what every compiler would refuse or misprint; returns per table its column count,
    header rows and body row labels."""
    assert tex.isascii(), "a non-ASCII character (pdflatex without inputenc setup would stop)"
    depth = 0
    for ch in tex.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a closing brace without an opening one"
    assert depth == 0, "unbalanced braces"
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    text = re.sub(r"\$[^$]*\$", "", re.sub(r"\{%$", "{", body, flags=re.M))  # math may hold _ ^; {% ends a line
    assert not re.search(r"(?<!\\)[_%&#^]", text.replace(" & ", " ")), "an unescaped special character"
    assert body.count("$") % 2 == 0, "an unclosed math shift"
    for env in ("table", "table*"):
        assert body.count(rf"\begin{{{env}}}") == body.count(rf"\end{{{env}}}")
    out = []
    for spec, inner in TABULAR.findall(body):
        n = len(spec)
        assert inner.lstrip().startswith(r"\toprule") and inner.rstrip().endswith(r"\bottomrule"), "booktabs rules"
        head, rows = inner.split(r"\midrule", 1)
        head_rows = [r for r in head.replace(r"\toprule", "").strip().splitlines() if not r.startswith(r"\cmidrule")]
        for rule in re.findall(r"\\cmidrule\(lr\)\{(\d+)-(\d+)\}", head):
            assert 2 <= int(rule[0]) <= int(rule[1]) <= n, f"cmidrule {rule} outside columns 2..{n}"
        lines = [r for r in rows.replace(r"\bottomrule", "").strip().splitlines() if r != r"\midrule"]
        for row in head_rows + lines:
            assert row.endswith(r"\\") and _cells(row) == n, f"{row!r}: expected {n} cells"
        out.append({"columns": n, "header": head_rows, "labels": [r.split(" & ")[0] for r in lines]})
    assert len(out) == body.count(r"\begin{tabular}")
    return out


DOCUMENT = "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n\\input{tables.tex}\n\\end{document}\n"


def compile_pdf(tex_file: Path, workdir: Path) -> tuple[bool, str]:
    """pdflatex on a minimal article that \\input's ``tex_file`` (copied into ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(tex_file, workdir / "tables.tex")
    (workdir / "doc.tex").write_text(DOCUMENT)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    return done.returncode == 0 and (workdir / "doc.pdf").is_file(), done.stdout[-3000:]


def pdflatex() -> str | None:
    return shutil.which("pdflatex")
