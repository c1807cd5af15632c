"""Detectron2 modules the transfer protocols need that detectron2 does not ship.

Importing this module registers them; ``transfer.engines.require_detectron2()`` imports it,
so every config in ``detectron_configs/`` that names one of these heads resolves without the
caller having to remember an import (the classic "KeyError: No object named
'Res5ROIHeadsExtraNorm'" of stock training scripts).

This is the engine side of ``transfer.engines``: it imports detectron2 directly and is only
imported from there.
"""
from __future__ import annotations

from typing import Tuple

from detectron2.config import CfgNode
from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn

__all__ = ["Res5ROIHeadsExtraNorm"]


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """C4 ROI head whose res5 stage ends with an extra norm layer (MoCo, He et al. 2020, §A).

    With BN (not FrozenBN) in the backbone, the pooled res5 features feed the box predictor
    un-normalised; MoCo's detection protocol appends one ``MODEL.RESNETS.NORM`` layer after
    res5. The layer is new (not in any pretrained checkpoint): ``transfer.detection`` expects it
    to be missing from the converted weights and every other res5 tensor to be loaded.
    """

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode) -> Tuple[nn.Sequential, int]:
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
