"""ViT checkpoints on the ImageNet linear engine: DINO's ``eval_linear.py`` and MAE's ``main_linprobe.py``.

Each codebase's own frozen linear protocol, on the same mmpretrain Runner as VICReg's ResNet one
(PROTOCOLS.md "ViT linear"; configs ``transfer/mmpretrain_configs/vit_linear_imagenet_{dino_eval_linear,
mae_main_linprobe}.py``, cited key by key in ``tests/transfer/classification/test_vit_linear.py``):

- ``FrozenTimmViT`` (mmpretrain backbone): the project's timm ViT (:mod:`transfer.backbones.vit.load`),
  every tensor frozen, always in eval mode, returning the pooled feature of
  :mod:`transfer.backbones.vit.pooling` (the probes' poolings; no second implementation). DINO: the
  class tokens of the last 4 blocks for ViT-S and narrower, class token + patch average of the last block
  for ViT-B and wider (its README; :func:`linear_default`). MAE: the class token after the final norm
  (FINETUNE.md's linprobe command passes ``--cls_token``).
- ``MaeLinprobeHead``: ``BatchNorm1d(affine=False, eps=1e-6)`` then the linear layer (main_linprobe.py:222).
- ``MaeLARS``: MAE's ``util/lars.py`` (mmpretrain's ``LARS`` puts the lr inside the momentum buffer, adds an eps and
  adapts the biases unless told: another update, measured in the tests); ``MaeWarmupCosineLR``: ``util/lr_sched.py``'s
  per-iteration warmup + half-cycle cosine, closed form; ``MaeRandomResizedCrop``: ``util/crop.py``'s one-shot
  (TF-style) crop parameters.

Which protocol: DINO/iBOT checkpoints get DINO's, MAE checkpoints MAE's (``CheckpointInfo.codebase``);
``--config`` picks one for any ViT. Every other case is one line naming what exists.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from mast.optim import LARS
from transfer.backbones.info import BackboneMismatch, CheckpointInfo
from transfer.records import TaskFailed, TaskRun

CONFIG_DIR = Path(__file__).resolve().parents[1] / "mmpretrain_configs"
DINO_CONFIG = CONFIG_DIR / "vit_linear_imagenet_dino_eval_linear.py"
MAE_CONFIG = CONFIG_DIR / "vit_linear_imagenet_mae_main_linprobe.py"
PROTOCOL_OF = {"DINO": DINO_CONFIG, "iBOT": DINO_CONFIG, "MAE": MAE_CONFIG}  # iBOT's eval_linear is DINO's
BACKBONE_TYPE, MAE_HEAD, MAE_LARS = "FrozenTimmViT", "MaeLinprobeHead", "MaeLARS"
MAE_SCHEDULE, MAE_CROP = "MaeWarmupCosineLR", "MaeRandomResizedCrop"
IMPLEMENTED = ("the ImageNet linear engine runs a ViT with DINO's eval_linear (DINO, iBOT checkpoints; "
               f"{DINO_CONFIG.name}) or MAE's main_linprobe (MAE checkpoints; {MAE_CONFIG.name}), --protocol linear")


def require_vit_modules() -> None:
    """mmpretrain (``engine.require_mmpretrain``) plus this module's backbone, head, optimizer, schedule and crop."""
    from mmpretrain.registry import MODELS, OPTIMIZERS, PARAM_SCHEDULERS, TRANSFORMS

    from transfer.classification.engine import require_mmpretrain

    require_mmpretrain()
    if MODELS.get(BACKBONE_TYPE) is not None:
        return
    head = _head_class()
    for registry, name, cls in ((MODELS, BACKBONE_TYPE, _backbone_class()), (MODELS, MAE_HEAD, head),
                                (OPTIMIZERS, MAE_LARS, MaeLARS), (PARAM_SCHEDULERS, MAE_SCHEDULE, _schedule_class()),
                                (TRANSFORMS, MAE_CROP, _crop_class())):
        registry.register_module(name=name, module=cls)


