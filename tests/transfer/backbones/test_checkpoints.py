"""The shared checkpoint reader: every accepted wrapping gives the same canonical state_dict."""

import pytest
import torch
import torchvision

from transfer.backbones.info import CheckpointError
from transfer.backbones.resnet.load import build_resnet, canonical_keys
from transfer.backbones import load


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


WRAPPINGS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "model": lambda s: {"model": s},
    "teacher": lambda s: {"teacher": _prefixed(s, "backbone."), "student": None},
    "module.": lambda s: {"state_dict": _prefixed(s, "module.")},
    "backbone.": lambda s: _prefixed(s, "backbone."),
    "module.backbone.": lambda s: {"state_dict": _prefixed(s, "module.backbone.")},
    "module.encoder_q.": lambda s: {"state_dict": {**_prefixed(s, "module.encoder_q."),
                                                   **_prefixed(s, "module.encoder_k."), "queue": torch.zeros(2)}},
    "encoder.": lambda s: _prefixed(s, "encoder."),
    "mast last.pth": lambda s: {"model": {**_prefixed({k: v for k, v in s.items() if not k.startswith("fc.")},
                                                      "backbone."),
                                          "expander.0.weight": torch.zeros(4, 512)},
                                "config": {"method": "mast"}, "epoch": 1},
}


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
def test_every_wrapping_gives_the_same_canonical_state(tmp_path, resnet18_state, wrapping):
    state, info = load(_save(tmp_path, "ckpt.pth", WRAPPINGS[wrapping](resnet18_state)))
    assert info.arch == "resnet18"
    assert set(state) == set(canonical_keys("resnet18"))
    assert not any(k.startswith("fc.") for k in state)
    for key, value in state.items():
        assert torch.equal(value, resnet18_state[key]), key
    if wrapping == "mast last.pth":
        assert info.method == "mast"
    build_resnet("resnet18").load_state_dict(state, strict=True)


def test_detects_resnet50_and_reads_method_from_run_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: vicreg\nname: x\n")
    torch.save(build_resnet("resnet50").state_dict(), run / "backbone.pth")
    state, info = load(run / "backbone.pth")
    assert info.arch == "resnet50" and info.method == "vicreg" and info.run_dir == str(run.resolve())
    assert len(info.sha256) == 64
    torch.save(build_resnet("resnet50").state_dict(), run / "backbone_init.pth")
    assert load(run / "backbone_init.pth")[1].method == "init"  # never trained, whatever the run


def _one_line_error(path):
    with pytest.raises(CheckpointError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_truncated_file(tmp_path, resnet18_state):
    path = _save(tmp_path, "full.pth", resnet18_state)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "cannot be read" in _one_line_error(cut)


def test_wrong_prefix(tmp_path, resnet18_state):
    assert "unrecognised key prefix 'head.'" in _one_line_error(_save(tmp_path, "p.pth", _prefixed(resnet18_state, "head.")))


def test_a_truncated_vit_is_refused_as_a_vit(tmp_path):
    vit = {"cls_token": torch.zeros(1, 1, 8), "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
           "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    assert "ViT tensor 'pos_embed' missing" in _one_line_error(_save(tmp_path, "vit.pth", vit))


def test_missing_and_misshaped_tensors(tmp_path, resnet18_state):
    missing = {k: v for k, v in resnet18_state.items() if k != "layer2.0.conv1.weight"}
    assert "1 missing tensors ['layer2.0.conv1.weight']" in _one_line_error(_save(tmp_path, "m.pth", missing))
    bad = dict(resnet18_state, **{"bn1.weight": torch.zeros(3)})
    assert "mis-shaped ['bn1.weight']" in _one_line_error(_save(tmp_path, "b.pth", bad))


def test_two_candidate_backbones(tmp_path, resnet18_state):
    torch.manual_seed(1)
    other = torchvision.models.resnet18(weights=None).state_dict()
    both = {**_prefixed(resnet18_state, "backbone."), **_prefixed(other, "encoder.")}
    message = _one_line_error(_save(tmp_path, "two.pth", both))
    assert "found 2 candidate backbones" in message and "--backbone" in message
    # the same tensors under two names (one module registered twice) are one backbone
    same = {**_prefixed(resnet18_state, "backbone."), **_prefixed(resnet18_state, "encoder_q.0.")}
    assert load(_save(tmp_path, "same.pth", same))[1].backbone == "backbone."


def test_missing_file_and_non_dict(tmp_path):
    assert "does not exist" in _one_line_error(tmp_path / "nope.pth")
    assert "holds a Tensor" in _one_line_error(_save(tmp_path, "t.pth", torch.zeros(3)))


def test_unknown_architecture_depth(tmp_path, resnet18_state):
    extra_block = dict(resnet18_state)
    for k, v in resnet18_state.items():
        if k.startswith("layer1.1."):
            extra_block[k.replace("layer1.1.", "layer1.2.")] = v
    assert "which is no torchvision depth" in _one_line_error(_save(tmp_path, "d.pth", extra_block))
