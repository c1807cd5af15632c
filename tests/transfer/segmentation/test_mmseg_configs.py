"""The mmseg configs (transfer/mmseg_configs/) as mmengine resolves them, inheritance included.

Each runnable config is read as the segmentation runner reads it (``Config.fromfile``) and checked
for what the runner and the protocol rely on: one crop size everywhere it is used, one class count
for the data and both heads, a schedule that ends where training ends, the dataset keys the runner's
layout check reads. A demo config is its paper twin at demo scale: the test derives the paths where
the two differ and refuses any outside data, scale, schedule length and the demo's runtime (so the
optimizer, losses, norms, evaluation and schedule shape are provably the paper's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CONFIGS = Path(__file__).resolve().parents[3] / "transfer" / "mmseg_configs"
RUNNABLE = sorted(p.name for p in CONFIGS.glob("*.py") if not p.name.startswith("_"))
TWINS = [("fcn_r18_d8_synthetic_64x64_demo.py", "fcn_r50_d8_voc12aug_512x512_20k.py"),
         ("upernet_mae_vit-t16_synthetic_64x64_demo.py", "upernet_mae_vit-b16_ade20k_512x512_160k.py")]
# Where a demo may differ from its paper twin: the data, the scale (crop, widths, depth), the schedule's
# length, and the demo runtime (no saved checkpoints, gloo, logging every 20 iterations, no drawing).
SCALE_PATHS = ("crop_size", "model.data_preprocessor.size", "model.backbone.depth", "model.backbone.img_size",
               "model.backbone.embed_dims", "model.backbone.num_heads", "model.backbone.drop_path_rate",
               "model.neck.embed_dim", "model.decode_head.in_channels", "model.decode_head.channels",
               "model.auxiliary_head.in_channels", "model.auxiliary_head.channels", "model.test_cfg")
DATA_PATHS = ("dataset", "data_", "classes", "palette", "metainfo", "num_classes", "global_batch", "train_pipeline",
              "test_pipeline", "train_dataloader", "val_dataloader", "test_dataloader",
              "model.decode_head.num_classes", "model.auxiliary_head.num_classes")
SCHEDULE_PATHS = ("max_iters", "warmup_iters", "train_cfg.max_iters", "train_cfg.val_interval", "param_scheduler")
DEMO_RUNTIME_PATHS = ("default_hooks.checkpoint", "default_hooks.logger.interval", "default_hooks.visualization.draw",
                      "env_cfg.cudnn_benchmark", "env_cfg.dist_cfg.backend")


def _load(name: str) -> Any:
    from mmengine.config import Config

    return Config.fromfile(str(CONFIGS / name))


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{path}.{key}" if path else key))
        return out
    return {path: value}


def test_every_config_file_resolves():
    names = sorted(p.name for p in CONFIGS.glob("*.py"))
    assert len(RUNNABLE) == 5 and len(names) > len(RUNNABLE)
    for name in names:  # the bases too: a broken `_base_` reference or a key two bases set fails here
        cfg = _load(name)
        assert len(cfg) and (name.startswith("_") or cfg.default_scope == "mmseg"), name


@pytest.mark.parametrize("name", RUNNABLE)
def test_runnable_config_is_consistent(name: str):
    cfg = _load(name)
    assert cfg.dataset_name and cfg.data_root and cfg.dataset_type  # the runner's record and layout check
    crop = cfg.crop_size
    assert cfg.model.data_preprocessor.size == crop
    crops = [t.crop_size for t in cfg.train_pipeline if t.type == "RandomCrop"]
    pads = [t.size for t in cfg.train_pipeline if t.type == "Pad"]
    assert crops == [crop] and all(size == crop for size in pads)
    if cfg.model.backbone.type == "MAE":
        assert cfg.model.backbone.img_size == crop
    heads = (cfg.model.decode_head.num_classes, cfg.model.auxiliary_head.num_classes)
    assert heads[0] == heads[1] == cfg.get("num_classes", heads[0])
    if "classes" in cfg:
        assert len(cfg.classes) == heads[0] == len(cfg.palette)
    assert cfg.param_scheduler[-1].end == cfg.train_cfg.max_iters
    for loader, pipeline in (("train_dataloader", cfg.train_pipeline), ("val_dataloader", cfg.test_pipeline)):
        dataset = cfg[loader].dataset
        parts = dataset.datasets if dataset.type == "ConcatDataset" else [dataset]
        assert all(part.data_root == cfg.data_root and part.pipeline == pipeline for part in parts), loader
        assert cfg[loader].sampler.type and cfg[loader].batch_size >= 1
    assert cfg.test_dataloader == cfg.val_dataloader
    if name.endswith("_demo.py"):
        assert cfg.data_marker and "global_batch" not in cfg
    else:
        assert cfg.global_batch in (8, 16)


@pytest.mark.parametrize("demo,paper", TWINS, ids=["fcn", "upernet"])
def test_demo_is_its_paper_twin_at_demo_scale(demo: str, paper: str):
    small, full = _flat(_load(demo).to_dict()), _flat(_load(paper).to_dict())
    differ = sorted(k for k in set(small) | set(full) if small.get(k) != full.get(k))
    allowed = SCALE_PATHS + DATA_PATHS + SCHEDULE_PATHS + DEMO_RUNTIME_PATHS
    assert differ and [k for k in differ if not k.startswith(allowed)] == []
    shared = [k for k in full if k not in differ]
    assert any(k.startswith("optim") for k in shared) and any("loss_decode" in k for k in shared)
    # the schedule's shape (warm-up and decay kinds, factors) is the paper's; only its iterations shrink
    shape = [[{k: v for k, v in step.items() if k not in ("begin", "end")} for step in cfg.param_scheduler]
             for cfg in (_load(demo), _load(paper))]
    assert shape[0] == shape[1]
