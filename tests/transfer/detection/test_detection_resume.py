"""transfer.detection --resume: a seed continues from its own last checkpoint, read as data.

The real detectron2 trains (tiny schedule); nothing is mocked. A run stopped mid-way is a run of
the first iterations whose checkpoint is then continued to the full schedule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from transfer.detection import main
from transfer.detection.resume_checkpoint import checkpoint_to_resume, install_safe_checkpointer
from transfer.records import TaskFailed

REPO = Path(__file__).resolve().parents[3]
DEMO = str(REPO / "detectron_configs" / "demo_synthetic_R_18_FPN.yaml")
TINY = ["SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
        "TEST.PRECISE_BN.ENABLED", "False", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64"]


class _Payload:
    """Unpickling this object runs ``open(marker, 'w')``: the marker proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _iterations(seed_dir: Path) -> list[int]:
    lines = (seed_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if line.strip()]


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint_and_never_runs_file_code(tmp_path: Path, synthetic_root: Path):
    torch.manual_seed(0)
    ckpt = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    out, marker = tmp_path / "det", tmp_path / "PWNED"
    base = ["--ckpt", str(ckpt), "--config", DEMO, "--out", str(out), "--data-root", str(synthetic_root),
            "--save-model", *TINY]
    assert main(base + ["SOLVER.MAX_ITER", "2"]) == 0  # "stopped" after iteration 2 of 4, checkpoint saved
    seed = out / "seed_0"
    saved = checkpoint_to_resume(seed)
    assert saved is not None and saved.is_file()
    from transfer.backbones.read import read_torch_file

    obj = read_torch_file(saved)
    assert obj["iteration"] == 1
    obj["evil"] = _Payload(marker)  # planted in the run's own last checkpoint
    torch.save(obj, saved)

    assert main(base + ["SOLVER.MAX_ITER", "4", "--resume"]) == 0
    assert not marker.exists()
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok", record["error"]
    assert record["resumed"]["0"].startswith(f"resumed from {saved.name} at iteration 2 of 4")
    assert "--resume: resumed from" in (out / "log.txt").read_text()
    final = read_torch_file(seed / "model_final.pth")
    assert final["iteration"] == 3  # the full schedule: iterations 2 and 3 ran after the resume
    assert _iterations(seed) == [1, 2, 3, 4]  # 1-2 before the stop, 3-4 after it: none trained twice

    # a fresh start (no --resume) forgets the checkpoint: a later --resume cannot continue it
    assert main(base + ["SOLVER.MAX_ITER", "1", "SOLVER.CHECKPOINT_PERIOD", "100", "--no-save-model",
                        "--force"]) == 0
    assert checkpoint_to_resume(seed) is None


def test_last_checkpoint_must_name_a_pth_file_of_the_folder(tmp_path: Path):
    (tmp_path / "last_checkpoint").write_text("../elsewhere/model.pth")
    with pytest.raises(TaskFailed, match="only the run's own checkpoints"):
        checkpoint_to_resume(tmp_path)
    (tmp_path / "last_checkpoint").write_text("model_final.pkl")  # detectron2 would pickle.load a .pkl
    with pytest.raises(TaskFailed, match="expected a model_\\*.pth"):
        checkpoint_to_resume(tmp_path)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(TaskFailed, match="does not exist"):
        checkpoint_to_resume(tmp_path)
    assert checkpoint_to_resume(tmp_path / "nothing") is None


class _Blocked:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_safe_checkpointer_reads_data_only(tmp_path: Path):
    """detectron2's checkpointer on a real model, swapped for the safe one: a planted os.system is refused."""
    from detectron2.checkpoint import DetectionCheckpointer

    class Holder:  # what install_safe_checkpointer needs of a trainer: its checkpointer
        pass

    model = nn.Linear(2, 2)
    holder = Holder()
    holder.checkpointer = DetectionCheckpointer(model, str(tmp_path))
    install_safe_checkpointer(holder)
    torch.save({"model": model.state_dict(), "evil": _Blocked()}, tmp_path / "model_final.pth")
    with pytest.raises(TaskFailed, match="asks to run code"):
        holder.checkpointer.load(str(tmp_path / "model_final.pth"))
    assert not (tmp_path / "PWNED").exists() and not (REPO / "PWNED").exists()
    torch.save({"model": model.state_dict()}, tmp_path / "model_final.pkl")
    with pytest.raises(TaskFailed, match="not a .pth file"):  # detectron2 itself would pickle.load it
        holder.checkpointer.load(str(tmp_path / "model_final.pkl"))
    want = {k: v + 1 for k, v in model.state_dict().items()}
    torch.save({"model": want, "iteration": 7}, tmp_path / "good.pth")
    extra = holder.checkpointer.load(str(tmp_path / "good.pth"))
    assert extra["iteration"] == 7 and torch.equal(model.weight.detach(), want["weight"])
