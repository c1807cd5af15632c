"""Places205 / iNat18 linear on mmpretrain (transfer/classification, --protocol linear_places205|linear_inat18):
the resolved config is VISSL's benchmark yaml key for key, the head computes VISSL's eval_mlp, a smoke run on
stand-ins of the official layouts writes a record keyed places205 / inat18 with its interval, and the paper
suite's entries land in the "Linear classification transfer" table beside VICReg's published row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from classification_fixtures import mmpretrain, r18  # noqa: F401 - fixtures
from transfer.backbones.info import CheckpointInfo
from transfer.classification.runner import build_parser, load_config, main
from transfer.records import EXIT_OK, EXIT_SKIPPED
from vissl_standins import inat18, places205

PROTOS = ("linear_places205", "linear_inat18")
STANDINS = {"linear_places205": places205, "linear_inat18": inat18}
# facebookresearch/vissl @ 09270ed25a6c2cf71263d955b64cbe076d34ac45,
# configs/config/benchmark/linear_image_classification/<P>/eval_resnet_8gpu_transfer_<P>_linear.yaml
P, I = "places205/...places205_linear.yaml", "inaturalist18/...inaturalist18_linear.yaml"
DEFAULTS = "vissl/config/defaults.yaml"


def _lr(o, name: str) -> float:
    return next(g["lr"] for g in o.param_groups if any(p is name for p in g["params"]))


# (what, source in the Places205 yaml, source in the iNat18 yaml, VISSL's value {protocol: value} or one value,
#  the value in our resolved config / the optimizer mmengine builds from it)
TABLE = [
    ("epochs", f"{P}:94 num_epochs: 14", f"{I}:96 num_epochs: 84", {"linear_places205": 14, "linear_inat18": 84},
     lambda c, o, m: c.train_cfg.max_epochs),
    ("global batch", f"{P}:17,111 BATCHSIZE_PER_REPLICA 32 x NUM_PROC_PER_NODE 8",
     f"{I}:19,113 BATCHSIZE_PER_REPLICA 32 x NUM_PROC_PER_NODE 8", 256, lambda c, o, m: c.batch_plan["effective"]),
    ("lr", f"{P}:100-105 auto_scale base_value 0.01 at base_lr_batch_size 256 (x 256/256)",
     f"{I}:102-107 same", 0.01, lambda c, o, m: o.param_groups[0]["lr"]),
    ("schedule", f"{P}:104-107 multistep, milestones [4, 8, 12], update_interval epoch",
     f"{I}:106-109 multistep, milestones [24, 48, 72]",
     {"linear_places205": ("MultiStepLR", [4, 8, 12], 0.1, True), "linear_inat18": ("MultiStepLR", [24, 48, 72], 0.1, True)},
     lambda c, o, m: (c.param_scheduler[0].type, list(c.param_scheduler[0].milestones), c.param_scheduler[0].gamma,
                      c.param_scheduler[0].by_epoch)),
    ("optimizer", f"{P}:90 name: sgd", f"{I}:92 name: sgd", "SGD", lambda c, o, m: type(o).__name__),
    ("momentum", f"{P}:93 momentum: 0.9", f"{I}:95 momentum: 0.9", 0.9, lambda c, o, m: o.defaults["momentum"]),
    ("nesterov", f"{P}:95 nesterov: True", f"{I}:97 nesterov: True", True, lambda c, o, m: o.defaults["nesterov"]),
    ("weight decay", f"{P}:92 weight_decay: 0.0005", f"{I}:94 weight_decay: 0.0005", 5e-4,
     lambda c, o, m: o.defaults["weight_decay"]),
    ("head BN not decayed", f"{P}:96 regularize_bn: False", f"{I}:98 regularize_bn: False", (0.0, 0.0),
     lambda c, o, m: tuple(_wd(o, p) for p in (m.head.channel_bn.weight, m.head.channel_bn.bias))),
    ("bias decayed", f"{P}:97 regularize_bias: True", f"{I}:99 regularize_bias: True", 5e-4,
     lambda c, o, m: _wd(o, m.head.fc.bias)),
    ("trunk frozen", f"{P}:56 FREEZE_TRUNK_ONLY: True", f"{I}:58 FREEZE_TRUNK_ONLY: True", (4, True),
     lambda c, o, m: (c.model.backbone.frozen_stages, all(not p.requires_grad for p in m.backbone.parameters()))),
    ("trunk in eval mode", f"{P}:55 EVAL_MODE_ON: True", f"{I}:57 EVAL_MODE_ON: True", True,
     lambda c, o, m: c.model.backbone.norm_eval),
    ("head features", f"{P}:63 [\"res5\", [\"AvgPool2d\", [[6, 6], 1, 0]]]", f"{I}:65 same",
     ((6, 6), (1, 1), (0, 0), (3,)), lambda c, o, m: (_pair(m.head.pool.kernel_size), _pair(m.head.pool.stride),
                                                     _pair(m.head.pool.padding), tuple(c.model.backbone.out_indices))),
    ("head", f"{P}:75 eval_mlp in_channels 2048, dims [8192, 205]", f"{I}:78 eval_mlp in_channels 2048, dims [8192, 8142]",
     {"linear_places205": (2048, 8192, 205), "linear_inat18": (2048, 8192, 8142)},
     lambda c, o, m: (m.head.channel_bn.num_features, m.head.fc.in_features, m.head.fc.out_features)),
    ("head BN", f"{DEFAULTS}:896,898 HEAD.BATCHNORM_EPS 1e-5, BATCHNORM_MOMENTUM 0.1", f"{DEFAULTS}:896,898", (1e-5, 0.1),
     lambda c, o, m: (m.head.channel_bn.eps, m.head.channel_bn.momentum)),
    ("sync BN", f"{P}:81-82 CONVERT_BN_TO_SYNC_BN: True", f"{I}:84-85 CONVERT_BN_TO_SYNC_BN: True", "torch",
     lambda c, o, m: c.sync_bn),
    ("loss", f"{P}:86 cross_entropy_multiple_output_single_target", f"{I}:88 same", ("CrossEntropyLoss", False),
     lambda c, o, m: (c.model.head.loss.type, c.model.head.loss.get("use_sigmoid", False))),
    ("train crop", f"{P}:19-20 RandomResizedCrop size 224", f"{I}:21-22 RandomResizedCrop size 224",
     (224, (0.08, 1.0), (3 / 4, 4 / 3)), lambda c, o, m: (c.train_pipeline[1].scale, tuple(c.train_pipeline[1].crop_ratio_range),
                                                         tuple(c.train_pipeline[1].aspect_ratio_range))),
    ("train flip", f"{P}:21 RandomHorizontalFlip", f"{I}:23 RandomHorizontalFlip", (0.5, "horizontal"),
     lambda c, o, m: (c.train_pipeline[2].prob, c.train_pipeline[2].direction)),
    ("test resize", f"{P}:35-36 Resize size 256", f"{I}:37-38 Resize size 256", (256, "short"),
     lambda c, o, m: (c.test_pipeline[1].scale, c.test_pipeline[1].edge)),
    ("test crop", f"{P}:37-38 CenterCrop size 224", f"{I}:39-40 CenterCrop size 224", 224,
     lambda c, o, m: c.test_pipeline[2].crop_size),
    ("normalisation", f"{P}:23-25 Normalize mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225]", f"{I}:25-27 same",
     ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], True),
     lambda c, o, m: ([round(x / 255, 6) for x in c.data_preprocessor.mean],
                      [round(s / 255, 6) for s in c.data_preprocessor.std], c.data_preprocessor.to_rgb)),
    ("metric", f"{P}:46-50 accuracy_list_meter topk_values [1, 5]", f"{I}:48-52 same", (1, 5),
     lambda c, o, m: tuple(c.val_evaluator.topk)),
    ("tested every epoch", f"{P}:6 TEST_EVERY_NUM_EPOCH: 1", f"{I}:6 TEST_EVERY_NUM_EPOCH: 1", 1,
     lambda c, o, m: c.train_cfg.val_interval),
]


def _pair(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _wd(optimizer, param) -> float:
    return next(g["weight_decay"] for g in optimizer.param_groups if any(p is param for p in g["params"]))


def _resolved(protocol: str, ckpt: Path, tmp_path: Path):
    """The config as the runner resolves it for a ResNet-50, the model and the optimizer mmengine builds."""
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.registry import MODELS

    info = CheckpointInfo(path=str(ckpt), sha256="0" * 64, arch="resnet50", method=None, source_format="torchvision",
                          family="resnet", run_dir=None)
    args = build_parser().parse_args(["--ckpt", str(ckpt), "--out", str(tmp_path), "--protocol", protocol])
    cfg = load_config(args, info)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, build_optim_wrapper(model, cfg.optim_wrapper).optimizer, model


@pytest.mark.parametrize("protocol", PROTOS)
def test_config_equals_vissl_benchmark_yaml_key_by_key(protocol: str, r18: Path, tmp_path: Path) -> None:
    cfg, optimizer, model = _resolved(protocol, r18, tmp_path)
    differ = {}
    for name, places_src, inat_src, vissl, ours in TABLE:
        vissl = vissl[protocol] if isinstance(vissl, dict) else vissl
        have = ours(cfg, optimizer, model)
        same = have == pytest.approx(vissl, rel=1e-12) if isinstance(vissl, float) else have == vissl
        if not same:
            differ[name] = f"{places_src if protocol == PROTOS[0] else inat_src}: VISSL {vissl!r}, ours {have!r}"
    assert not differ, differ


@pytest.mark.parametrize("protocol", PROTOS)
def test_lr_per_epoch_equals_vissl_multistep_values(protocol: str, r18: Path, tmp_path: Path) -> None:
    """yaml values [0.01, 0.001, 0.0001, 0.00001] at the milestones: every epoch's lr, as mmengine steps it."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    cfg, _, model = _resolved(protocol, r18, tmp_path)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    scheduler = PARAM_SCHEDULERS.build(dict(cfg.param_scheduler[0], optimizer=wrapper))
    milestones, values = list(cfg.param_scheduler[0].milestones), [0.01, 0.001, 0.0001, 0.00001]
    for epoch in range(cfg.train_cfg.max_epochs):
        vissl = values[sum(epoch >= m for m in milestones)]
        assert wrapper.param_groups[0]["lr"] == pytest.approx(vissl, rel=1e-9), epoch
        scheduler.step()


