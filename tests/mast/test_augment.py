"""Augmentations that record their parameters (METHOD.md §1) against torchvision's functional ops."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from mast import augment as A
from mast.augment import AugmentConfig, PhotometricAugment, SpatialTwoView, discrepancy, param_layout


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.py)


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [n,3,size,size] with smooth structure and saturated pixels (hue/contrast/solarize all matter)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    img = (img * 1.4 - 0.2 + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return (img * 255).round().to(torch.uint8)


def pil_image(h: int, w: int, seed: int) -> Image.Image:
    arr = smooth_images(1, max(h, w), seed)[0, :, :h, :w].permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


# --- single ops --------------------------------------------------------------------------------------------
def test_batched_kernels_match_torchvision_functional_per_sample():
    x8 = smooth_images(4, 24)
    x = x8.float() / 255
    factors = torch.tensor([0.6, 0.93, 1.2, 1.4])
    hues = torch.tensor([-0.1, -0.03, 0.05, 0.1])
    sigmas = torch.tensor([0.1, 0.7, 1.3, 2.0])
    ours = {"brightness": A.adjust_brightness(x.clone(), factors), "contrast": A.adjust_contrast(x.clone(), factors),
            "saturation": A.adjust_saturation(x.clone(), factors), "hue": A.adjust_hue(x.clone(), hues),
            "gray": A._gray(x).expand_as(x), "blur": A.gaussian_blur(x.clone(), sigmas, 13),
            "solarize": A.solarize(x, 0.5)}
    for i in range(4):
        ref = {"brightness": lambda im: TF.adjust_brightness(im, factors[i].item()),
               "contrast": lambda im: TF.adjust_contrast(im, factors[i].item()),
               "saturation": lambda im: TF.adjust_saturation(im, factors[i].item()),
               "hue": lambda im: TF.adjust_hue(im, hues[i].item()),
               "gray": lambda im: TF.rgb_to_grayscale(im, num_output_channels=3),
               "blur": lambda im: TF.gaussian_blur(im, [13, 13], [sigmas[i].item()] * 2),
               "solarize": lambda im: TF.solarize(im, 0.5 if im.is_floating_point() else 128)}
        for name, fn in ref.items():
            # float path: the same arithmetic
            torch.testing.assert_close(ours[name][i], fn(x[i]), atol=2e-6, rtol=0, msg=name)
            # uint8 path: torchvision truncates to uint8 (within one grey level) and, for contrast and
            # saturation, floors the grey image it blends with (weight |1 - f| more)
            diff = (ours[name][i] * 255 - fn(x8[i]).float()).abs().max()
            floored_grey = abs(1 - factors[i].item()) if name in ("contrast", "saturation") else 0.0
            assert diff < 1.0 + floored_grey + 1e-3, (name, diff)


# --- whole pipeline ------------------------------------------------------------------------------------------
def reference_view(img8: torch.Tensor, theta: torch.Tensor, order: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """One view, rebuilt from its recorded parameters with torchvision's functional ops (float path)."""
    img, sl = img8.float() / 255, param_layout(cfg.ops)
    color = theta[sl["color"]]
    if color[0] == 1:
        ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
        for o in order.tolist():
            img = ops[o](img, color[1 + o].item())
    if theta[sl["gray"]][0] == 1:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    sigma = theta[sl["blur"]][0].item()
    if sigma > 0:
        img = TF.gaussian_blur(img, [cfg.blur_kernel_size] * 2, [sigma, sigma])
    if theta[sl["solarize"]][0] == 1:
        img = TF.solarize(img, cfg.solarize_threshold)
    return TF.normalize(img, list(cfg.mean), list(cfg.std))


