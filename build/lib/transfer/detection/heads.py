"""Detectron2 with what the transfer protocols need and detectron2 does not ship.

Every detection module loads detectron2 through :func:`register_heads`, which calls
:func:`transfer.engines.require_detectron2` and registers the project's ROI head, so every config
in ``detectron_configs/`` that names it resolves without the caller having to remember an import
(the classic "KeyError: No object named 'Res5ROIHeadsExtraNorm'" of stock training scripts).
"""
from __future__ import annotations

from types import ModuleType

from transfer import engines

__all__ = ["register_heads"]


def register_heads() -> ModuleType:
    """:func:`transfer.engines.require_detectron2`, then register ``Res5ROIHeadsExtraNorm`` (idempotent).

    Returns the detectron2 module.
    """
    detectron2 = engines.require_detectron2()
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY

    if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
        ROI_HEADS_REGISTRY.register(_extra_norm_head())
    return detectron2


def _extra_norm_head() -> type:
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import Res5ROIHeads

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """C4 ROI head whose res5 stage ends with an extra norm layer (MoCo, He et al. 2020, §A).

        With BN (not FrozenBN) in the backbone, the pooled res5 features feed the box predictor
        un-normalised; MoCo's detection protocol appends one ``MODEL.RESNETS.NORM`` layer after
        res5. The layer is new (not in any pretrained checkpoint): :mod:`transfer.backbones.resnet.detectron2`
        expects it to be missing from the converted weights and every other res5 tensor to be loaded.
        """

        @classmethod
        def _build_res5_block(cls, cfg):
            seq, out_channels = super()._build_res5_block(cfg)
            seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return seq, out_channels

    Res5ROIHeadsExtraNorm.__module__ = __name__
    return Res5ROIHeadsExtraNorm
