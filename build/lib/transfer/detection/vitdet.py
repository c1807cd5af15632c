"""ViTDet configs (detectron2 LazyConfig ``.py`` files) for a ViT checkpoint: resolve, convert, load verified.

A ViTDet config (``detectron_configs/vitdet/*.py``) is read with detectron2's ``LazyConfig`` and the
user's ``key=value`` overrides; then what follows from the checkpoint is set as further overrides (so
every process rebuilds the same config from the file): width, heads, MLP ratio, qkv bias and the
pretraining resolution of ``model.backbone.net``. Patch size and depth must be the config's (the
feature pyramid's strides and the layer-wise lr decay are written for them); ``train.device`` follows
the machine and AMP is switched off without CUDA (a note in the record).

Loading (:func:`load_vitdet_verified`): the converted tensors (:func:`transfer.backbones.vit.detectron2.to_vitdet`)
go through ``DetectionCheckpointer``; afterwards every tensor of ``backbone.net`` must hold the
converted values, and only the heads (feature pyramid, RPN, ROI heads) are left at their init.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from transfer.backbones.vit.detectron2 import VITDET_PREFIX, to_vitdet
from transfer.backbones.info import CheckpointInfo
from transfer.backbones.vit.load import spec_of

__all__ = ["SMOKE_LAZY_OPTS", "is_lazy_config", "load_lazy_config", "resolve_vitdet", "convert_for",
           "VitLoadReport", "load_vitdet_verified", "vitdet_summary", "dataset_names"]

log = logging.getLogger("transfer.detection")
# --smoke on a ViTDet config: 2 iterations of 2 images, every detection kept, few proposals, no workers.
SMOKE_LAZY_OPTS = ["train.max_iter=2", "train.eval_period=0", "train.checkpointer.period=100000",
                   "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
                   "dataloader.test.num_workers=0", "model.roi_heads.box_predictor.test_score_thresh=0.0",
                   "model.roi_heads.box_predictor.test_topk_per_image=4", "model.roi_heads.batch_size_per_image=8",
                   "model.proposal_generator.pre_nms_topk=[32,32]", "model.proposal_generator.post_nms_topk=[8,4]"]
_FROM_CHECKPOINT = ("embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "pretrain_img_size",
                    "pretrain_use_cls_token")


def is_lazy_config(path: str | Path) -> bool:
    """A detectron2 LazyConfig (python file, ViTDet) rather than a YAML ``CfgNode`` config."""
    return Path(path).suffix == ".py"


def load_lazy_config(path: str | Path, overrides: list[str]) -> Any:
    """``LazyConfig.load(path)`` with ``key=value`` overrides (detectron2's own parser)."""
    from detectron2.config import LazyConfig

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides of a LazyConfig are key=value (e.g. train.max_iter=100), got {bad}")
    cfg = LazyConfig.load(str(path))
    return LazyConfig.apply_overrides(cfg, list(overrides))


def _net(cfg: Any, where: str) -> Any:
    net = cfg.get("model", {}).get("backbone", {}).get("net")
    target = getattr(net.get("_target_"), "__name__", "") if net is not None else ""
    if target != "ViT":
        raise ValueError(f"{where}: model.backbone.net is not detectron2's ViT; a ViT checkpoint needs a ViTDet "
                         "config (e.g. detectron_configs/vitdet/demo_synthetic_vitdet_t16.py)")
    return net


def resolve_vitdet(cfg: Any, info: CheckpointInfo, where: str, user_opts: list[str]) -> tuple[list[str], list[str]]:
    """``(overrides from the checkpoint and the machine, notes)``; refuses a config the ViT cannot fill."""
    spec, net = spec_of(info), _net(cfg, where)
    if spec.reg_tokens or spec.no_embed_class or spec.pre_norm:
        raise ValueError(f"checkpoint {info.path} ({info.arch}): ViTDet has no register tokens / pre-norm")
    if int(net.patch_size) != spec.patch_size:
        raise ValueError(f"{where}: patch size {net.patch_size} but the checkpoint's {info.arch} has "
                         f"{spec.patch_size} (the pyramid's strides are written for the config's patch)")
    decay = getattr(cfg.optimizer.params, "lr_factor_func", None)
    layers = getattr(decay, "keywords", {}).get("num_layers", spec.depth)
    if int(net.depth) != spec.depth or layers != spec.depth:
        raise ValueError(f"{where}: {net.depth} blocks (lr decay over {layers}) but the checkpoint's {info.arch} has "
                         f"{spec.depth}; use a ViTDet config written for that depth")
    if cfg.train.get("init_checkpoint"):
        raise ValueError(f"{where}: train.init_checkpoint is set; the runner loads --ckpt (drop it)")
    values = dict(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio,
                  qkv_bias=spec.qkv_bias, pretrain_img_size=spec.img_size, pretrain_use_cls_token=True)
    opts = [f"model.backbone.net.{k}={v}" for k, v in values.items()]
    notes = [f"width {net.embed_dim} -> {spec.embed_dim} from the checkpoint"] if net.embed_dim != spec.embed_dim \
        else []
    cuda = torch.cuda.is_available()
    if not any(o.startswith("train.device=") for o in user_opts):
        opts.append(f"train.device={'cuda' if cuda else 'cpu'}")
    if cfg.train.amp.enabled and not cuda:
        opts.append("train.amp.enabled=False")
        notes.append("AMP off: no CUDA")
    return opts, notes


def convert_for(cfg: Any, state: Mapping[str, Tensor], info: CheckpointInfo) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """:func:`to_vitdet` with the config's windows and relative positions (new tables at zero)."""
    net = cfg.model.backbone.net
    return to_vitdet(state, info, use_rel_pos=bool(net.use_rel_pos), input_size=int(net.img_size),
                     window_size=int(net.window_size), window_block_indexes=tuple(net.window_block_indexes))


@dataclass
class VitLoadReport:
    """What loading did: tensors of ``backbone.net`` loaded (checked), new ones at zero, heads at init."""

    loaded: int = 0
    new_tensors: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"loaded": self.loaded, "verified": True, "new_tensors": self.new_tensors,
                "heads_from_init": len(self.heads), "head_prefixes": sorted({k.split(".")[0] + "." + k.split(".")[1]
                                                                            for k in self.heads})}


