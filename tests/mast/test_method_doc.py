"""docs/METHOD.md's "equation -> computed by" table names code that exists, so it cannot go stale.

Every backticked name in the table's second column is resolved: ``mast.loss.objective`` by import
and getattr; a bare name (``SubspaceModule.subspaces``, ``UncertaintyHeads``) in the module of the
last fully qualified name before it in the same row; ``reports/x.py`` as a file; ``x.pth`` as a
run-folder file named by :mod:`mast.rundir`.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from mast import rundir

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("mast", "transfer", "reports")


def table_rows(text: str) -> list[tuple[str, list[str]]]:
    """(equation, backticked names) per row of the table headed ``| equation | computed by |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*equation\s*\|\s*computed by\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def resolve(name: str, context: str | None) -> tuple[object, str | None]:
    """(the object ``name`` names, the module later bare names in its row resolve in). Raises LookupError."""
    if name.endswith(".py"):
        if not (REPO / name).is_file():
            raise LookupError(f"{name}: no such file")
        return REPO / name, name[:-3].replace("/", ".")
    if name.endswith(".pth"):
        files = {v for k, v in vars(rundir).items() if k.isupper()}
        if name not in files:
            raise LookupError(f"{name}: not a run-folder file of mast/rundir.py ({sorted(files)})")
        return name, context
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        if context is None:
            raise LookupError(f"{name}: a bare name with no qualified name before it in its row")
        return resolve(f"{context}.{name}", context)
    for cut in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise LookupError(f"{name}: {module_name} has no {'.'.join(parts[cut:])}")
            obj = getattr(obj, attr)
        return obj, module_name
    raise LookupError(f"{name}: no module of it can be imported")


def unresolved(text: str) -> list[str]:
    """``"(eq): name: why"`` for every name of the table that does not resolve."""
    bad = []
    for equation, names in table_rows(text):
        context = None
        for name in names:
            try:
                _, context = resolve(name, context)
            except LookupError as e:
                bad.append(f"{equation}: {e}")
    return bad


def test_every_function_the_method_table_names_exists():
    text = (REPO / "docs" / "METHOD.md").read_text()
    rows = table_rows(text)
    assert len(rows) >= 8 and all(names for _, names in rows)
    assert unresolved(text) == []


@pytest.mark.parametrize("cell, why", [
    ("`mast.loss.no_such_term`", "mast.loss has no no_such_term"),
    ("`mast.model.sensitivities`, `SubspaceModule.no_such_method`", "mast.model has no SubspaceModule.no_such_method"),
    ("`NoContext`", "a bare name with no qualified name"),
    ("`reports/no_such.py`", "no such file"),
    ("`no_such_state.pth`", "not a run-folder file"),
])
def test_the_check_fails_on_a_stale_name(cell, why):
    text = f"intro\n\n| equation | computed by |\n|---|---|\n| (9) x | {cell} |\n\nafter\n"
    (bad,) = unresolved(text)
    assert bad.startswith("(9) x: ") and why in bad