def _backbone_class() -> type:
    from mmengine.model import BaseModule

    class FrozenTimmViT(BaseModule):
        """timm's ViT of a checkpoint (``spec``: ``CheckpointInfo.vit``) at ``img_size``, frozen and in eval mode,
        whose forward is ``(pooled feature,)``: :func:`transfer.backbones.vit.pooling.vit_features`. Its weights
        come from ``init_cfg`` (``Pretrained``: the converted file, loaded by mmengine and verified after)."""

        def __init__(self, spec: Mapping[str, Any], img_size: int, pool: str, last_blocks: int,
                     init_cfg: dict | None = None) -> None:
            from transfer.backbones.vit.load import VitSpec, build_vit

            super().__init__(init_cfg)
            self.pool, self.last_blocks = pool, int(last_blocks)
            self.vit = build_vit(VitSpec(**spec), int(img_size))
            self.vit.is_init = True  # mmengine must not run timm's own init_weights over the loaded tensors
            self.vit.requires_grad_(False)
            self.vit.eval()

        def train(self, mode: bool = True):
            super().train(mode)
            self.vit.eval()  # DINO: model.eval(); MAE: no dropout / drop-path / BatchNorm in the ViT, the same
            return self

        def forward(self, x: Tensor) -> tuple[Tensor]:
            from transfer.backbones.vit.pooling import vit_features

            with torch.no_grad():
                return (vit_features(self.vit, x, self.pool, self.last_blocks),)

    return FrozenTimmViT


def _head_class() -> type:
    from mmpretrain.registry import MODELS

    from transfer.classification.engine import HEAD_TYPE

    class MaeLinprobeHead(MODELS.get(HEAD_TYPE)):
        """main_linprobe.py:222: ``Sequential(BatchNorm1d(in, affine=False, eps=1e-6), Linear)``; logits kept."""

        def __init__(self, num_classes: int, in_channels: int, bn_eps: float = 1e-6, **kwargs) -> None:
            super().__init__(num_classes=num_classes, in_channels=in_channels, **kwargs)
            self.bn = nn.BatchNorm1d(in_channels, affine=False, eps=bn_eps)

        def pre_logits(self, feats):
            return self.bn(feats[-1])

    return MaeLinprobeHead


class MaeLARS(LARS):
    """MAE's ``util/lars.py`` (from MoCo v3): the update of VICReg's LARS (:class:`mast.optim.LARS`, the same
    lines) with MAE's exclusion rule, per parameter: no trust ratio or weight decay for parameters <= 1D."""

    def __init__(self, params, lr: float = 0, weight_decay: float = 0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001) -> None:
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        split = [{**g, "params": kept, "lars_exclude": exclude} for g in groups for exclude in (False, True)
                 if (kept := [p for p in g["params"] if (p.ndim <= 1) == exclude])]
        super().__init__(split, lr=lr, weight_decay=weight_decay, momentum=momentum, eta=trust_coefficient)


def mae_lr(base: float, t: float, warmup: float, total: float, min_lr: float = 0.0) -> float:
    """util/lr_sched.py's ``adjust_learning_rate`` at (fractional) epoch ``t``: linear warmup from 0, then cosine."""
    if t < warmup:
        return base * t / warmup
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def _schedule_class() -> type:
    from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
    from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler

    class MaeWarmupCosineLR(LRSchedulerMixin, _ParamScheduler):
        """:func:`mae_lr` of the step count (``convert_to_iter_based``: iterations / epoch length, as MAE's
        ``data_iter_step / len(data_loader) + epoch``), so the lr moves every iteration."""

        def __init__(self, optimizer, warmup: float, total: float, min_lr: float = 0.0, epoch_length: int = 1,
                     begin: int = 0, end: int = INF, last_step: int = -1, by_epoch: bool = True,
                     verbose: bool = False) -> None:
            self.warmup, self.total, self.min_lr, self.epoch_length = warmup, total, min_lr, epoch_length
            super().__init__(optimizer, begin=begin, end=end, last_step=last_step, by_epoch=by_epoch, verbose=verbose)

        @classmethod
        def build_iter_from_epoch(cls, *args, begin=0, end=INF, by_epoch=True, epoch_length=None, **kwargs):
            end = end if end == INF else int(end * epoch_length)
            return cls(*args, begin=int(begin * epoch_length), end=end, by_epoch=False, epoch_length=epoch_length,
                       **kwargs)

        def _get_value(self):
            t = self.last_step / self.epoch_length
            return [mae_lr(base, t, self.warmup, self.total, self.min_lr) for base in self.base_values]

    return MaeWarmupCosineLR


