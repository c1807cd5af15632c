"""The layers of README "Layout" (docs/LAYOUT.md): every module sits in exactly one, no import goes up, none in a circle.

    benchmarks      benchmarks/                    may import every layer; nothing imports it
    orchestration   transfer/orchestrate/          start tasks and reports as subprocesses
    reports         reports/                       plumbing + core + floor + backbones (reads records and
                                                   checkpoint files as data, not task code)
    tasks           transfer/{detection,segmentation,classification,probes}/ (... + backbones; never one another)
    backbones       transfer/backbones/            read once, one package per family (... + floor)
    floor           transfer/'s own modules        (plumbing + core + floor)
    core            mast/                          (plumbing)
    plumbing        plumbing/                      imports nothing of the project

A module's layer is its package's (PACKAGE_LAYERS): a package split into layers (``transfer``) names each
of its subpackages, so a new subpackage is in no layer until it is placed on purpose, while a module
added to a placed package (``transfer/stats.py``, ``mast/new.py``) takes that package's layer. A
command's short path (``transfer/run_all.py``, ``transfer/convert.py``: nothing but ``from X import
main`` and the ``__main__`` guard) takes the layer of the module whose ``main`` it runs. A module no rule
places fails the check. Every import statement counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("plumbing", "mast", "transfer", "reports", "benchmarks")
NOT_MODULES = ("transfer.mmseg_configs", "transfer.mmpretrain_configs")  # mmengine config files, read by path, never imported
PACKAGE_LAYERS = {
    "plumbing": "plumbing",
    "mast": "core",
    "transfer": "floor",  # transfer's own modules: records, stats, engines, hub, imagenet
    "transfer.backbones": "backbones",
    "transfer.detection": "tasks",
    "transfer.segmentation": "tasks",
    "transfer.classification": "tasks",
    "transfer.probes": "tasks",
    "transfer.orchestrate": "orchestration",
    "reports": "reports",
    "benchmarks": "benchmarks",
}
TASK_PACKAGES = tuple(p for p, layer in PACKAGE_LAYERS.items() if layer == "tasks")
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


def command_target(path: Path) -> str | None:
    """``X`` when the file is only a command's short path: a docstring, ``from X import main`` and the
    ``if __name__ == "__main__"`` guard; otherwise None."""
    body = ast.parse(path.read_text(), str(path)).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if len(body) == 2 and isinstance(body[0], ast.ImportFrom) and [a.name for a in body[0].names] == ["main"] \
            and isinstance(body[1], ast.If) and "__name__" in ast.unparse(body[1].test):
        return body[0].module
    return None


def layers_of(name: str, modules: dict[str, Path] | None = None) -> list[str]:
    """The layer of ``name`` by its package (PACKAGE_LAYERS); [] when no rule places it."""
    modules = project_modules() if modules is None else modules
    target = command_target(modules[name]) if name in modules else None
    if target is not None and target != name:
        return layers_of(target, modules)
    parts = name.split(".")
    top, sub = parts[0], ".".join(parts[:2])
    split = any(p.startswith(top + ".") for p in PACKAGE_LAYERS)  # a package whose subpackages sit in other layers
    if split and len(parts) > 1 and sub in modules and modules[sub].name == "__init__.py":
        return [PACKAGE_LAYERS[sub]] if sub in PACKAGE_LAYERS else []
    return [PACKAGE_LAYERS[top]] if top in PACKAGE_LAYERS else []


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
    """``"NAME: in no layer"`` for every module no package rule places."""
    modules = project_modules(root)
    return [f"{name}: in no layer (place its package in PACKAGE_LAYERS)" for name in modules
            if not layers_of(name, modules)]


def upward_imports(root: Path = REPO) -> list[str]:
    """``"A (layer) imports B (layer)"`` for every import its layer may not make."""
    bad, modules = [], project_modules(root)
    for a, targets in graph(root).items():
        (layer_a,) = layers_of(a, modules) or ("?",)
        for b in sorted(targets):
            layer_b = (layers_of(b, modules) or ["?"])[0]
            if layer_a in ALLOWED and layer_b not in ALLOWED[layer_a]:
                bad.append(f"{a} ({layer_a}) imports {b} ({layer_b})")
            elif layer_a == "tasks" and layer_b == "tasks" and _task_of(a) != _task_of(b):
                bad.append(f"{a} imports {b}: one task package imports another")
    return bad


def _task_of(name: str) -> str:
    return next(p for p in TASK_PACKAGES if _under(name, p))


def test_every_module_is_in_exactly_one_layer():
    assert not unplaced(), "; ".join(unplaced())


def test_every_placed_package_exists_and_commands_take_their_target_layer():
    modules = project_modules()
    assert [p for p in PACKAGE_LAYERS if not (REPO / p.replace(".", "/")).is_dir()] == []
    commands = {m: command_target(p) for m, p in modules.items() if command_target(p)}
    assert commands == {"transfer.run_all": "transfer.orchestrate.run_all", "transfer.convert": "transfer.backbones.convert",
                        "transfer.inspect_checkpoint": "transfer.backbones.inspect_checkpoint"}
    assert [layers_of(m, modules) for m in sorted(commands)] == [["backbones"], ["backbones"], ["orchestration"]]


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
        "transfer/helpers.py": "",  # a new floor module: placed by its package
        "transfer/extras/__init__.py": "",  # a new subpackage of the split package: placed by no rule
        "transfer/extras/tool.py": "",
        "transfer/cmd.py": '"""short path"""\nfrom transfer.orchestrate.jobs import main\n\nif __name__ == "__main__":\n    main()\n',
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
    assert unplaced(tmp_path) == ["transfer.extras: in no layer (place its package in PACKAGE_LAYERS)",
                                  "transfer.extras.tool: in no layer (place its package in PACKAGE_LAYERS)"]
    modules = project_modules(tmp_path)
    assert layers_of("transfer.helpers", modules) == ["floor"] and layers_of("transfer.cmd", modules) == ["orchestration"]
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


FAMILY_PACKAGES = ("transfer.backbones.resnet", "transfer.backbones.vit")  # parallel by design, as the task packages


def shared_names(root: Path = REPO) -> list[str]:
    """File names used by more than one module, except where packages are parallel by design: the engine task
    packages (``runner``, ``data``, ``train``...), the backbone families (``resnet/`` and ``vit/``: ``layouts``,
    ``load``, ``detectron2``...) and a command's short path beside the module it runs."""
    modules = project_modules(root)
    groups: dict[str, list[str]] = {}
    for name, path in modules.items():
        if path.name != "__init__.py":
            groups.setdefault(path.name, []).append(name)
    bad = []
    for file, names in sorted(groups.items()):
        parents = [n.rpartition(".")[0] for n in names]
        parallel = len(set(parents)) == len(parents) and (set(parents) <= set(TASK_PACKAGES) or
                                                           set(parents) <= set(FAMILY_PACKAGES))
        shortcut = len(names) == 2 and any(command_target(modules[a]) == b for a in names for b in names)
        if len(names) > 1 and not (parallel or shortcut):
            bad.append(f"{file}: {', '.join(sorted(names))}")
    return bad


def test_module_names_say_what_they_hold():
    assert shared_names() == []


def test_the_name_check_sees_a_shared_name(tmp_path):
    for rel in ("mast/__init__.py", "mast/resume.py", "transfer/__init__.py", "transfer/probes/__init__.py",
                "transfer/probes/resume.py", "transfer/detection/__init__.py", "transfer/detection/runner.py",
                "transfer/probes/runner.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert shared_names(tmp_path) == ["resume.py: mast.resume, transfer.probes.resume"]