def test_head_computes_vissl_eval_mlp_on_res5() -> None:
    """vissl/models/heads/linear_eval_mlp.py l. 76-78 after the pool op: BatchNorm2d -> flatten -> Linear."""
    from mmpretrain.registry import MODELS

    torch.manual_seed(0)
    head = MODELS.build(dict(type="VisslEvalHead", num_classes=7, in_channels=16, pool=(6, 1, 0), grid=(2, 2)))
    res5 = torch.randn(3, 16, 7, 7)  # a 224 px crop's res5
    ref_bn = torch.nn.BatchNorm2d(16, eps=1e-5, momentum=0.1)
    ref_fc = torch.nn.Linear(64, 7)
    ref_fc.load_state_dict(head.fc.state_dict())
    head.train()
    ours = head((res5,))
    ref = ref_fc(torch.flatten(ref_bn(torch.nn.AvgPool2d([6, 6], 1, 0)(res5)), start_dim=1))
    assert torch.allclose(ours, ref, atol=1e-6) and torch.equal(head.channel_bn.running_mean, ref_bn.running_mean)
    with pytest.raises(ValueError, match=r"pools to \(1, 1\), the head expects \(2, 2\)"):
        head((torch.randn(1, 16, 6, 6),))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOS)
def test_smoke_run_on_the_official_layout_writes_a_dataset_keyed_record(protocol: str, r18: Path, tmp_path: Path) -> None:
    made = STANDINS[protocol](tmp_path / "data", classes=5)
    out = tmp_path / "run"
    code = main(["--ckpt", str(r18), "--out", str(out), "--data-root", str(made["base"]), "--protocol", protocol,
                 "--smoke", "--threads", "1"])
    record = json.loads((out / "record.json").read_text())
    assert code == EXIT_OK, record.get("error")
    assert record["task"] == "classification" and record["dataset"] == protocol.split("_", 1)[1]
    top1, iv = record["metrics"]["top1"], record["intervals"]["top1"]
    assert iv["lo"] <= top1 <= iv["hi"] and iv["n_items"] == record["data"]["val_images"] == 8
    assert record["data"]["classes"] == 5 and "bit-identical" in record["backbone_unchanged"]
    ann = (out / "ann" / "val.txt").read_text().split("\n")[0].split()
    assert (Path(record["data"]["root"]).exists() and len(ann) == 2)
    head = torch.load(out / "seed_0" / "work" / "epoch_1.pth", map_location="cpu", weights_only=False)["state_dict"]
    assert head["head.fc.weight"].shape == (5, 512 * 4)  # a ResNet-18's res5: 512 channels on the 2x2 grid