def _crop_class() -> type:
    import numpy as np
    from mmpretrain.datasets.transforms import RandomResizedCrop

    class MaeRandomResizedCrop(RandomResizedCrop):
        """util/crop.py:22-42: one draw of area and log-ratio, the size clipped to the image (no retries, no
        centre-crop fallback, unlike torchvision's and mmpretrain's 10 attempts)."""

        def rand_crop_params(self, img):
            height, width = img.shape[:2]
            target_area = height * width * np.random.uniform(*self.crop_ratio_range)
            log_ratio = (math.log(self.aspect_ratio_range[0]), math.log(self.aspect_ratio_range[1]))
            aspect = math.exp(np.random.uniform(*log_ratio))
            w = min(int(round(math.sqrt(target_area * aspect))), width)
            h = min(int(round(math.sqrt(target_area / aspect))), height)
            return np.random.randint(0, height - h + 1), np.random.randint(0, width - w + 1), h, w

    return MaeRandomResizedCrop


def vit_config_path(args: argparse.Namespace, info: CheckpointInfo) -> Path:
    """The ViT config of ``--config``, else the checkpoint's codebase's; anything else is one line."""
    where = f"{args.ckpt} holds a {info.codebase or 'unknown-codebase'} ViT ({info.arch})"
    if args.config:
        return Path(args.config)
    if args.protocol != "linear":
        raise TaskFailed(f"{where}: --protocol {args.protocol} has no ViT protocol here; {IMPLEMENTED}")
    if info.codebase not in PROTOCOL_OF:
        raise TaskFailed(f"{where}: its codebase's own linear protocol is not implemented; {IMPLEMENTED} "
                         f"(--config {DINO_CONFIG.name} or {MAE_CONFIG.name} runs one of them on it anyway)")
    return PROTOCOL_OF[info.codebase]


def pooling_of(cfg: Any, info: CheckpointInfo) -> tuple[str, int]:
    """``(pool, last blocks)`` of the config's ``vit_pooling``: ``'dino_eval_linear'`` (DINO README's rule by width,
    :func:`transfer.backbones.vit.pooling.linear_default` as for a DINO checkpoint) or an explicit pair."""
    from transfer.backbones.vit.pooling import linear_default

    rule = cfg.get("vit_pooling")
    if rule == "dino_eval_linear":
        return linear_default(replace(info, codebase="DINO"))
    pool, last_blocks = rule
    return str(pool), int(last_blocks)


def check_vit_cfg(cfg: Any, info: CheckpointInfo, config_name: str) -> list[str]:
    """Refuse a config whose backbone is not ``FrozenTimmViT``; set its architecture and pooling from ``info``
    and the head's width to the pooled feature's. Returns the notes the record keeps."""
    backbone, where = cfg.model.backbone, f"config {config_name}: model.backbone"
    if str(backbone.get("type")) != BACKBONE_TYPE:
        raise BackboneMismatch(f"{where}.type={backbone.get('type')!r} cannot hold {info.path} (a ViT, {info.arch}); "
                               f"use a ViT config ({DINO_CONFIG.name}, {MAE_CONFIG.name})")
    from transfer.backbones.vit.pooling import feature_width

    pool, last_blocks = pooling_of(cfg, info)
    depth = info.vit["depth"]
    if last_blocks > depth:
        raise BackboneMismatch(f"{where}: the protocol's pooling reads the last {last_blocks} blocks; {info.arch} "
                               f"has {depth}")
    backbone.update(spec=dict(info.vit), pool=pool, last_blocks=last_blocks)
    feature = feature_width(info.vit["embed_dim"], pool, last_blocks)
    cfg.model.head.in_channels = feature
    return [f"pooling {pool} over the last {last_blocks} block(s): {feature} features ({info.arch})"]


