"""Evaluation suites: which tasks ``run_all`` runs, with which arguments (YAML, validated once).

A suite file is either a list of task entries or a mapping with ``scale``, ``vars`` and ``tasks``::

    scale: demo                          # default --scale for every task
    vars: {data: data/synthetic}         # "{data}" in any argument is replaced (override: --var)
    tasks:
      - name: knn_shape                  # unique instance name (default: the task); names the output dir
        task: knn                        # one of TASK_MODULES: runs `python -m transfer.probes.knn`
        checkpoints: all                 # all | trained (trained: not on the random-init floor)
        backbones: any                   # resnet | vit | any (default: any for the probes, resnet otherwise)
        timeout_min: 30                  # optional wall-clock limit
        args: {data: "{data}/classification/shape"}   # -> --data data/synthetic/classification/shape
        extra_args: [SOLVER.MAX_ITER, "100"]           # appended verbatim (e.g. detectron2 KEY VALUE)
        env: {DETECTRON2_DATASETS: "{datasets}"}       # environment of the task (the user's own wins)

A variable may use others (``voc2012: "{datasets}/VOCdevkit/VOC2012"``). A relative ``config``
is looked up in the project first, so a suite runs from any working directory. run_all adds the
user's per-task overrides (``--task-args``) and ``--smoke`` (:data:`SMOKE_ARGS`) on top; both are
part of the task config hash and of the scale label a record gets (:meth:`TaskSpec.scale_label`).

Every mistake a user can make here is one line naming the file, the entry and the key.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from plumbing import project_path


class SuiteError(ValueError):
    """A suite file or a --var override that cannot be used (one-line message)."""


# Task type -> the module of its command (``python -m MODULE``); each exposes ``build_parser()``.
TASK_MODULES = {"detection": "transfer.detection", "segmentation": "transfer.segmentation",
                "fewshot": "transfer.probes.fewshot", "linear": "transfer.probes.linear", "knn": "transfer.probes.knn",
                "svm": "transfer.probes.svm", "classification": "transfer.classification"}
TASKS = tuple(TASK_MODULES)
SCALES = ("demo", "paper")
ENTRY_KEYS = ("name", "task", "args", "extra_args", "checkpoints", "scale", "timeout_min", "env", "backbones")
BACKBONE_FAMILIES = ("resnet", "vit", "any")
PROBE_TASKS = ("knn", "linear", "fewshot", "svm")  # frozen features: a ResNet or a ViT (transfer.backbones)
SUITE_KEYS = ("scale", "vars", "tasks", "slurm")
#: A suite's ``slurm:`` section: defaults for ``--launcher slurm`` (the --slurm-* options win).
SLURM_KEYS = ("partition", "account", "qos", "constraint", "time", "cpu_only", "cpus_per_gpu", "mem_per_gpu_gb")
CHECKPOINT_SETS = ("all", "trained")
SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
PATH_ARGS = ("config",)  # args naming a project file: resolved against PROJECT when found there
# --smoke: every task becomes a pipeline check (few iterations, small images, few episodes, no
# data-loader workers). Detection's and segmentation's own --smoke say how (transfer.detection.runner.SMOKE_OPTS).
SMOKE_ARGS = {
    "detection": ["--smoke"],
    "segmentation": ["--smoke"],
    "classification": ["--smoke"],
    "fewshot": ["--episodes", "10", "--num-workers", "0"],
    "linear": ["--max-iter", "20", "--num-workers", "0"],
    "knn": ["--num-workers", "0"],
    "svm": ["--costs", "0.1", "1", "--n-boot", "200", "--num-workers", "0"],
}
# --smoke on a checkpoint without a run config: the probes' crop size and normalisation when the
# suite leaves them empty (a pipeline check needs no protocol choice; a paper run must state them).
SMOKE_PREPROCESS = {"image_size": "224", "normalize": "imagenet"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class TaskSpec:
    """One task instance of a suite, with its arguments resolved."""

    name: str
    task: str
    args: dict[str, Any]
    scale: str
    checkpoints: str = "all"
    timeout_min: float | None = None
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # the user's --task-args for this task
    smoke: bool = False
    backbones: str = "resnet"  # which checkpoints the task takes: resnet | vit | any (not in the hash)

    def takes(self, family: str) -> bool:
        """Whether a checkpoint of ``family`` ("resnet" or "vit") runs this task."""
        return self.backbones in ("any", family)

    @property
    def config_hash(self) -> str:
        """Hash of everything that changes the result: task, scale, arguments, overrides, smoke."""
        config = {"task": self.task, "scale": self.scale, "args": self.args, "extra_args": list(self.extra_args)}
        if self.overrides or self.smoke:  # absent otherwise: hashes of earlier paper records stay valid
            config.update(overrides=list(self.overrides), smoke=self.smoke)
        blob = json.dumps(config, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def scale_label(self) -> str:
        """What a record of this task is: ``smoke``, ``paper+overrides`` (never a paper number) or the scale."""
        if self.smoke:
            return "smoke"
        return f"{self.scale}+overrides" if self.overrides else self.scale

    def command(self, python: str, ckpt: str | Path, out_dir: str | Path) -> list[str]:
        """``python -m transfer.<task> --ckpt C --out D --scale S --key value ...`` (task CLI contract)."""
        cmd = [python, "-m", TASK_MODULES[self.task], "--ckpt", str(ckpt), "--out", str(out_dir), "--scale", self.scale]
        for key, value in self.args.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                cmd.append(flag)
            elif value is False or value is None:
                continue
            elif isinstance(value, (list, tuple)):
                cmd += [flag, *map(str, value)]
            elif key in PATH_ARGS:
                cmd += [flag, str(project_path(value))]
            else:
                cmd += [flag, str(value)]
        smoke = SMOKE_ARGS.get(self.task, []) if self.smoke else []
        return cmd + list(self.extra_args) + smoke + list(self.overrides)



@dataclass
class Suite:
    name: str
    path: Path
    tasks: list[TaskSpec] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)  # the suite's ``slurm:`` section (SLURM_KEYS)


def resolve_suite_path(suite: str) -> Path:
    """``demo`` / ``paper`` name a shipped suite; anything else is a path to a YAML file."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", suite) and (SUITES_DIR / f"{suite}.yaml").is_file():
        return SUITES_DIR / f"{suite}.yaml"
    path = Path(suite)
    if not path.is_file():
        shipped = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
        raise SuiteError(f"--suite {suite}: no such file (expected a YAML path or one of {shipped})")
    return path


