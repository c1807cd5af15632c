"""The layers of README "Layout": no import goes up, none goes in a circle.

mast/ (core) <- transfer/ floor (checkpoints, convert, records, engines, suite) <- transfer tasks
(detection/, segmentation/, probes/) <- reports/ <- orchestration (run_all, demo: subprocesses).
Every import statement counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mast", "transfer", "reports")
TASKS = ("transfer.detection", "transfer.segmentation", "transfer.probes",
         "transfer.fewshot", "transfer.linear", "transfer.knn")
ORCHESTRATION = ("transfer.run_all", "transfer.demo")
FLOOR = ("checkpoints", "layouts", "safe_files", "convert", "inspect", "records", "engines", "suite", "stats")
# (importer prefix, forbidden prefixes): a module under the first must not import the others.
FORBIDDEN = (
    ("mast", ("transfer", "reports")),
    ("transfer", ("reports",)),
    ("reports", TASKS + ORCHESTRATION),
    *((task, ORCHESTRATION) for task in TASKS),
    *((f"transfer.{floor}", TASKS + ORCHESTRATION) for floor in FLOOR),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))
            if "mmseg_configs" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (``from a import b`` counts as a.b when that is a module)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_import_goes_up_a_layer():
    bad = [f"{a} imports {b}" for a, targets in _graph().items() for b in sorted(targets)
           for low, high in FORBIDDEN if _under(a, low) and any(_under(b, h) for h in high)]
    assert not bad, "upward imports: " + "; ".join(bad)


def test_no_import_cycles():
    graph = _graph()
    edges = {a: sorted(b for b in targets if b in graph and b != a) for a, targets in graph.items()}
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(cycles)


@pytest.mark.parametrize("source, forbidden", [("from transfer.records import read_jsonl", "transfer"),
                                               ("import reports.build", "reports")])
def test_the_check_sees_an_upward_import(tmp_path, source, forbidden):
    path = tmp_path / "mod.py"
    path.write_text(f"def f():\n    {source}\n")
    found = imports_of("mast.mod", path, set(project_modules()))
    assert any(_under(m, forbidden) for m in found)