def test_pipeline_reproduces_functional_ops_from_recorded_params():
    cfg = AugmentConfig(size=24, solarize_p=(0.5, 0.5), gray_p=0.3)
    spatial_aug = SpatialTwoView(cfg)
    random.seed(0)
    pairs = [spatial_aug(pil_image(30 + i, 40 - i, seed=i)) for i in range(12)]
    views, spatial = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    batch = PhotometricAugment(cfg)(views, spatial, generator=torch.Generator().manual_seed(1))
    assert batch.x1.shape == (12, 3, 24, 24) and batch.theta1.shape == (12, 13) and batch.delta.shape == (12, 6)
    checked_orders = set()
    for i in range(12):
        for v, (x, theta) in enumerate([(batch.x1, batch.theta1), (batch.x2, batch.theta2)]):
            order = batch.color_order[i, v]
            assert sorted(order.tolist()) == [0, 1, 2, 3]
            checked_orders.add(tuple(order.tolist()))
            torch.testing.assert_close(theta[i, :5], spatial[i, v])  # spatial params travel unchanged
            ref = reference_view(views[i, v], theta[i], order, cfg)
            torch.testing.assert_close(x[i], ref, atol=1e-4, rtol=0)
    assert len(checked_orders) > 3  # colour-jitter order really is random per sample
    again = PhotometricAugment(cfg)(views, spatial, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.x2, batch.x2) and torch.equal(again.theta2, batch.theta2)
    for pixels in (1, 5 * 24 * 24):  # CPU chunking (1 view, 5 views per chunk) does not change the result
        chunked = PhotometricAugment(cfg, cpu_chunk_pixels=pixels)(views, spatial, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(chunked.x1, batch.x1, atol=1e-6, rtol=0)
        torch.testing.assert_close(chunked.x2, batch.x2, atol=1e-6, rtol=0)


def test_spatial_views_reproduce_resized_crop_and_flip():
    cfg = AugmentConfig(size=20, flip_p=0.5)
    img = pil_image(37, 53, seed=3)
    random.seed(0)
    flips = set()
    for _ in range(6):
        views, params = SpatialTwoView(cfg)(img)
        assert views.dtype == torch.uint8 and views.shape == (2, 3, 20, 20) and params.shape == (2, 5)
        for v in range(2):
            cx, cy, w, h, flip = params[v].tolist()
            w_px, h_px = round(w * 53), round(h * 37)
            left, top = round(cx * 53 - w_px / 2), round(cy * 37 - h_px / 2)
            ref = TF.resized_crop(img, top, left, h_px, w_px, [20, 20], InterpolationMode.BICUBIC)
            if flip:
                ref = TF.horizontal_flip(ref)
            flips.add(flip)
            assert torch.equal(views[v], TF.pil_to_tensor(ref))
            assert 0.06 <= w * h <= 1.0  # scale (0.08, 1) up to integer pixel rounding
    assert flips == {0.0, 1.0}
    pickle.loads(pickle.dumps(SpatialTwoView(cfg)))  # DataLoader workers need it picklable


# --- discrepancies δ (METHOD §1 table) -----------------------------------------------------------------------
def test_discrepancy_table():
    cfg = AugmentConfig()
    #               crop (cx, cy, w, h)     flip  color (applied, b, c, s, h)   gray  blur  solarize
    t1 = torch.tensor([[0.5, 0.5, 1.0, 1.0, 0.0, 1.0, 1.4, 1.0, 1.0, 0.0, 0.0, 2.0, 0.0],
                       [0.25, 0.25, 0.5, 0.5, 1.0, 1.0, 0.6, 0.6, 0.8, -0.1, 1.0, 0.1, 1.0]])
    t2 = torch.tensor([[0.25, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.1, 0.0],
                       [0.75, 0.75, 0.5, 0.5, 1.0, 1.0, 1.4, 1.4, 1.2, 0.1, 1.0, 0.0, 0.0]])
    d = discrepancy(t1, t2, cfg)
    expected = torch.tensor([[0.5, 1.0, (0.4 / 0.8) / 4, 1.0, 1.9 / 2, 0.0],
                             [1.0, 0.0, 1.0, 0.0, 0.1 / 2, 1.0]])
    torch.testing.assert_close(d, expected)
    assert torch.equal(discrepancy(t1, t1.clone(), cfg), torch.zeros(2, 6))


def test_asymmetric_view_probabilities_and_ranges():
    cfg = AugmentConfig(size=8)
    n = 1500
    views = smooth_images(n, 8).unsqueeze(1).expand(n, 2, 3, 8, 8).contiguous()
    spatial = torch.tensor([0.5, 0.5, 1.0, 1.0, 0.0]).expand(n, 2, 5).contiguous()
    b = PhotometricAugment(cfg)(views, spatial, generator=torch.Generator().manual_seed(0))
    sl = b.param_slices
    blur1, blur2 = b.theta1[:, sl["blur"]][:, 0], b.theta2[:, sl["blur"]][:, 0]
    assert (blur1 >= 0.1).all() and (blur1 <= 2.0).all()  # p = 1.0 for view 1
    assert abs((blur2 > 0).float().mean() - 0.1) < 0.03
    assert b.theta1[:, sl["solarize"]].sum() == 0 and abs(b.theta2[:, sl["solarize"]].mean() - 0.2) < 0.04
    for theta in (b.theta1, b.theta2):
        color = theta[:, sl["color"]]
        assert abs(color[:, 0].mean() - 0.8) < 0.04 and abs(theta[:, sl["gray"]].mean() - 0.2) < 0.04
        on = color[color[:, 0] == 1]
        lo, hi = torch.tensor([0.6, 0.6, 0.8, -0.1]), torch.tensor([1.4, 1.4, 1.2, 0.1])
        assert ((on[:, 1:] >= lo) & (on[:, 1:] <= hi)).all()
        assert torch.equal(color[color[:, 0] == 0, 1:], torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(
            int((color[:, 0] == 0).sum()), 4))
    # crop and flip are identical in both views here, so their δ is exactly 0
    assert torch.equal(b.delta[:, :2], torch.zeros(n, 2)) and (b.delta >= 0).all() and (b.delta <= 1).all()


def test_ops_subset_and_bad_config():
    cfg = AugmentConfig(size=16, ops=("color", "crop"))
    assert cfg.ops == ("crop", "color")  # canonical pipeline order
    views = smooth_images(6, 16).unsqueeze(1).expand(6, 2, 3, 16, 16).contiguous()
    spatial = torch.rand(6, 2, 5)
    b = PhotometricAugment(cfg)(views, spatial, generator=torch.Generator().manual_seed(0))
    assert b.theta1.shape == (6, 9) and b.delta.shape == (6, 2) and list(b.param_slices) == ["crop", "color"]
    only_blur = AugmentConfig(size=16, ops=["blur"], blur_p=[0.0, 0.0])
    b = PhotometricAugment(only_blur)(views, spatial)
    torch.testing.assert_close(b.x1, TF.normalize(views[:, 0].float() / 255, list(only_blur.mean), list(only_blur.std)))
    assert b.color_order is None and b.theta1.shape == (6, 1)
    with pytest.raises(ValueError, match="augment.ops"):
        AugmentConfig(ops=("crop", "cutout"))
    with pytest.raises(ValueError, match="augment.blur_p"):
        AugmentConfig(blur_p=(1.0,))
    with pytest.raises(ValueError, match="probabilities"):
        AugmentConfig(gray_p=1.5)


class _Images(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return self.transform(pil_image(20 + i, 30, seed=i)), 0


def test_spatial_stage_in_dataloader_workers():
    cfg = AugmentConfig(size=16)
    loader = torch.utils.data.DataLoader(_Images(SpatialTwoView(cfg)), batch_size=4, num_workers=1)
    (views, spatial), _ = next(iter(loader))
    assert views.shape == (4, 2, 3, 16, 16) and views.dtype == torch.uint8 and spatial.shape == (4, 2, 5)
    b = PhotometricAugment(cfg)(views, spatial)
    assert torch.isfinite(b.x1).all() and b.delta.shape == (4, 6)