def load_suite(suite: str, overrides: dict[str, str] | None = None, tasks: list[str] | None = None,
               task_args: dict[str, list[str]] | None = None, smoke: bool = False) -> Suite:
    """Read, validate and resolve a suite; ``tasks`` keeps only entries of those task types or names.

    ``task_args`` maps a task type or task name to arguments appended to its command (a name's
    come after its type's); ``smoke`` shortens every task (:data:`SMOKE_ARGS`).
    """
    path = resolve_suite_path(suite)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SuiteError(f"suite {path}: not UTF-8 text (expected a YAML file)") from None
    except yaml.YAMLError as e:
        raise SuiteError(f"suite {path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise SuiteError(f"suite {path}: expected a list of tasks or a mapping with a 'tasks' list")
    _check_keys(data, SUITE_KEYS, f"suite {path}")
    if not isinstance(data.get("vars") or {}, dict):
        raise SuiteError(f"suite {path}: 'vars' must be a mapping of NAME: VALUE")
    variables = {str(k): str(v) for k, v in (data.get("vars") or {}).items()}
    for key in overrides or {}:
        if key not in variables:
            raise SuiteError(f"--var {key}: suite {path} has no variable {key!r} (it has {sorted(variables)})")
    variables.update(overrides or {})
    variables = _resolve_vars(variables, path)
    scale = data.get("scale", "demo")
    specs = [_parse_entry(e, i, path, variables, scale) for i, e in enumerate(data["tasks"], 1)]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SuiteError(f"suite {path}: task names must be unique; {dup} appear more than once (set 'name:')")
    for wanted in tasks or []:
        if wanted not in TASKS and wanted not in names:
            raise SuiteError(f"--tasks {wanted}: neither a task type {list(TASKS)} nor a task of suite {path}")
    if tasks:
        specs = [s for s in specs if s.task in tasks or s.name in tasks]
    for key in task_args or {}:
        if key not in TASKS and key not in names:
            raise SuiteError(f"--task-args {key}: not a task type {list(TASKS)} nor a task of suite {path} {names}")
    if task_args or smoke:
        specs = [replace(s, smoke=smoke, overrides=tuple((task_args or {}).get(s.task, []))
                         + tuple((task_args or {}).get(s.name, []))) for s in specs]
    if smoke:
        specs = [replace(s, args={**s.args, **{k: v for k, v in SMOKE_PREPROCESS.items()
                                                if k in s.args and not str(s.args[k]).strip()}}) for s in specs]
    return Suite(name=path.stem, path=path, tasks=specs, slurm=_slurm_section(data.get("slurm"), path))


def _slurm_section(section: Any, path: Path) -> dict[str, Any]:
    """The ``slurm:`` defaults, checked: known keys, strings / positive numbers / a boolean."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise SuiteError(f"suite {path}: 'slurm' must be a mapping of {list(SLURM_KEYS)}")
    _check_keys(section, SLURM_KEYS, f"suite {path}: slurm")
    for key, value in section.items():
        numeric = key in ("time", "cpus_per_gpu", "mem_per_gpu_gb")
        good = (isinstance(value, bool) if key == "cpu_only" else
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e9 if numeric else
                isinstance(value, str) and value != "")
        if not good:
            want = "true or false" if key == "cpu_only" else "a positive number" if numeric else "a non-empty string"
            raise SuiteError(f"suite {path}: slurm.{key} {value!r} (expected {want})")
    return dict(section)


def _resolve_vars(variables: dict[str, str], path: Path) -> dict[str, str]:
    """Substitute variables used inside other variables (``{datasets}/cityscapes``), cycles refused."""
    out = dict(variables)
    for _ in range(len(out) + 1):
        new = {k: _substitute(v, out, f"suite {path}: vars.{k}") for k, v in out.items()}
        if new == out:
            for k, v in out.items():  # a fixed point that still names a variable: {data} = "{data}/x" or "{data}"
                if isinstance(v, str) and any(name in out for name in _VAR.findall(v)):
                    raise SuiteError(f"suite {path}: vars.{k} = {variables[k]!r} refers to itself "
                                     f"(a cycle: {{{k}}} can never be resolved)")
            return out
        out = new
    raise SuiteError(f"suite {path}: vars refer to each other in a circle ({sorted(variables)})")


def _parse_entry(entry: Any, index: int, path: Path, variables: dict[str, str], scale: str) -> TaskSpec:
    where = f"suite {path}: task {index}"
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: expected a mapping with 'task:' and 'args:', got {type(entry).__name__}")
    if "name" in entry:
        where += f" ({entry['name']})"
    _check_keys(entry, ENTRY_KEYS, where)
    task = entry.get("task")
    if task not in TASKS:
        raise SuiteError(f"{where}: unknown task {task!r} (expected one of {list(TASKS)})")
    name = str(entry.get("name", task))
    if not _NAME.match(name):
        raise SuiteError(f"{where}: name {name!r} must be letters, digits, '.', '_' or '-' (it names a directory)")
    args = entry.get("args") or {}
    if not isinstance(args, dict):
        raise SuiteError(f"{where}: 'args' must be a mapping of option -> value")
    for reserved in RUN_ALL_OPTIONS:
        if reserved in args:
            raise SuiteError(f"{where}: args key {reserved!r} is set by run_all, remove it")
    checkpoints = entry.get("checkpoints", "all")
    if checkpoints not in CHECKPOINT_SETS:
        raise SuiteError(f"{where}: checkpoints {checkpoints!r} (expected one of {list(CHECKPOINT_SETS)})")
    task_scale = entry.get("scale", scale)
    if task_scale not in SCALES:
        raise SuiteError(f"{where}: scale {task_scale!r} (expected one of {list(SCALES)})")
    timeout = entry.get("timeout_min")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise SuiteError(f"{where}: timeout_min {timeout!r} (expected a positive number of minutes)")
    resolved = {str(k): _substitute(v, variables, f"{where}: args.{k}") for k, v in args.items()}
    extra = entry.get("extra_args") or []
    if not isinstance(extra, list):
        raise SuiteError(f"{where}: 'extra_args' must be a list of strings")
    extra = tuple(str(_substitute(str(v), variables, f"{where}: extra_args")) for v in extra)
    for token in extra:
        if owned_by_run_all(token):
            raise SuiteError(f"{where}: extra_args {token!r} is set by run_all, remove it")
    env = entry.get("env") or {}
    if not isinstance(env, dict):
        raise SuiteError(f"{where}: 'env' must be a mapping of NAME -> value")
    env = {str(k): str(_substitute(str(v), variables, f"{where}: env.{k}")) for k, v in env.items()}
    backbones = entry.get("backbones", "any" if task in PROBE_TASKS else "resnet")
    if backbones not in BACKBONE_FAMILIES:
        raise SuiteError(f"{where}: backbones {backbones!r} (expected one of {list(BACKBONE_FAMILIES)})")
    _check_task_options(task, resolved, where)
    return TaskSpec(name, task, resolved, task_scale, checkpoints, timeout, extra, env, backbones=backbones)


RUN_ALL_OPTIONS = ("ckpt", "out", "scale", "force", "backbone")  # every task gets these from run_all


def owned_by_run_all(token: str) -> bool:
    """``--out``, ``--out=DIR`` or an abbreviation argparse would expand to one of :data:`RUN_ALL_OPTIONS`
    (``--ou``): an extra argument that would take over what run_all sets (where a record is written)."""
    flag = token.split("=", 1)[0]
    return flag.startswith("--") and len(flag) > 2 and any(f"--{o}".startswith(flag) for o in RUN_ALL_OPTIONS)


def _substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        if m.group(1) not in variables:
            raise SuiteError(f"{where}: unknown variable {{{m.group(1)}}} (defined: {sorted(variables)})")
        return variables[m.group(1)]

    return _VAR.sub(repl, value)


def _check_keys(mapping: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise SuiteError(f"{where}: unknown key {key!r} (expected one of {list(allowed)})")


def _check_task_options(task: str, args: dict[str, Any], where: str) -> None:
    """Check args against the options of the task's own parser (``build_parser()`` of its module)."""
    module = TASK_MODULES[task]
    try:
        parser = importlib.import_module(module).build_parser()
    except Exception:  # noqa: BLE001 - a task that cannot be imported fails later, as a recorded task
        return
    # argparse has no public list of option strings; parsing cannot stand in (it accepts prefixes
    # such as --shot for --shots, and refuses a suite that leaves a required option to --var).
    options = {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    for key in args:
        if "--" + key.replace("_", "-") not in options:
            raise SuiteError(f"{where}: args key {key!r} is not an option of {module} (it has {sorted(options)})")


def parse_task_args(items: list[str]) -> dict[str, list[str]]:
    """``["detection=SOLVER.MAX_ITER 2", ...]`` -> ``{"detection": ["SOLVER.MAX_ITER", "2"]}`` (--task-args)."""
    import shlex

    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value.strip():
            raise SuiteError(f"--task-args {item}: expected TASK=ARGS (a task type or name, then its arguments)")
        try:
            tokens = shlex.split(value)
        except ValueError as e:  # shlex: "No closing quotation", "No escaped character"
            raise SuiteError(f"--task-args {item}: {str(e).lower()} (quote the arguments as in a shell)") from None
        for token in tokens:
            if owned_by_run_all(token):
                raise SuiteError(f"--task-args {item}: {token} is set by run_all, remove it (the task's "
                                 "--out is OUT/<checkpoint>/<task>)")
        out.setdefault(key, []).extend(tokens)
    return out


def parse_vars(items: list[str]) -> dict[str, str]:
    """``["data=/x", ...]`` -> ``{"data": "/x"}`` (the --var option)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SuiteError(f"--var {item}: expected NAME=VALUE")
        out[key] = value
    return out
