"""Checkpoints as the common SSL codebases write them convert without hand-editing.

Each layout below is written from a seeded torchvision ResNet with randomised BN statistics (and,
where the codebase keeps one, a momentum/student/EMA copy with *different* weights), converted with
``transfer.convert``, loaded into detectron2 (verifying loader) and mmseg (the segmentation task's
config and its Pretrained init), and every stage is compared with torchvision's: depths 18 and 50
for every layout, 101 for one. Then: the several-candidates refusal and ``--backbone``, the tasks'
option plumbing, and ``transfer.inspect_checkpoint`` on every layout.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from test_convert import build_d2, d2_stages, max_rel_err, random_resnet, tv_stages
from transfer import inspect_checkpoint as inspect_cli
from transfer.backbones import load
from transfer.convert import main as convert_main
from transfer.backbones.resnet.detectron2 import to_detectron2
from transfer.engines import require_mmseg
from transfer.backbones.resnet.mmseg import to_mmseg_file

SIZE = 64  # input pixels: res5 is 2x2, enough for every tensor to matter


def _pre(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _no_fc(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _other(state: dict) -> dict:
    """Different weights of the same shapes: a momentum / student / EMA copy that must not be taken."""
    return {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}


def _sequential(model: nn.Module) -> dict:
    """lightly's backbone: ``nn.Sequential(*list(resnet.children())[:-1])`` (keys ``0.weight``, ``4.0.conv1.weight``)."""
    return nn.Sequential(*list(model.children())[:-1]).state_dict()


def _zeros(*shape: int) -> Tensor:
    return torch.zeros(*shape)