def load_vitdet_verified(model: nn.Module, converted: Mapping[str, Tensor], new: list[str],
                         source: str = "converted weights") -> VitLoadReport:
    """Load ``converted`` through ``DetectionCheckpointer``; every ``backbone.net`` tensor must hold it."""
    from detectron2.checkpoint import DetectionCheckpointer

    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    DetectionCheckpointer(net)._load_model({"model": {k: v.clone() for k, v in converted.items()},
                                            "matching_heuristics": False})
    state = net.state_dict()
    problems = [k for k, v in converted.items() if k not in state or state[k].shape != v.shape
                or not torch.equal(state[k].detach().cpu().to(v.dtype), v)]
    backbone = [k for k in state if k.startswith(VITDET_PREFIX)]
    never = [k for k in backbone if k not in converted]
    if problems or never:
        raise RuntimeError(f"{source}: {len(problems)} converted tensors not held by the model {problems[:3]}; "
                           f"{len(never)} ViT tensors not loaded {never[:3]}")
    report = VitLoadReport(loaded=len(converted), new_tensors=list(new),
                           heads=[k for k in state if not k.startswith(VITDET_PREFIX)])
    log.info("weights %s: %d ViT tensors loaded and verified (%d new at zero); %d head tensors from init",
             source, report.loaded, len(new), len(report.heads))
    return report


def vitdet_summary(cfg: Any) -> dict:
    """The protocol's numbers for the record (and the fast test)."""
    net, opt = cfg.model.backbone.net, cfg.optimizer
    decay = opt.params.get("lr_factor_func")
    sched = cfg.lr_multiplier
    return {"lr": opt.lr, "weight_decay": opt.weight_decay, "betas": list(opt.betas),
            "layer_decay": getattr(decay, "keywords", {}).get("lr_decay_rate"),
            "max_iter": cfg.train.max_iter, "batch": cfg.dataloader.train.total_batch_size,
            "milestones": list(sched.scheduler.milestones),
            "warmup_iters": round(sched.warmup_length * cfg.train.max_iter),
            "drop_path": net.drop_path_rate, "image_size": net.img_size, "window_size": net.window_size,
            "window_blocks": list(net.window_block_indexes), "rel_pos": net.use_rel_pos, "amp": cfg.train.amp.enabled}


def dataset_names(cfg: Any) -> list[str]:
    """The train and test dataset names of a LazyConfig's data loaders."""
    names = []
    for split in ("train", "test"):
        value = cfg.dataloader[split].dataset.names
        names += [value] if isinstance(value, str) else list(value)
    return names
