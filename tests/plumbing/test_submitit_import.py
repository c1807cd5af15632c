"""plumbing.submitit_import: submitit's first import configures logging, which closes every log file the
process already has (an mmengine Runner's, written to again by mmengine); the runner's import keeps them open."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CODE = """
import logging, sys
handler = logging.FileHandler(sys.argv[1], "w")  # mmengine's mode: a closed one is not reopened
log = logging.getLogger("a_runner")
log.addHandler(handler)
log.warning("before")
{how}
assert "submitit" in sys.modules
print(handler.stream is None)
log.warning("after")
"""


@pytest.mark.parametrize("how, closed", [("import submitit", True),  # the control: the bug is real
                                         ("from plumbing.submitit_import import import_submitit; import_submitit()", False)])
def test_importing_submitit_keeps_the_open_log_files(how: str, closed: bool, tmp_path: Path) -> None:
    log = tmp_path / "runner.log"
    out = subprocess.run([sys.executable, "-c", CODE.format(how=how), str(log)], cwd=REPO, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(closed)]
    assert log.read_text().split() == (["before"] if closed else ["before", "after"])