# layout -> (writer(model) -> checkpoint object, the backbone prefix the default choice must take)
LAYOUTS: dict[str, tuple[Callable[[nn.Module], dict], str]] = {
    "torchvision": (lambda m: m.state_dict(), ""),
    "solo-learn": (lambda m: {
        "state_dict": {**_pre("backbone.", _no_fc(m.state_dict())),
                       **_pre("momentum_backbone.", _other(_no_fc(m.state_dict()))),
                       "projector.0.weight": _zeros(8, 4), "classifier.weight": _zeros(10, 4)},
        "epoch": 399, "global_step": 4000, "pytorch-lightning_version": "2.0.9"}, "state_dict.backbone."),
    "lightly": (lambda m: {
        "state_dict": {**_pre("backbone.", _sequential(m)), **_pre("backbone_momentum.", _other(_sequential(m))),
                       "projection_head.layers.0.weight": _zeros(8, 4)},
        "epoch": 10, "global_step": 300, "pytorch-lightning_version": "2.2.0"}, "state_dict.backbone."),
    "vissl": (lambda m: {
        "classy_state_dict": {"base_model": {"model": {"trunk": _pre("_feature_blocks.", _no_fc(m.state_dict())),
                                                       "heads": {"0.clf.0.weight": _zeros(8, 4)}}},
                              "train_phase_idx": 104},
        "phase_idx": 104, "iteration": 52000, "type": "checkpoint"},
        "classy_state_dict.base_model.model.trunk._feature_blocks."),
    # mmselfsup 1.x MoCo/BYOL: mmcls ResNet names (== torchvision, test_mmcls_resnet_names_are_torchvision),
    # the momentum encoder an EMA of nn.Sequential(backbone, neck).
    "mmselfsup": (lambda m: {
        "meta": {"epoch": 200, "iter": 250000, "mmengine_version": "0.10.7"},
        "state_dict": {**_pre("backbone.", _no_fc(m.state_dict())), "neck.mlp.0.weight": _zeros(8, 4),
                       **_pre("momentum_encoder.module.0.", _other(_no_fc(m.state_dict()))),
                       "momentum_encoder.module.1.mlp.0.weight": _zeros(8, 4),
                       "momentum_encoder.steps": torch.tensor(250000)},
        "optimizer": {"state": {}, "param_groups": []}}, "state_dict.backbone."),
    "timm": (lambda m: {
        "epoch": 99, "arch": "resnet", "state_dict": m.state_dict(), "state_dict_ema": _other(m.state_dict()),
        "optimizer": {"state": {}}, "version": 2, "metric": 71.5,
        "args": argparse.Namespace(model="resnet", epochs=100)}, "state_dict."),
    # BYOL as PyTorch-BYOL writes it: online / target networks, the encoder an nn.Sequential of children.
    "byol": (lambda m: {
        "online_network_state_dict": {**_pre("encoder.", _sequential(m)), "projetion.net.0.weight": _zeros(8, 4)},
        "target_network_state_dict": {**_pre("encoder.", _other(_sequential(m))), "projetion.net.0.weight": _zeros(8, 4)},
        "optimizer_state_dict": {"state": {}, "param_groups": []}}, "online_network_state_dict.encoder."),
    "lightning": (lambda m: {
        "state_dict": {**_pre("model.backbone.", _no_fc(m.state_dict())), "model.head.weight": _zeros(8, 4)},
        "epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 0.1}},
        "state_dict.model.backbone."),
    "moco": (lambda m: {
        "epoch": 200, "arch": "resnet50", "optimizer": {"state": {}},
        "state_dict": {**_pre("module.encoder_q.", m.state_dict()), **_pre("module.encoder_k.", _other(m.state_dict())),
                       "module.queue": _zeros(16, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
        "state_dict.module.encoder_q."),
    "dino": (lambda m: {
        "teacher": {**_pre("backbone.", _no_fc(m.state_dict())), "head.mlp.0.weight": _zeros(8, 4)},
        "student": {**_pre("module.backbone.", _other(_no_fc(m.state_dict()))), "module.head.mlp.0.weight": _zeros(8, 4)},
        "epoch": 100, "args": argparse.Namespace(arch="resnet50", epochs=100)}, "teacher.backbone."),
}
CASES = [pytest.param(name, depth, id=f"{name}-R{depth}") for name in LAYOUTS for depth in (18, 50)]
CASES.append(pytest.param("vissl", 101, id="vissl-R101"))


@pytest.fixture(scope="module")
def tv_models() -> Callable[[int], tuple[nn.Module, Tensor, dict[str, Tensor]]]:
    """One seeded torchvision ResNet per depth with its input and stage outputs (shared by the layouts:
    each case checks that its file gives back exactly these weights before any engine sees them)."""
    cache: dict[int, tuple] = {}

    def get(depth: int):
        if depth not in cache:
            tv = random_resnet(f"resnet{depth}", seed=depth)
            x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(depth))
            with torch.no_grad():
                cache[depth] = (tv, x, tv_stages(tv, x))
        return cache[depth]

    return get


@pytest.fixture(scope="module")
def d2_models() -> Callable[[int], nn.Module]:
    """One detectron2 FPN model per depth, built on first use (loading replaces every backbone tensor)."""
    cache: dict[int, nn.Module] = {}

    def get(depth: int) -> nn.Module:
        if depth not in cache:
            config = "demo_synthetic_R_18_FPN.yaml" if depth == 18 else "coco_R_50_FPN_1x.yaml"
            cache[depth] = build_d2(config, depth=depth)
        return cache[depth]

    return get


def _mmseg_stages(ckpt: Path, converted: Path, info, out: Path, x: Tensor) -> list[Tensor]:
    """The segmentation task's backbone (paper config, plain strides) loaded the Runner's way."""
    from mmseg.registry import MODELS

    from transfer.backbones.mmengine_weights import read_converted, verify_backbone_state
    from transfer.segmentation.runner import DEFAULT_CONFIGS, attach_checkpoint, build_parser, load_config

    require_mmseg()
    args = build_parser().parse_args(["--ckpt", str(ckpt), "--out", str(out), "--config", str(DEFAULT_CONFIGS["paper"]),
                                      "--cfg-options", "model.backbone.strides=(1,2,2,2)",
                                      "model.backbone.dilations=(1,1,1,1)"])
    cfg = load_config(args, info)
    attach_checkpoint(cfg, converted)
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    verify_backbone_state(backbone, read_converted(converted), check_values=True)
    backbone.eval()  # (mmseg's ResNet.train() returns None: no chaining)
    with torch.no_grad():
        return list(backbone(x))


@pytest.mark.parametrize("layout,depth", CASES)
def test_layout_converts_to_torchvision_equivalent_engines(layout, depth, tv_models, d2_models, tmp_path):
    from transfer.backbones.resnet.detectron2 import load_verified

    write, expected_prefix = LAYOUTS[layout]
    tv, x, ref = tv_models(depth)
    ckpt = tmp_path / "ckpt.pth"
    torch.save(write(tv), ckpt)
    state, info = load(ckpt)
    assert (info.backbone, info.arch) == (expected_prefix, f"resnet{depth}")
    reference = _no_fc(tv.state_dict())
    assert set(state) == set(reference) and all(torch.equal(state[k], reference[k]) for k in state)

    model = d2_models(depth)
    load_verified(model, to_detectron2(state, info))  # what the detection task loads, in memory
    with torch.no_grad():
        ours = d2_stages(model, x)
    d2_err = {n: max_rel_err(ours[n], ref[n]) for n in ref}
    seg = _mmseg_stages(ckpt, to_mmseg_file(state, info, tmp_path), info, tmp_path / "out", x)
    seg_err = {f"res{i + 2}": max_rel_err(a, ref[f"res{i + 2}"]) for i, a in enumerate(seg)}
    abs_d2 = max((ours[n] - ref[n]).abs().max().item() for n in ref)
    abs_seg = max((a - ref[f"res{i + 2}"]).abs().max().item() for i, a in enumerate(seg))
    print(f"\n{layout} R{depth}: max abs diff detectron2 {abs_d2:.2e} mmseg {abs_seg:.2e}")
    assert max(d2_err.values()) <= 1e-4, d2_err
    assert max(seg_err.values()) <= 1e-5, seg_err


@pytest.mark.parametrize("depth", [34, 152])
def test_other_depths_reach_both_engines_through_the_task_configs(depth, tmp_path):
    """R34 / R152 (R18/50/101 above) through the runners' own config resolution: detectron2's FPN
    config gets DEPTH and RES2_OUT_CHANNELS from the checkpoint, mmseg's R50 config depth and head widths."""
    from detectron2.modeling import build_backbone

    from transfer.detection import runner as detection
    from transfer.backbones.resnet.detectron2 import load_verified

    tv = random_resnet(f"resnet{depth}", seed=depth)
    ckpt = tmp_path / "c.pth"
    torch.save(tv.state_dict(), ckpt)
    state, info = load(ckpt)
    args = detection.parse_args(["--ckpt", str(ckpt), "--out", str(tmp_path / "o"),
                                 "--config", str(Path(detection.REPO) / "detectron_configs/coco_R_50_FPN_1x.yaml")])
    cfg = detection.load_config(args.config, args.opts)
    detection.resolve_config(cfg, args, info)
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS) == (depth, 64 if depth < 50 else 256)
    cfg.MODEL.DEVICE = "cpu"
    backbone = build_backbone(cfg).eval()
    load_verified(backbone, to_detectron2(state, info))
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, ours = tv_stages(tv, x), backbone.bottom_up(x)
        seg = _mmseg_stages(ckpt, to_mmseg_file(state, info, tmp_path), info, tmp_path / "out", x)
    names = ("res2", "res3", "res4", "res5")
    print(f"\nR{depth}: max abs diff detectron2 {max((ours[n] - ref[n]).abs().max().item() for n in names):.2e} "
          f"mmseg {max((seg[i] - ref[n]).abs().max().item() for i, n in enumerate(names)):.2e}")
    for i, name in enumerate(names):
        assert max_rel_err(ours[name], ref[name]) <= 1e-4, name
        assert max_rel_err(seg[i], ref[name]) <= 1e-5, name


def test_mmcls_resnet_names_are_torchvision():
    """mmcls/mmpretrain/mmselfsup ResNet(style='pytorch') is mmseg's: the names are torchvision's."""
    require_mmseg()
    from mmseg.registry import MODELS

    for depth in (18, 50):
        mm = set(MODELS.build(dict(type="ResNet", depth=depth, style="pytorch")).state_dict())
        assert mm == set(_no_fc(random_resnet(f"resnet{depth}").state_dict()))


def _two_online_backbones(tmp_path: Path) -> tuple[Path, dict, dict]:
    a, b = random_resnet("resnet18", seed=1).state_dict(), random_resnet("resnet18", seed=2).state_dict()
    path = tmp_path / "two.pth"
    torch.save({"state_dict": {**_pre("backbone.", _no_fc(a)), **_pre("encoder.", _no_fc(b))}}, path)
    return path, a, b


def _d2_model(pkl: Path) -> dict:
    with open(pkl, "rb") as f:
        return pickle.load(f)


def test_several_candidates_refused_until_backbone_names_one(tmp_path, capsys):
    path, a, b = _two_online_backbones(tmp_path)
    out = tmp_path / "x.pkl"
    assert convert_main(["--ckpt", str(path), "--to", "detectron2", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--backbone" in err, err
    assert "'state_dict.backbone'" in err and "'state_dict.encoder'" in err and not out.exists()
    for name, state in (("encoder", b), ("state_dict.backbone", a)):
        assert convert_main(["--ckpt", str(path), "--to", "detectron2", "--out", str(out), "--backbone", name,
                             "--force"]) == 0
        data = _d2_model(out)
        assert data["backbone_choice"] == f"--backbone {name}"
        weights = data["model"]["res3.0.conv1.weight"]
        assert (weights == state["layer2.0.conv1.weight"].numpy()).all()
        other = b if state is a else a
        assert not (weights == other["layer2.0.conv1.weight"].numpy()).all()
    for bad in ("nothing", "state_dict"):  # matches none / matches both
        assert convert_main(["--ckpt", str(path), "--to", "mmseg", "--out", str(out), "--backbone", bad, "--force"]) == 1
        assert "--backbone" in capsys.readouterr().err


def test_backbone_option_overrides_the_convention(tmp_path):
    tv = random_resnet("resnet18", seed=3)
    path = tmp_path / "solo.pth"
    torch.save(LAYOUTS["solo-learn"][0](tv), path)
    state, info = load(path, "momentum_backbone")
    assert info.backbone == "state_dict.momentum_backbone." and info.backbone_choice == "--backbone momentum_backbone"
    assert torch.equal(state["layer1.0.conv1.weight"], tv.state_dict()["layer1.0.conv1.weight"] + 0.5)
    default = load(path)[1]
    assert default.backbone_choice.startswith("default: online") and default.candidates == (
        "state_dict.backbone", "state_dict.momentum_backbone")
    # Cache keys differ between the two choices of one file (converted weights, features).
    from transfer.backbones.info import weights_id

    assert weights_id(info) != weights_id(default) and weights_id(default).startswith(default.sha256)


@pytest.mark.parametrize("task", ["detection", "segmentation", "fewshot", "linear", "knn"])
def test_every_task_takes_the_backbone_option(task):
    import importlib

    module = importlib.import_module(f"transfer.probes.{task}" if task in ("fewshot", "linear", "knn") else
                                     f"transfer.{task}")
    args = module.build_parser().parse_args(["--ckpt", "c.pth", "--out", "o", "--data", "d", "--backbone", "student"]
                                            if task in ("fewshot", "linear", "knn") else
                                            ["--ckpt", "c.pth", "--out", "o", "--backbone", "student"])
    assert args.backbone == "student"


def test_run_all_passes_the_backbone_per_checkpoint(tmp_path):
    from transfer.orchestrate import run_all, suite_jobs
    from transfer.orchestrate.suite import TaskSpec

    tv = random_resnet("resnet18", seed=4)
    solo = tmp_path / "solo.pth"
    torch.save(LAYOUTS["solo-learn"][0](tv), solo)
    plain = tmp_path / "plain.pth"
    torch.save(tv.state_dict(), plain)
    ckpts = run_all.resolve_checkpoints([str(solo), str(plain)], [], ["momentum_backbone", "auto"])
    assert [(c.backbone, c.chosen) for c in ckpts] == [("momentum_backbone", "state_dict.momentum_backbone."), (None, "")]
    with pytest.raises(run_all.UsageError, match="--backbone given 3 times for 2"):
        run_all.resolve_checkpoints([str(solo), str(plain)], [], ["a", "b", "c"])
    with pytest.raises(run_all.UsageError, match="--backbone"):  # 'nothing' names no candidate of solo.pth
        run_all.resolve_checkpoints([str(solo)], [], ["nothing"])
    spec = TaskSpec(name="k", task="knn", args={"data": "d"}, scale="demo")
    command = suite_jobs.job_command(suite_jobs.Job(ckpts[0], spec, tmp_path / "out" / "k"))
    assert command[-2:] == ["--backbone", "momentum_backbone"]
    assert "--backbone" not in suite_jobs.job_command(suite_jobs.Job(ckpts[1], spec, tmp_path / "out" / "k"))
    record = {"status": "ok", "name": "solo", "ckpt_sha256": ckpts[0].sha256,
              "task_config_hash": spec.config_hash, "backbone_option": None}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.jsonl").write_text(json.dumps(record) + "\n")
    suite = run_all.Suite("s", tmp_path / "s.yaml", [spec])
    todo, done = suite_jobs.plan([suite_jobs.Checkpoint("solo", solo, ckpts[0].sha256, "resnet18", None, False)],
                              suite, tmp_path / "out", force=False)
    assert (len(todo), len(done)) == (0, 1)  # same file, same (default) choice: done
    todo, done = suite_jobs.plan([ckpts[0]], suite, tmp_path / "out", force=False)
    assert (len(todo), len(done)) == (1, 0)  # another backbone of the same file is another result


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_inspect_every_layout(layout, tmp_path, capsys):
    write, expected_prefix = LAYOUTS[layout]
    tv = random_resnet("resnet18", seed=5)
    path = tmp_path / f"{layout}.pth"
    torch.save(write(tv), path)
    assert inspect_cli.main([str(path)]) == 0
    text = capsys.readouterr().out
    assert 4 <= len(text.strip().splitlines()) <= 8, text
    assert f"backbone: '{expected_prefix.rstrip('.')}'" in text and "architecture: resnet18" in text, text
    assert inspect_cli.main([str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chosen"] == expected_prefix.rstrip(".") and report["error"] is None
    codebase = {"torchvision": "torchvision state_dict", "vissl": "VISSL", "byol": "BYOL", "moco": "MoCo",
                "dino": "DINO", "mmselfsup": "mmselfsup/mmpretrain (mmengine)", "lightning": "Lightning"}
    assert report["codebase"] == codebase.get(layout, layout)
    assert report["parameters"] == sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))
    assert report["layout"] == ("sequential" if layout in ("lightly", "byol") else "torchvision")
    names = [c["name"] for c in report["candidates"]]
    unused = {u["group"]: u for u in report["unused"]}
    if len(names) > 1:  # the other copy is listed as a candidate and reported unused, with its role
        other = next(n for n in names if n != report["chosen"])
        assert unused[other + ".*"]["reason"].startswith("another candidate backbone")
    if layout in ("timm", "moco", "torchvision"):
        assert any(u["reason"] == "classifier (dropped)" for u in report["unused"])
    epochs = {"solo-learn": 399, "lightly": 10, "mmselfsup": 200, "timm": 99, "lightning": 3, "moco": 200, "dino": 100}
    if layout in epochs:
        assert report["metadata"]["epoch"] == epochs[layout], report["metadata"]


def test_inspect_explains_a_refusal(tmp_path, capsys):
    path, _, _ = _two_online_backbones(tmp_path)
    assert inspect_cli.main([str(path)]) == 1
    text = capsys.readouterr().out
    assert "refused:" in text and "--backbone" in text and "'state_dict.encoder' (online, resnet18)" in text
    assert inspect_cli.main([str(path), "--backbone", "encoder"]) == 0
    assert "backbone: 'state_dict.encoder' (--backbone encoder)" in capsys.readouterr().out


def test_the_choice_is_in_the_task_record_and_features_are_cached_per_choice(synthetic_root, tmp_path):
    from transfer.probes import knn

    path = tmp_path / "solo.pth"  # two real networks (weights + 0.5 would overflow the features to Inf)
    online, momentum = (_no_fc(random_resnet("resnet18", seed=s).state_dict()) for s in (6, 7))
    torch.save({"state_dict": {**_pre("backbone.", online), **_pre("momentum_backbone.", momentum)}}, path)
    common = ["--ckpt", str(path), "--data", str(synthetic_root / "classification" / "color"), "--k", "5",
              "--cache-dir", str(tmp_path / "cache"), "--image-size", "32", "--no-progress"]
    records = {}
    for option in (None, "momentum_backbone"):
        out = tmp_path / f"knn_{option}"
        assert knn.main([*common, "--out", str(out), *(["--backbone", option] if option else [])]) == 0
        records[option] = json.loads((out / "record.json").read_text())
    default, momentum = records[None]["checkpoint"], records["momentum_backbone"]["checkpoint"]
    assert default["backbone"] == "state_dict.backbone." and default["backbone_choice"].startswith("default: online")
    assert momentum["backbone"] == "state_dict.momentum_backbone."
    assert momentum["backbone_choice"] == "--backbone momentum_backbone"
    assert records["momentum_backbone"]["config"]["backbone"] == "momentum_backbone"
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4  # train + test features for each backbone


# More conventions, checked on the canonical weights only (the engines see the same canonical dict).
MORE = {
    "byol-pytorch (lucidrains)": (lambda s, o: {**_pre("net.", s), **_pre("online_encoder.net.", s),
                                                **_pre("target_encoder.net.", o),
                                                "online_predictor.net.0.weight": _zeros(8, 4)}, "net."),
    "MoCo v3": (lambda s, o: {"state_dict": {**_pre("module.base_encoder.", s), **_pre("module.momentum_encoder.", o)}},
                "state_dict.module.base_encoder."),
    "lightly DINO": (lambda s, o: {**_pre("student_backbone.", o), **_pre("teacher_backbone.", s)}, "teacher_backbone."),
    "mmselfsup 0.x": (lambda s, o: {"state_dict": {**_pre("backbone.", s), **_pre("encoder_q.0.", s),
                                                   **_pre("encoder_k.0.", o)}}, "state_dict.backbone."),
    "MoCo at initialisation": (lambda s, o: {"state_dict": {**_pre("module.encoder_q.", s),
                                                            **_pre("module.encoder_k.", s)}}, "state_dict.module.encoder_q."),
}


@pytest.mark.parametrize("name", list(MORE))
def test_more_conventions(name, tmp_path):
    state = _no_fc(random_resnet("resnet18", seed=7).state_dict())
    write, expected = MORE[name]
    torch.save(write(state, _other(state)), tmp_path / "c.pth")
    canonical, info = load(tmp_path / "c.pth")
    assert info.backbone == expected, info
    assert all(torch.equal(canonical[k], state[k]) for k in state)