def to_vit_file(state: Mapping[str, Tensor], info: CheckpointInfo, img_size: int, out_dir: Path) -> Path:
    """``out_dir/backbone_mmpretrain.pth``: ``{"state_dict": FrozenTimmViT's names}``, positions resampled to
    ``img_size`` as DINO and MAE do (:func:`transfer.backbones.vit.load.resize_pos_embed`)."""
    from plumbing.atomic import torch_save_atomic
    from transfer.backbones.vit.load import resize_pos_embed, spec_of

    converted = {f"vit.{k}": v for k, v in state.items()}
    converted["vit.pos_embed"] = resize_pos_embed(state["pos_embed"], spec_of(info), img_size).contiguous()
    path = Path(out_dir) / "backbone_mmpretrain.pth"
    torch_save_atomic(path, {"state_dict": converted})
    return path


def finish_config(cfg: Any, smoke: bool) -> list[str]:
    """What depends on the crop size and the machine: the ViT's resolution (the validation crop), --smoke's train
    crop for MAE's own crop class, fp32 where there is no GPU for MAE's autocast. Returns the notes."""
    notes = []
    crop = next(int(s["crop_size"]) for s in cfg.val_dataloader.dataset.pipeline if s["type"] == "CenterCrop")
    if smoke:
        for step in cfg.train_dataloader.dataset.pipeline:
            if step["type"] == MAE_CROP:
                step["scale"] = crop
    cfg.model.backbone.img_size = crop
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        cfg.optim_wrapper = dict(type="OptimWrapper", optimizer=cfg.optim_wrapper.optimizer)
        notes.append("fp32: no CUDA device for the config's AmpOptimWrapper (MAE trains under fp16 autocast)")
    return notes


def run_vit(args: argparse.Namespace, task: TaskRun | None, state: Mapping[str, Tensor], info: CheckpointInfo,
            load_config: Callable[..., Any]) -> None:
    """The task for a ViT (``runner.run`` after reading the checkpoint; ``task`` None on ranks > 0), with the
    runner's ``load_config`` (passed in: the runner imports this module). Seeds, resume and the record are the
    ResNet path's (:mod:`transfer.classification.seeds`)."""
    from plumbing.atomic import write_text_atomic
    from transfer.classification.data import prepare_data
    from transfer.classification.seeds import record_group, run_seeds
    from transfer.mmengine_task import record_engine_part

    require_vit_modules()
    path = vit_config_path(args, info)
    cfg = load_config(argparse.Namespace(**{**vars(args), "config": str(path)}), info, check=check_vit_cfg)
    if cfg.get("protocol") != "linear":
        raise TaskFailed(f"config {path.name}: protocol {cfg.get('protocol')!r}; {IMPLEMENTED}")
    cfg.depth_notes = list(cfg.depth_notes) + finish_config(cfg, args.smoke)
    out = Path(args.out)
    data = prepare_data(cfg, out, args.smoke)
    record_engine_part(task, cfg, info, "imagenet", data=data)
    converted = to_vit_file(state, info, int(cfg.model.backbone.img_size), out)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(converted))
    if task is not None:
        write_text_atomic(out / "mmpretrain_config.py", cfg.pretty_text)
    results = run_seeds(cfg, converted, out, args.seeds, args.resume, frozen=True, ckpt_sha256=info.sha256,
                        writes=task is not None)
    if task is not None:
        record_group(task, results)
        task.record["config"] = cfg.to_dict()
        task.extra["vit_protocol"] = {"config": path.name, "source": cfg.get("protocol_source"),
                                      "pool": cfg.model.backbone.pool, "last_blocks": cfg.model.backbone.last_blocks,
                                      "notes": cfg.depth_notes}
