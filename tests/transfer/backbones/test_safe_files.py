"""Checkpoints as users have them, read as data (issue 28): a real mmengine Runner file, a real
safetensors file, a pickle payload planted in a Runner-shaped file, and plain one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from transfer.backbones.info import CheckpointError, read_checkpoint
from transfer.backbones import load
from transfer.backbones.read import Opaque, plain_message, read_torch_file, runner_admits

REPO = Path(__file__).resolve().parents[3]


class Payload:
    """Unpickling this object runs ``open(marker, 'w')``: the marker proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class SystemPayload(Payload):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _runner_file(work: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Train a ResNet-18 backbone 2 iterations with mmengine's own Runner; its iter_2.pth and model state."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Tiny(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torchvision.models.resnet18(weights=None)
            self.backbone.fc = nn.Identity()

        def forward(self, inputs, labels=None, mode="tensor"):
            out = self.backbone(inputs)
            return {"loss": out.pow(2).mean()} if mode == "loss" else out

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> dict:
            return dict(inputs=torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), labels=i)

    torch.manual_seed(0)
    runner = Runner(model=Tiny(), work_dir=str(work),
                    train_dataloader=dict(dataset=Images(), batch_size=2, num_workers=0,
                                          sampler=dict(type="DefaultSampler", shuffle=False),
                                          collate_fn=dict(type="default_collate")),
                    optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
                    train_cfg=dict(by_epoch=False, max_iters=2),
                    default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)),
                    randomness=dict(seed=0), visualizer=dict(type="Visualizer", name=f"v{os.getpid()}{id(work)}"))
    runner.train()
    state = {k: v.detach().clone() for k, v in runner.model.backbone.state_dict().items()}
    return work / "iter_2.pth", state


@pytest.fixture(scope="module")
def runner_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    return _runner_file(tmp_path_factory.mktemp("mmengine") / "work")


def test_real_mmengine_runner_file_reads_bit_exact(runner_file) -> None:
    path, trained = runner_file
    with pytest.raises(Exception, match="weights_only|Weights only"):
        torch.load(path)  # torch's default refuses the file users have after mmengine training
    state, info = load(path)
    assert info.source_format == "state_dict.backbone" and info.arch == "resnet18"
    assert set(state) == set(trained) and all(torch.equal(state[k], trained[k]) for k in trained)
    hub = read_checkpoint(path)[0]["message_hub"]["log_scalars"]
    assert hub and all(isinstance(b, Opaque) for b in hub.values())  # never an mmengine object


def test_runner_admits_rebuild_the_message_hub_for_resume(runner_file) -> None:
    from mmengine.logging import HistoryBuffer

    obj = read_torch_file(runner_file[0], admit=runner_admits())
    loss = obj["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(loss, HistoryBuffer) and len(loss.data[0]) == 2 and float(loss.mean()) > 0
    assert HistoryBuffer._statistics_methods["mean"] is HistoryBuffer.mean  # the class registry is intact


def test_a_runner_file_cannot_change_the_message_hub_statistics(tmp_path: Path, monkeypatch) -> None:
    from mmengine.logging import HistoryBuffer

    from transfer.backbones.read import read_runner_file

    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    buffer.__dict__["statistics_methods"] = {"mean": Payload(tmp_path / "PWNED")}
    path = tmp_path / "iter_1.pth"
    with monkeypatch.context() as m:  # pickle the planted statistics as they are (__getstate__ would replace them)
        m.setattr(HistoryBuffer, "__getstate__", lambda self: dict(self.__dict__))
        torch.save({"message_hub": {"log_scalars": {"loss": buffer}}}, path)
    before = dict(HistoryBuffer._statistics_methods)
    loaded = read_runner_file(path)["message_hub"]["log_scalars"]["loss"]
    assert HistoryBuffer._statistics_methods == before and float(loaded.mean()) == 2.0
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("payload", [Payload, SystemPayload])
def test_payload_in_a_runner_shaped_file_never_runs(tmp_path: Path, payload) -> None:
    from mmengine.logging import HistoryBuffer

    marker, control = tmp_path / "PWNED", tmp_path / "CONTROL"
    model = torchvision.models.resnet18()
    hub = {"log_scalars": {"train/loss": HistoryBuffer([1.0, 2.0], [1, 1])}, "runtime_info": {"evil": payload(marker)}}
    path = tmp_path / "epoch_1.pth"
    torch.save({"meta": {"epoch": 1, "iter": 2}, "state_dict": model.state_dict(), "message_hub": hub}, path)
    live = tmp_path / "live.pth"
    torch.save({"evil": payload(control)}, live)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(live)!r}, weights_only=False)"], check=True)
    assert control.exists()  # the payload is live: unpickling it the ordinary way runs it
    if payload is SystemPayload:  # torch blocks os/sys outright: refused, in one line naming the file
        with pytest.raises(CheckpointError, match="asks to run code") as err:
            load(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    else:
        state, _ = load(path)
        assert torch.equal(state["conv1.weight"], model.state_dict()["conv1.weight"])
        resumed = read_torch_file(path, admit=runner_admits())
        assert isinstance(resumed["message_hub"]["runtime_info"]["evil"], Opaque)
    assert not marker.exists()


def test_safetensors_file_reads_bit_exact(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for path in (tmp_path / "model.safetensors", tmp_path / "renamed.bin"):  # by suffix, and by its header
        save_file(state, str(path), metadata={"format": "pt"})
        loaded, info = load(path)
        assert info.arch == "resnet50" and all(torch.equal(loaded[k], state[k]) for k in loaded)
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="broken.safetensors cannot be read as a safetensors file"):
        load(tmp_path / "broken.safetensors")


def test_errors_are_plain_one_line_and_say_what_to_do(tmp_path: Path) -> None:
    ansi = RuntimeError("Weights only load failed. \x1b[1mdo those steps\x1b[0m.\n\t(1) unpickle it\nthe reason")
    assert plain_message(ansi) == "the reason"
    (tmp_path / "torn.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "model.pth").write_bytes(b"")
    torch.save(torchvision.models.resnet18(), tmp_path / "whole_module.pth")
    for name, hint in (("torn.pth", "re-download it"), ("model.pth", "re-download it"), ("missing.pth", "check the path"),
                       ("whole_module.pth", "torch.save(model.state_dict(), PATH)")):
        with pytest.raises(CheckpointError) as err:
            load(tmp_path / name)
        msg = str(err.value)
        assert str(tmp_path / name) in msg and hint in msg and "\n" not in msg and "\x1b" not in msg, msg


def test_inspect_reads_a_runner_file_from_the_command_line(runner_file) -> None:
    out = subprocess.run([sys.executable, "-m", "transfer.inspect_checkpoint", str(runner_file[0])], cwd=REPO, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "resnet18" in out.stdout
