"""ViT checkpoints on the ImageNet linear engine (transfer/classification/vit.py): DINO's eval_linear and MAE's
main_linprobe key for key, the pooled feature equal to the probes' pooling and to each codebase's own formula,
a frozen ViT bit-identical after training while the head learns,
the paper suite's smoke run on a ViT, and every ViT case without a protocol refused in one line.
Stand-ins: tiny DINO/MAE-format ViTs (tests/vit_writers.py), tiny JPEGs (tests/imagenet_standins.py)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import vit_writers
from classification_fixtures import mmpretrain  # noqa: F401 - fixture
from imagenet_standins import folders_standin
from transfer.backbones import load
from transfer.backbones.info import CheckpointInfo
from transfer.backbones.vit.load import VitSpec
from transfer.classification.runner import build_parser, load_config, main
from transfer.classification.vit import (DINO_CONFIG, MAE_CONFIG, check_vit_cfg, finish_config, require_vit_modules,
                                         to_vit_file)
from transfer.records import EXIT_FAILED, EXIT_OK

TINY = ["global_batch=4", "check_sizes=False", "train_dataloader.num_workers=0", "val_dataloader.num_workers=0",
        "test_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
        "val_dataloader.persistent_workers=False", "test_dataloader.persistent_workers=False",
        "train_dataloader.dataset.pipeline.1.scale=32", "val_dataloader.dataset.pipeline.1.scale=36",
        "val_dataloader.dataset.pipeline.2.crop_size=32"]
EPOCHS = {"dino": ["train_cfg.max_epochs=2", "param_scheduler.0.T_max=2", "param_scheduler.0.end=2"],
          "mae": ["train_cfg.max_epochs=2", "param_scheduler.0.total=2", "param_scheduler.0.warmup=1",
                  "param_scheduler.0.end=2"]}


@pytest.fixture(scope="module", autouse=True)
def vit_modules(mmpretrain):  # noqa: F811 - the fixture of classification_fixtures
    require_vit_modules()


def _write(kind: str, path: Path, depth: int = 4, dim: int = 192) -> Path:
    """A tiny ViT (patch 16, 32 px) as DINO's main_dino.py / MAE's main_pretrain.py / timm save it."""
    teacher = vit_writers.timm_vit(16, 32, depth=depth, dim=dim, seed=1).state_dict()
    student = vit_writers.timm_vit(16, 32, depth=depth, dim=dim, seed=2).state_dict()
    obj = {"dino": lambda: vit_writers.dino(teacher, student), "mae": lambda: vit_writers.mae(teacher),
           "timm": lambda: teacher}[kind]()
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vit")
    return {kind: _write(kind, folder / f"{kind}.pth") for kind in ("dino", "mae", "timm")}


def _backbone(ckpt: Path, config: Path, tmp_path: Path, img: int = 32):
    """The engine's backbone for ``ckpt`` under ``config``, built by mmpretrain and loaded through mmengine's init."""
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    state, info = load(ckpt, None)
    cfg = Config.fromfile(str(config))
    check_vit_cfg(cfg, info, config.name)
    path = to_vit_file(state, info, img, tmp_path)
    model = MODELS.build(dict(cfg.model.backbone, img_size=img, init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    model.init_weights()
    return model.eval(), state, info


def _dino_eval_linear_features(vit, inp: torch.Tensor, n: int, avgpool: bool) -> torch.Tensor:
    """DINO's vision_transformer.py:225-233 get_intermediate_layers on timm's parts (prepare_tokens = patch
    embedding, class token, positions), then eval_linear.py:166-170 verbatim."""
    x = vit._pos_embed(vit.patch_embed(inp))
    intermediate_output = []
    for i, blk in enumerate(vit.blocks):
        x = blk(x)
        if len(vit.blocks) - i <= n:
            intermediate_output.append(vit.norm(x))
    output = torch.cat([x[:, 0] for x in intermediate_output], dim=-1)
    if avgpool:
        output = torch.cat((output.unsqueeze(-1), torch.mean(intermediate_output[-1][:, 1:], dim=1).unsqueeze(-1)), dim=-1)
        output = output.reshape(output.shape[0], -1)
    return output


@pytest.mark.parametrize("kind,dim", [("dino", 192), ("dino", 448), ("mae", 192)])
def test_pooled_feature_equals_probe_pooling_and_the_codebase_formula(kind: str, dim: int, tmp_path: Path) -> None:
    """ViT-S-wide DINO: 4 class tokens; wider than ViT-S: class token + patch mean (DINO interleaves the two,
    eval_linear.py:169-170: a fixed permutation, nothing a linear head initialised i.i.d. can tell); MAE: the
    class token after the final norm (models_vit.py:50-51, --cls_token)."""
    from transfer.backbones.vit.pooling import VitFeatures

    ckpt = _write(kind, tmp_path / "c.pth", dim=dim)
    model, state, info = _backbone(ckpt, DINO_CONFIG if kind == "dino" else MAE_CONFIG, tmp_path)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = model(x)[0]
    probe = VitFeatures.from_state(state, info, 32, [(model.pool, model.last_blocks)]).eval()
    with torch.no_grad():
        reference = probe(x)[(model.pool, model.last_blocks)]
        if kind == "mae":
            codebase = probe.model.forward_features(x)[:, 0]  # norm(x)[:, 0]
        else:
            wide = dim > 384
            codebase = _dino_eval_linear_features(probe.model, x, 1 if wide else 4, wide)
            if wide:  # DINO's interleaved [cls_0, avg_0, cls_1, ...] -> [cls..., avg...]
                codebase = codebase.view(3, dim, 2).transpose(1, 2).reshape(3, 2 * dim)
    expected = {("dino", 192): ("cls", 4, 4 * 192), ("dino", 448): ("cls+avg", 1, 2 * 448), ("mae", 192): ("cls", 1, 192)}
    assert (model.pool, model.last_blocks, ours.shape[1]) == expected[(kind, dim)]
    d_probe, d_code = (ours - reference).abs().max().item(), (ours - codebase).abs().max().item()
    print(f"{kind} width {dim}: max |engine - probe pooling| {d_probe:.2e}, max |engine - codebase formula| {d_code:.2e}")
    assert d_probe == 0.0 and d_code < 1e-5


def _info(dim: int, depth: int = 12, codebase: str = "DINO") -> CheckpointInfo:
    spec = VitSpec(embed_dim=dim, depth=depth, num_heads=dim // 64, patch_size=16, img_size=224, mlp_ratio=4.0)
    return CheckpointInfo(path="x.pth", sha256="0" * 64, arch="vit", method=None, source_format="timm", run_dir=None,
                          family="vit", codebase=codebase, vit=asdict(spec))


def _resolved(config: Path, info: CheckpointInfo, tmp_path: Path):
    """The resolved config as the runner builds it, the model mmpretrain builds and the optimizer mmengine builds."""
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.registry import MODELS

    args = build_parser().parse_args(["--ckpt", "x.pth", "--out", str(tmp_path), "--config", str(config)])
    cfg = load_config(args, info, check=check_vit_cfg)
    amp = dict(cfg.optim_wrapper)  # as written, before finish_config (fp32 where there is no GPU)
    finish_config(cfg, smoke=False)
    model = MODELS.build(cfg.model)
    model.train()
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    return cfg, optimizer, model, amp


def _pipe(c, split: str, i: int):
    return c[f"{split}_dataloader"].dataset.pipeline[i]


NORMALISE = (([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], True),
             lambda c, o, m, a: ([round(x / 255, 6) for x in c.data_preprocessor.mean],
                                 [round(s / 255, 6) for s in c.data_preprocessor.std], c.data_preprocessor.to_rgb))
FROZEN = ((True, False), lambda c, o, m, a: (all(not p.requires_grad for p in m.backbone.parameters()),
                                             m.backbone.vit.training))
# DINO's eval_linear.py (facebookresearch/dino @ 7c446df5b9f45747937fb0d72314eb9f7b66930a) and README.md, key for key:
# (what, source line, DINO's value, ours from the resolved config / built model / optimizer), for a ViT-S (width 384).
DINO = "eval_linear.py"
DINO_TABLE = [
    ("epochs", f"{DINO}:265 --epochs default=100", 100, lambda c, o, m, a: c.train_cfg.max_epochs),
    ("global batch", f"{DINO}:270 --batch_size_per_gpu 128 x README.md:263 --nproc_per_node=8", 1024,
     lambda c, o, m, a: c.global_batch),
    ("lr", f"{DINO}:105 args.lr * batch / 256., :266 --lr default=0.001", 0.001 * 1024 / 256,
     lambda c, o, m, a: o.param_groups[0]["lr"]),
    ("momentum", f"{DINO}:106 momentum=0.9", 0.9, lambda c, o, m, a: o.defaults["momentum"]),
    ("weight decay", f"{DINO}:107 weight_decay=0", 0.0, lambda c, o, m, a: o.defaults["weight_decay"]),
    ("optimizer", f"{DINO}:103 torch.optim.SGD (nesterov default False)", ("SGD", False),
     lambda c, o, m, a: (type(o).__name__, o.defaults["nesterov"])),
    ("schedule", f"{DINO}:109 CosineAnnealingLR(optimizer, args.epochs, eta_min=0), stepped per epoch (:127)",
     ("CosineAnnealingLR", 100, 0.0, True), lambda c, o, m, a: (c.param_scheduler[0].type, c.param_scheduler[0].T_max,
                                                               c.param_scheduler[0].eta_min, c.param_scheduler[0].by_epoch)),
    ("pooling (ViT-S)", f"{DINO}:256-260 --n_last_blocks 4, --avgpool_patchtokens False (\"n=4 ... ViT-Small\")",
     ("cls", 4), lambda c, o, m, a: (c.model.backbone.pool, c.model.backbone.last_blocks)),
    ("head", f"{DINO}:41 embed_dim * (n_last_blocks + avgpool), :242 nn.Linear(dim, num_labels)", (4 * 384, 1000),
     lambda c, o, m, a: (m.head.fc.in_features, m.head.fc.out_features)),
    ("head init", f"{DINO}:243-244 weight.normal_(0, 0.01), bias.zero_()", ("Normal", 0.0, 0.01, 0.0),
     lambda c, o, m, a: tuple(c.model.head.init_cfg[k] for k in ("type", "mean", "std", "bias"))),
    ("frozen, eval mode", f"{DINO}:55 model.eval(), :164 torch.no_grad(), :104 only the classifier optimised", *FROZEN),
    ("loss", f"{DINO}:176 nn.CrossEntropyLoss()", ("CrossEntropyLoss", 1.0, False),
     lambda c, o, m, a: (c.model.head.loss.type, c.model.head.loss.loss_weight, c.model.head.loss.get("use_sigmoid", False))),
    ("train crop", f"{DINO}:86 RandomResizedCrop(224) (bilinear)", ("RandomResizedCrop", 224, (0.08, 1.0), "bilinear"),
     lambda c, o, m, a: (_pipe(c, "train", 1).type, _pipe(c, "train", 1).scale,
                         tuple(_pipe(c, "train", 1).crop_ratio_range), _pipe(c, "train", 1).interpolation)),
    ("train flip", f"{DINO}:87 RandomHorizontalFlip()", 0.5, lambda c, o, m, a: _pipe(c, "train", 2).prob),
    ("val resize", f"{DINO}:66 Resize(256, interpolation=3)", (256, "short", "bicubic"),
     lambda c, o, m, a: (_pipe(c, "val", 1).scale, _pipe(c, "val", 1).edge, _pipe(c, "val", 1).interpolation)),
    ("val crop", f"{DINO}:67 CenterCrop(224)", 224, lambda c, o, m, a: _pipe(c, "val", 2).crop_size),
    ("normalisation", f"{DINO}:69, :89 Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))", *NORMALISE),
    ("validated every epoch", f"{DINO}:276 --val_freq default=1", 1, lambda c, o, m, a: c.train_cfg.val_interval),
    ("metrics", f"{DINO}:219 accuracy(output, target, topk=(1, 5))", (1, 5), lambda c, o, m, a: tuple(c.val_evaluator.topk)),
]
DINO_WIDE_ROWS = [  # a ViT-B (width 768): README.md:340's command
    ("pooling (ViT-B)", "README.md:340 --n_last_blocks 1 --avgpool_patchtokens true", ("cls+avg", 1),
     lambda c, o, m, a: (c.model.backbone.pool, c.model.backbone.last_blocks)),
    ("head (ViT-B)", f"{DINO}:41 embed_dim * (1 + 1)", 2 * 768, lambda c, o, m, a: m.head.fc.in_features)]
# MAE's main_linprobe.py (facebookresearch/mae @ efb2a8062c206524e35e47d04501ed4f544c0ae8), FINETUNE.md, util/*.py.
MAE = "main_linprobe.py"
MAE_TABLE = [
    ("epochs", "FINETUNE.md:145 --epochs 90", 90, lambda c, o, m, a: c.train_cfg.max_epochs),
    ("global batch", "FINETUNE.md:150 512 (batch_size) * 4 (nodes) * 8 (gpus per node) = 16384", 16384,
     lambda c, o, m, a: c.global_batch),
    ("lr", f"{MAE}:240 args.blr * eff_batch_size / 256, FINETUNE.md:146 --blr 0.1", 0.1 * 16384 / 256,
     lambda c, o, m, a: o.defaults["lr"]),
    ("weight decay", "FINETUNE.md:147 --weight_decay 0.0", 0.0, lambda c, o, m, a: o.defaults["weight_decay"]),
    ("optimizer", f"{MAE}:252 LARS(head.parameters()), util/lars.py:18 momentum=0.9, trust_coefficient=0.001 (mast.optim.LARS: eta)",
     ("MaeLARS", 0.9, 0.001), lambda c, o, m, a: (type(o).__name__, o.defaults["momentum"],
                                                  o.defaults["eta"])),
    ("trained parameters", f"{MAE}:224-227 requires_grad only in the head", ["head.fc.bias", "head.fc.weight"],
     lambda c, o, m, a: sorted(n for n, p in m.named_parameters() if p.requires_grad)),
    ("schedule", f"{MAE}:66 --warmup_epochs 10, :63 --min_lr 0; util/lr_sched.py, per iteration (engine_finetune.py:46-47)",
     ("MaeWarmupCosineLR", 10, 90, 0.0, True), lambda c, o, m, a: (
         c.param_scheduler[0].type, c.param_scheduler[0].warmup, c.param_scheduler[0].total,
         c.param_scheduler[0].min_lr, c.param_scheduler[0].convert_to_iter_based)),
    ("pooling", "FINETUNE.md:143 --cls_token (global_pool False: models_vit.py:50-51 norm(x)[:, 0])", ("cls", 1),
     lambda c, o, m, a: (c.model.backbone.pool, c.model.backbone.last_blocks)),
    ("head BatchNorm", f"{MAE}:222 BatchNorm1d(in_features, affine=False, eps=1e-6) (momentum default 0.1)",
     (False, 1e-6, 0.1, 384), lambda c, o, m, a: (m.head.bn.affine, m.head.bn.eps, m.head.bn.momentum,
                                                 m.head.bn.num_features)),
    ("head", f"{MAE}:189-192 head = Linear(embed_dim, nb_classes=1000)", (384, 1000),
     lambda c, o, m, a: (m.head.fc.in_features, m.head.fc.out_features)),
    ("head init", f"{MAE}:218 trunc_normal_(head.weight, std=0.01) (timm: a=-2, b=2; bias 0 from timm's init)",
     ("TruncNormal", 0.0, 0.01, -2.0, 2.0, 0.0), lambda c, o, m, a: tuple(c.model.head.init_cfg[k] for k in (
         "type", "mean", "std", "a", "b", "bias"))),
    ("frozen", f"{MAE}:224-225 requires_grad False (the ViT has no dropout or BatchNorm: train/eval alike)", *FROZEN),
    ("loss", f"{MAE}:256 torch.nn.CrossEntropyLoss()", ("CrossEntropyLoss", False),
     lambda c, o, m, a: (c.model.head.loss.type, c.model.head.loss.get("use_sigmoid", False))),
    ("mixed precision", "engine_finetune.py:55 torch.cuda.amp.autocast(), main_linprobe.py:254 NativeScaler",
     ("AmpOptimWrapper", "float16", "dynamic"), lambda c, o, m, a: (a["type"], a["dtype"], a["loss_scale"])),
    ("drop last", f"{MAE}:178 drop_last=True", True, lambda c, o, m, a: c.train_dataloader.drop_last),
    ("train crop", f"{MAE}:133 RandomResizedCrop(224, interpolation=3) from util/crop.py (TF-style parameters)",
     ("MaeRandomResizedCrop", 224, (0.08, 1.0), (3 / 4, 4 / 3), "bicubic"),
     lambda c, o, m, a: (_pipe(c, "train", 1).type, _pipe(c, "train", 1).scale,
                         tuple(_pipe(c, "train", 1).crop_ratio_range), tuple(_pipe(c, "train", 1).aspect_ratio_range),
                         _pipe(c, "train", 1).interpolation)),
    ("train flip", f"{MAE}:134 RandomHorizontalFlip()", 0.5, lambda c, o, m, a: _pipe(c, "train", 2).prob),
    ("val resize", f"{MAE}:138 Resize(256, interpolation=3)", (256, "short", "bicubic"),
     lambda c, o, m, a: (_pipe(c, "val", 1).scale, _pipe(c, "val", 1).edge, _pipe(c, "val", 1).interpolation)),
    ("val crop", f"{MAE}:139 CenterCrop(224)", 224, lambda c, o, m, a: _pipe(c, "val", 2).crop_size),
    ("normalisation", f"{MAE}:136, :141 Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])", *NORMALISE),
    ("validated every epoch", f"{MAE}:285 evaluate() after every epoch", 1, lambda c, o, m, a: c.train_cfg.val_interval),
]


@pytest.mark.parametrize("protocol", ["dino", "dino_wide", "mae"])
def test_config_equals_the_codebase_arguments_key_by_key(protocol: str, tmp_path: Path) -> None:
    config, dim = {"dino": (DINO_CONFIG, 384), "dino_wide": (DINO_CONFIG, 768), "mae": (MAE_CONFIG, 384)}[protocol]
    info = _info(dim, codebase="MAE" if protocol == "mae" else "DINO")
    cfg, optimizer, model, amp = _resolved(config, info, tmp_path)
    table = MAE_TABLE if protocol == "mae" else DINO_WIDE_ROWS if protocol == "dino_wide" else DINO_TABLE
    differ = {}
    for name, source, theirs, ours in table:
        have = ours(cfg, optimizer, model, amp)
        same = have == pytest.approx(theirs, rel=1e-12) if isinstance(theirs, float) else have == theirs
        if not same:
            differ[name] = f"{source}: theirs {theirs!r}, ours {have!r}"
    assert not differ, differ
    assert cfg.batch_plan["effective"] == cfg.global_batch and cfg.protocol == "linear"


def _run(ckpt: Path, root: Path, out: Path, *extra: str) -> dict:
    code = main(["--ckpt", str(ckpt), "--out", str(out), "--data-root", str(root), "--any-batch", *extra])
    record = json.loads((out / "record.json").read_text())
    assert code == EXIT_OK, record["error"]
    return record


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dino", "mae"])
def test_frozen_vit_stays_bit_identical_while_the_head_trains(kind: str, ckpts: dict, tmp_path: Path) -> None:
    from transfer.backbones.read import read_runner_file

    root, out = folders_standin(tmp_path / "in"), tmp_path / kind
    record = _run(ckpts[kind], root, out, "--cfg-options", *TINY, *EPOCHS[kind])
    state, info = load(ckpts[kind], None)
    from transfer.classification.seeds import seed_dir

    saved = [read_runner_file(seed_dir(out, 0) / "work" / f"epoch_{e}.pth")["state_dict"] for e in (1, 2)]
    vit = {k[len("backbone.vit."):]: v for k, v in saved[1].items() if k.startswith("backbone.vit.")}
    assert set(vit) == set(state) and all(torch.equal(vit[k], state[k]) for k in state)  # 32 px: no resampling
    assert not torch.equal(saved[0]["head.fc.weight"], saved[1]["head.fc.weight"])
    protocol = record["vit_protocol"]
    assert record["backbone_unchanged"] and record["batch"]["off_protocol"] and record["epochs"][-1]["epoch"] == 2
    if kind == "dino":  # eval_linear.py:264 --checkpoint_key teacher: the loader's choice for a DINO file
        assert info.backbone.startswith("teacher") and (protocol["pool"], protocol["last_blocks"]) == ("cls", 4)
        assert protocol["config"] == DINO_CONFIG.name
    else:  # the head's BatchNorm learned the feature statistics in train mode (no affine: nothing else)
        bn = {k: saved[1][k] for k in ("head.bn.running_mean", "head.bn.num_batches_tracked")}
        assert int(bn["head.bn.num_batches_tracked"]) == 6 and bn["head.bn.running_mean"].abs().sum() > 0
        assert (protocol["pool"], protocol["last_blocks"], protocol["config"]) == ("cls", 1, MAE_CONFIG.name)
        assert "head.bn.weight" not in saved[1]


def test_vits_without_a_protocol_are_one_line_failed_records(ckpts: dict, tmp_path: Path) -> None:
    """A timm ViT (no codebase protocol implemented), semi-supervised / Places205 on a DINO ViT: one line each,
    naming what exists, before any data is read."""
    cases = {"timm": (ckpts["timm"], []), "semisup": (ckpts["dino"], ["--protocol", "semisup_1pct"]),
             "places": (ckpts["dino"], ["--protocol", "linear_places205"])}
    for name, (ckpt, extra) in cases.items():
        out = tmp_path / name
        assert main(["--ckpt", str(ckpt), "--out", str(out), "--data-root", str(tmp_path / "absent"), *extra]) \
            == EXIT_FAILED
        error = json.loads((out / "record.json").read_text())["error"]
        print(f"{name}: {error}")
        assert "\n" not in error and "DINO's eval_linear" in error and "MAE's main_linprobe" in error, error
        assert ("timm ViT" in error) if name == "timm" else (f"--protocol {extra[1]} has no ViT protocol" in error)


@pytest.mark.slow
def test_paper_suite_smoke_runs_linear_imagenet_on_a_vit(ckpts: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    """``run_all --suite paper --smoke --tasks linear_imagenet`` with a DINO ViT: the task runs (its own
    process, DINO's protocol) and writes an ok record; a semi-supervised task stays a ResNet's."""
    from transfer import run_all

    folders_standin(tmp_path / "datasets" / "imagenet")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "runs"
    code = run_all.main(["--suite", "paper", "--smoke", "--var", f"datasets={tmp_path / 'datasets'}", "--ckpt",
                         str(ckpts["dino"]), "--out", str(out), "--tasks", "linear_imagenet", "semisup_imagenet_1pct"])
    err = capsys.readouterr().err  # run_all's own lines (a report that could not be built says why there)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["task_name"], r["status"]) for r in records] == [("linear_imagenet", "ok")], records
    assert code == 0, err[-3000:]
    record = records[0]
    assert record["scale"] == "smoke" and record["vit_protocol"]["config"] == DINO_CONFIG.name
    assert record["checkpoint"]["family"] == "vit" and record["backbone_unchanged"]
    report = "".join(f.read_text() for f in sorted((out / "report").glob("*.md")))
    # the Table-1 footnote names the protocol the row ran
    assert re.search(r"ViT rows ran their codebase's own protocol: [^;]*ImageNet linear[^;]*: "
                     r"facebookresearch/dino eval_linear\.py @ \w+ \(pooling: ", report), report[-2000:]