def test_missing_dataset_is_a_skipped_record(r18: Path, tmp_path: Path) -> None:
    out = tmp_path / "none"
    assert main(["--ckpt", str(r18), "--out", str(out), "--data-root", str(tmp_path / "absent"),
                 "--protocol", "linear_inat18"]) == EXIT_SKIPPED
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "skipped" and "dataset inat18 not found" in record["error"]


@pytest.mark.slow
def test_paper_smoke_of_linear_transfer_lands_beside_vicregs_row(r18: Path, tmp_path: Path) -> None:
    """``run_all --suite paper --smoke --tasks linear_places205 linear_inat18`` on stand-ins; ``--check`` reads them."""
    from reports import build
    from transfer.orchestrate import run_all
    from transfer.orchestrate.dataset_check import check_task
    from transfer.orchestrate.suite import load_suite

    data = tmp_path / "data"
    places205(data, classes=5)
    inat18(data, classes=5)
    specs = {s.name: s for s in load_suite("paper", {"datasets": str(data)}, smoke=True).tasks}
    for name in ("linear_places205", "linear_inat18"):
        verdict = check_task(specs[name])
        assert verdict.status == "found" and "5 classes" in verdict.line, verdict.line
    runs = tmp_path / "runs"
    argv = ["--ckpt", str(r18), "--suite", "paper", "--smoke", "--var", f"datasets={data}", "--out", str(runs),
            "--no-report", "--tasks", "linear_places205", "linear_inat18"]
    assert run_all.main(argv) == 0
    records = {r["task_name"]: r for r in map(json.loads, (runs / "results.jsonl").read_text().splitlines())}
    assert sorted(records) == ["linear_inat18", "linear_places205"]
    assert all(r["status"] == "ok" and r["scale"] == "smoke" for r in records.values()), \
        {n: (r["status"], r.get("error")) for n, r in records.items()}
    assert {r["dataset"] for r in records.values()} == {"places205", "inat18"}
    build.build(runs / "results.jsonl", tmp_path / "report", command="pytest")
    md = (tmp_path / "report" / "tables.md").read_text()
    table = next(s for s in md.split("\n## ") if s.startswith("Linear classification transfer"))
    assert "Places205" in table and "iNat18" in table
    assert "*54.3*" in table and "*47.0*" in table  # VICReg Table 2's published row, kept apart
    row = next(line for line in table.splitlines() if line.startswith("| r18 |"))  # the measured row, apart
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    for cell, name in zip(cells, ("linear_places205", "linear_inat18")):  # the table's column order
        r = records[name]
        half = (r["intervals"]["top1"]["hi"] - r["intervals"]["top1"]["lo"]) / 2
        assert cell == f"{r['metrics']['top1']:.1f}±{half:.1f}", (cell, table)
