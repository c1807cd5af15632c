"""The third fault sweep (issue 36): checkpoints. Each test plants the real thing (a solo-learn run folder as
its Checkpointer writes it, a file holding a ResNet and a ViT, an unreadable file) and checks the result is
the network the file holds, or one line saying what to pass."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from solo_learn_files import solo_backbone, write_solo_ckpt
from transfer.backbones.info import CheckpointError
from transfer.backbones.resnet.load import build_resnet
from transfer.backbones import load

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.py)
REPO = Path(__file__).resolve().parents[1]
X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("hparams,args_json", [(False, True), (True, False)])
def test_solo_learn_cifar_vicreg_gets_its_own_stem_padding_from_its_saved_config(tmp_path, hparams, args_json):
    """Issue 36 item 1: solo-learn's VICReg on cifar10 (no momentum_backbone) is the network solo-learn builds."""
    model = solo_backbone("cifar10")
    path = write_solo_ckpt(tmp_path, model, hparams=hparams, args_json=args_json)
    state, info = load(path)
    assert (info.stem, info.stem_padding, info.codebase) == ("cifar", 2, "solo-learn"), info
    assert "solo-learn's saved config" in info.stem_padding_source
    rebuilt = build_resnet(info.arch, info.stem, info.stem_padding)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(X), model(X))
        wrong = build_resnet(info.arch, "cifar", 1)  # what was read before: another network
        wrong.load_state_dict(state)
        assert (wrong.eval()(X) - model(X)).abs().max() > 0.1


def test_a_cifar_stem_whose_padding_nothing_says_is_refused_asking_for_stem_padding(synthetic_root, tmp_path):
    from transfer.probes.knn import main as knn_main

    model = solo_backbone("cifar10")
    alone = tmp_path / "alone.ckpt"  # the .ckpt copied away from its run folder: no args.json
    shutil.copy(write_solo_ckpt(tmp_path / "run", model), alone)
    _, info = load(alone)
    assert info.stem == "cifar" and info.stem_padding is None
    args = ["--ckpt", str(alone), "--data", str(synthetic_root / "classification" / "color"), "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]
    code = knn_main([*args, "--out", str(tmp_path / "refused")])
    record = json.loads((tmp_path / "refused" / "record.json").read_text())
    assert code != 0 and record["status"] == "failed" and "--stem-padding" in record["error"], record["error"]
    assert "\n" not in record["error"] and str(alone.resolve()) in record["error"]
    assert knn_main([*args, "--out", str(tmp_path / "given"), "--stem-padding", "2"]) == 0
    given = json.loads((tmp_path / "given" / "record.json").read_text())["checkpoint"]
    assert (given["stem_padding"], given["stem_padding_source"]) == (2, "--stem-padding")


def test_a_solo_learn_config_naming_another_dataset_is_not_taken_for_padding_2(tmp_path):
    model = solo_backbone("cifar10")
    path = write_solo_ckpt(tmp_path, model, dataset="stl10")  # a 3x3 stem, yet the cfg says stl10
    _, info = load(path)
    assert info.stem_padding is None and "stl10" in info.stem_padding_source


def _vit_state() -> dict[str, torch.Tensor]:
    from vit_writers import timm_vit

    return timm_vit(patch=8, img=32, depth=2).state_dict()


def test_a_file_holding_a_resnet_and_a_vit_lists_both_and_backbone_selects_the_vit(tmp_path):
    """Issue 36 item 5: candidates across families; no silent 'only candidate'."""
    from transfer.orchestrate.resolve import resolve_checkpoints
    from transfer.probes.features import FeatureExtractor
    from transfer.backbones import load

    torch.manual_seed(0)
    path = tmp_path / "both.pth"
    torch.save({"resnet": build_resnet("resnet18").state_dict(), "vit": _vit_state()}, path)
    with pytest.raises(CheckpointError) as err:
        load(path)
    assert "'resnet'" in str(err.value) and "'vit'" in str(err.value) and "--backbone" in str(err.value)
    with pytest.raises(CheckpointError):
        load(path)
    _, info = load(path, "vit")
    assert info.family == "vit" and info.backbone == "vit."
    extractor = FeatureExtractor(path, 32, tmp_path / "cache", backbone="vit", progress=False)
    assert extractor.vit and extractor.info.backbone == "vit."
    assert FeatureExtractor(path, 32, tmp_path / "cache", backbone="resnet", progress=False).info.arch == "resnet18"
    assert resolve_checkpoints([str(path)], [], ["vit"])[0].family == "vit"


def test_an_unreadable_checkpoint_is_one_line(tmp_path):
    """chmod 000: safe_files.is_safetensors opened it unguarded (PermissionError traceback; a regression).
    Root reads any file, so as root the reader runs in a forked child that became user nobody."""
    folder = Path(tempfile.mkdtemp(prefix="mast-unreadable-"))
    try:
        folder.chmod(0o755)
        path = folder / "r.pth"
        torch.save(build_resnet("resnet18").state_dict(), path)
        path.chmod(0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop root, read, report what was raised through the pipe
            os.close(read)
            try:
                if os.geteuid() == 0:
                    os.setuid(65534)
                load(path)
                message = "read"
            except BaseException as e:  # noqa: BLE001 - the test inspects what was raised
                message = f"{type(e).__name__}: {e}"
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            message = f.read()
        os.waitpid(pid, 0)
        assert message.startswith("CheckpointError: ") and "\n" not in message, message
        assert "cannot be read (Permission denied)" in message and str(path) in message, message
    finally:
        shutil.rmtree(folder)
