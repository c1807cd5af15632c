"""The layers of README "Layout": every module sits in exactly one, no import goes up, none in a circle.

    benchmarks      benchmarks/                    may import every layer; nothing imports it
    orchestration   transfer/orchestrate/, transfer/run_all.py (start tasks and reports as subprocesses)
    reports         reports/                       core + floor + backbones (reads records and checkpoint files as
                                                   data, not task code)
    tasks           transfer/detection/, transfer/segmentation/, transfer/probes/ (core + floor + backbones)
    backbones       transfer/backbones/ (read once, one package per family) and its two commands,
                    transfer/convert.py and transfer/inspect_checkpoint.py (core + floor + backbones)
    floor           transfer/'s top-level modules listed in FLOOR (core + floor)
    core            mast/                          (plumbing)
    plumbing        plumbing/                      imports nothing of the project

A module's layer follows from its package path, except the floor and the backbones' two commands
(``python -m transfer.convert`` / ``transfer.inspect_checkpoint`` keep their names), which are listed by
name: a new file at ``transfer/``'s top level must be placed on purpose. A module no rule places
fails the check. Every import statement counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("plumbing", "mast", "transfer", "reports", "benchmarks")
NOT_MODULES = ("transfer.mmseg_configs", "transfer.mmpretrain_configs")  # mmengine config files, read by path, never imported
FLOOR = ("transfer", "transfer.records", "transfer.engines", "transfer.stats", "transfer.hub", "transfer.imagenet")
BACKBONE_COMMANDS = ("transfer.convert", "transfer.inspect_checkpoint")
TASK_PACKAGES = ("transfer.detection", "transfer.segmentation", "transfer.probes", "transfer.classification")
# (layer, rule): each module must match exactly one rule.
RULES = (
    ("plumbing", lambda m: _under(m, "plumbing")),
    ("core", lambda m: _under(m, "mast")),
    ("floor", lambda m: m in FLOOR),
    ("backbones", lambda m: _under(m, "transfer.backbones") or m in BACKBONE_COMMANDS),
    ("tasks", lambda m: any(_under(m, p) for p in TASK_PACKAGES)),
    ("reports", lambda m: _under(m, "reports")),
    ("orchestration", lambda m: _under(m, "transfer.orchestrate") or m == "transfer.run_all"),
    ("benchmarks", lambda m: _under(m, "benchmarks")),
)
ALLOWED = {  # layer -> the layers its modules may import
    "plumbing": {"plumbing"},
    "core": {"plumbing", "core"},
    "floor": {"plumbing", "core", "floor"},
    "backbones": {"plumbing", "core", "floor", "backbones"},
    "tasks": {"plumbing", "core", "floor", "backbones", "tasks"},
    "reports": {"plumbing", "core", "floor", "backbones", "reports"},  # mast_plots reads a state file as data (backbones.read)
    "orchestration": {"plumbing", "core", "floor", "backbones", "tasks", "reports", "orchestration"},
    "benchmarks": {"plumbing", "core", "floor", "backbones", "tasks", "reports", "orchestration", "benchmarks"},
}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of PACKAGES under ``root`` (name -> file), configs excepted."""
    modules = {_module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    return {m: p for m, p in modules.items() if not any(_under(m, x) for x in NOT_MODULES)}


def layers_of(name: str) -> list[str]:
    """The layers whose rule places ``name`` (exactly one for a known module)."""
    return [layer for layer, rule in RULES if rule(name)]


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


def graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def unplaced(root: Path = REPO) -> list[str]:
    """``"NAME: in no layer"`` / ``"NAME: in layers a, b"`` for every module not in exactly one layer."""
    out = []
    for name in project_modules(root):
        found = layers_of(name)
        if len(found) != 1:
            out.append(f"{name}: " + (f"in layers {', '.join(found)}" if found else "in no layer (add a rule or list it in FLOOR)"))
    return out


def upward_imports(root: Path = REPO) -> list[str]:
    """``"A (layer) imports B (layer)"`` for every import its layer may not make."""
    bad = []
    for a, targets in graph(root).items():
        (layer_a,) = layers_of(a) or ("?",)
        for b in sorted(targets):
            layer_b = (layers_of(b) or ["?"])[0]
            if layer_a in ALLOWED and layer_b not in ALLOWED[layer_a]:
                bad.append(f"{a} ({layer_a}) imports {b} ({layer_b})")
            elif layer_a == "tasks" and layer_b == "tasks" and _task_of(a) != _task_of(b):
                bad.append(f"{a} imports {b}: one task package imports another")
    return bad


def _task_of(name: str) -> str:
    return next(p for p in TASK_PACKAGES if _under(name, p))


def test_every_module_is_in_exactly_one_layer():
    assert not unplaced(), "; ".join(unplaced())


def test_every_listed_floor_module_exists():
    modules = project_modules()
    assert [m for m in FLOOR + BACKBONE_COMMANDS if m not in modules] == []


def test_no_import_goes_up_a_layer():
    bad = upward_imports()
    assert not bad, "upward imports: " + "; ".join(bad)


def test_no_import_cycles():
    edges = {a: sorted(b for b in targets if b != a) for a, targets in graph().items()}
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state and nxt in edges:
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


def test_the_check_fails_on_an_unknown_or_misplaced_module(tmp_path):
    files = {
        "mast/__init__.py": "",
        "mast/core.py": "def f():\n    from transfer.stats import Interval\n",  # core -> floor: up
        "plumbing/__init__.py": "",
        "plumbing/jobs.py": "import mast.core\n",  # plumbing -> core: up
        "transfer/__init__.py": "",
        "transfer/stats.py": "",
        "transfer/helpers.py": "",  # top-level transfer module no rule places
        "transfer/probes/__init__.py": "",
        "transfer/probes/knn.py": "from transfer.detection import runner\n",  # task -> other task
        "transfer/detection/__init__.py": "",
        "transfer/detection/runner.py": "from transfer.backbones import loader\n",  # task -> backbones: allowed
        "transfer/backbones/__init__.py": "",
        "transfer/backbones/loader.py": "from transfer.probes import knn\n",  # backbones -> task: up
        "transfer/orchestrate/__init__.py": "",
        "transfer/orchestrate/jobs.py": "",  # new orchestration module: placed by its package path
        "reports/__init__.py": "",
        "reports/r.py": "from transfer.orchestrate import jobs\n",  # reports -> orchestration: up
        "benchmarks/new_bench.py": "import mast.core\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert unplaced(tmp_path) == ["transfer.helpers: in no layer (add a rule or list it in FLOOR)"]
    assert sorted(upward_imports(tmp_path)) == [
        "mast.core (core) imports transfer.stats (floor)",
        "plumbing.jobs (plumbing) imports mast.core (core)",
        "reports.r (reports) imports transfer.orchestrate (orchestration)",
        "reports.r (reports) imports transfer.orchestrate.jobs (orchestration)",
        "transfer.backbones.loader (backbones) imports transfer.probes (tasks)",
        "transfer.backbones.loader (backbones) imports transfer.probes.knn (tasks)",
        "transfer.probes.knn imports transfer.detection.runner: one task package imports another",
        "transfer.probes.knn imports transfer.detection: one task package imports another",
    ]


def test_no_module_shadows_the_standard_library():
    """A script run by path (``python transfer/run_all.py``) puts its folder first on sys.path: every
    module beside it is then importable by its bare name and must not hide a standard module."""
    import sys

    bare = {name.rpartition(".")[2] for name in project_modules()}
    assert sorted(bare & set(sys.stdlib_module_names)) == []
