"""Smoke tests: the real detectron2 and mmseg run here, through the project's engine module."""

import sys

import pytest
import torch

from transfer.engines import EngineMissing, _import, has_compiled_mmcv_ops, require_detectron2, require_mmseg


def test_detectron2_mask_rcnn_fpn_forward_from_model_zoo():
    require_detectron2()
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 128
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 96, "width": 128}])
    instances = out["instances"]
    assert instances.image_size == (96, 128)
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(instances.get_fields())


def test_detectron2_registers_project_head():
    from transfer.detection.heads import register_heads

    register_heads()
    from detectron2.modeling import ROI_HEADS_REGISTRY

    assert "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY


def test_mmseg_fcn_r50_forward():
    require_mmseg()
    from mmengine.config import Config
    from mmseg.registry import MODELS

    norm = dict(type="BN", requires_grad=True)
    cfg = Config(dict(model=dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
        backbone=dict(type="ResNet", depth=50, style="pytorch", num_stages=4, out_indices=(0, 1, 2, 3),
                      dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=norm, contract_dilation=True),
        decode_head=dict(type="FCNHead", in_channels=2048, in_index=3, channels=64, num_convs=2,
                         concat_input=True, num_classes=5, norm_cfg=norm, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        test_cfg=dict(mode="whole"),
    )))
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode="tensor")
    assert logits.shape == (1, 5, 8, 8)  # stride 8: the D8 dilations keep 64/8


def test_mmcv_ops_shim_imports_point_sample_and_refuses_compiled_ops():
    require_mmseg()
    from mmcv.ops import point_sample, sigmoid_focal_loss

    grid = torch.rand(1, 4, 2)
    assert point_sample(torch.randn(1, 3, 8, 8), grid).shape == (1, 3, 4)
    if not has_compiled_mmcv_ops():
        with pytest.raises(EngineMissing, match="sigmoid_focal_loss needs mmcv's compiled ops"):
            sigmoid_focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), 2.0, 0.25, None, "mean")


def test_missing_engine_is_one_line_with_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "not_an_engine_xyz", None)  # makes the import fail
    with pytest.raises(EngineMissing) as err:
        _import("not_an_engine_xyz", "not-an-engine==1.0")
    message = str(err.value)
    assert "\n" not in message and "not-an-engine==1.0" in message and "make setup" in message
