"""The install recipe agrees with itself: requirements.txt, environment.yml and the venv."""

import os
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _conda_pip() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip section"
    return [str(p).strip() for p in pip[0]]


def test_environment_yml_matches_requirements():
    assert sorted(_conda_pip()) == sorted(_requirements())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python>=3.11,<3.14" in env["dependencies"]  # 3.11, 3.12, 3.13 (scripts/setup_env.sh SUPPORTED)
    assert 'SUPPORTED="3.13 3.12 3.11"' in (ROOT / "scripts" / "setup_env.sh").read_text()


def test_installed_versions_match_exact_pins():
    pins = [r for r in _requirements() if "==" in r]
    assert {"torch==2.14.1", "torchvision==0.29.1", "mmengine==0.10.7", "mmcv-lite==2.1.0",
            "mmsegmentation==1.2.2"} <= set(pins)
    for pin in pins:
        name, wanted = pin.split("==")
        assert version(name).split("+")[0] == wanted, f"{name} installed {version(name)}, pinned {wanted}"
    assert version("sal-detectron2") == "0.7.2"
    assert int(version("setuptools").split(".")[0]) < 81  # pkg_resources is needed by model_zoo/mmengine


def test_setup_is_idempotent_and_fast_when_pins_unchanged():
    marker = ROOT / ".venv" / ".mast-env-ok"
    assert marker.is_file(), "make test runs setup first; the marker must exist"
    before = marker.read_text()
    out = subprocess.run(["bash", "scripts/setup_env.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and marker.read_text() == before  # nothing rebuilt


def test_setup_refuses_in_one_line_without_the_disk_a_venv_needs(tmp_path):
    venv = tmp_path / ".venv-x"
    env = {**os.environ, "VENV": str(venv), "MAST_VENV_MIN_FREE_GB": str(10**7)}  # 10 PB: no disk has it
    out = subprocess.run(["bash", "scripts/setup_env.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1 and out.stdout == ""
    assert re.fullmatch(rf"setup_env: building {re.escape(str(venv))} needs about 10000000 GB free on the disk of "
                        rf"{re.escape(str(tmp_path))}, which has \d+ GB \(.*\)\n", out.stderr), out.stderr
    assert not venv.exists()  # refused before anything was made


def test_no_project_package_named_tools():
    assert not (ROOT / "tools").exists()
    setup = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'"tools\*?"', setup)


def test_ci_runs_make_test_then_the_other_pythons():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-2:] == ["make test", "bash scripts/test_other_pythons.sh"]
    runner = (ROOT / "scripts" / "run_tests.sh").read_text()
    assert '"$rc" -eq 5' in runner  # no-tests must fail
    other = (ROOT / "scripts" / "test_other_pythons.sh").read_text()
    assert "FAST=(" in other and "exit \"$rc\"" in other  # a failing fast subset fails CI
