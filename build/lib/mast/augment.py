"""Augmentations that record their parameters (METHOD.md §1).

Two stages, so augmentation keeps up with the accelerator:

* :class:`SpatialTwoView` runs per image in DataLoader workers (where images are decoded):
  RandomResizedCrop + horizontal flip for two views; returns uint8 views and the spatial
  parameters ``[2, 5] = (cx, cy, w, h, flip)`` (box normalised to the image).
* :class:`PhotometricAugment` runs batched on the training device with per-sample parameters:
  colour jitter (random order per sample, as torchvision's ``ColorJitter``), grayscale,
  Gaussian blur, solarize, then normalisation. It returns an :class:`AugmentedBatch` holding
  both views, every recorded parameter θ_k^v and the discrepancies δ_k of the METHOD §1 table.

API (stable, the trainer codes against it)::

    AUG_NAMES = ("crop", "flip", "color", "gray", "blur", "solarize")
    AugmentConfig(size, crop_scale, crop_ratio, interpolation, flip_p, color_p, brightness,
                  contrast, saturation, hue, gray_p, blur_p, blur_sigma, blur_kernel_size,
                  solarize_p, solarize_threshold, mean, std, ops)   # K = len(ops)
    param_layout(ops) -> dict[str, slice]          # columns of θ belonging to op k
    SpatialTwoView(cfg)(img: PIL.Image) -> (uint8 [2,3,S,S], float [2,5])   # Python `random`
    PhotometricAugment(cfg, cpu_chunk_pixels=2**16)(views uint8 [N,2,3,S,S], spatial [N,2,5], generator=None)
        -> AugmentedBatch(x1, x2 [N,3,S,S] float32 normalised; theta1, theta2 [N,P];
                          delta [N,K]; param_slices; color_order [N,2,4] long; .to(device))
    discrepancy(theta1, theta2, cfg) -> δ [N,K]

Per-view parameters θ (concatenated in ``ops`` order): crop (cx, cy, w, h); flip bit;
color (applied, brightness, contrast, saturation, hue; identity values 1, 1, 1, 0 when not
applied); gray bit; blur σ (0 when not applied); solarize bit. Colour ops are applied in the
per-sample order ``color_order`` (0 brightness, 1 contrast, 2 saturation, 3 hue).
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

AUG_NAMES: tuple[str, ...] = ("crop", "flip", "color", "gray", "blur", "solarize")
PARAM_SIZES: dict[str, int] = {"crop": 4, "flip": 1, "color": 5, "gray": 1, "blur": 1, "solarize": 1}
SPATIAL_PARAMS = 5  # (cx, cy, w, h, flip)
#: the keys of :meth:`PhotometricAugment.sample`'s parameters that belong to each photometric op
PHOTOMETRIC_KEYS: dict[str, tuple[str, ...]] = {"color": ("color_applied", "color_factors", "color_order"),
                                                "gray": ("gray",), "blur": ("blur_sigma",), "solarize": ("solarize",)}
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _pair(value, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"augment.{name}: expected a pair [a, b], got {value!r}")
    return (float(value[0]), float(value[1]))


@dataclass
class AugmentConfig:
    """The VICReg augmentation recipe (METHOD.md §1 table); every field is configuration."""

    size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"  # VICReg's RandomResizedCrop interpolation
    flip_p: float = 0.5
    color_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)  # (view 1, view 2)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 13  # odd; covers ±3σ for σ = 2 (σ in output pixels, as VICReg)
    solarize_p: tuple[float, float] = (0.0, 0.2)  # (view 1, view 2)
    solarize_threshold: float = 0.5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    ops: tuple[str, ...] = AUG_NAMES

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "blur_p", "blur_sigma", "solarize_p"):
            setattr(self, name, _pair(getattr(self, name), name))
        self.mean, self.std = tuple(map(float, self.mean)), tuple(map(float, self.std))
        self.ops = tuple(self.ops)
        bad = [op for op in self.ops if op not in AUG_NAMES]
        if bad or not self.ops or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"augment.ops: expected distinct names from {list(AUG_NAMES)}, got {list(self.ops)}")
        self.ops = tuple(op for op in AUG_NAMES if op in self.ops)  # canonical pipeline order
        probs = [self.flip_p, self.color_p, self.gray_p, *self.blur_p, *self.solarize_p]
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValueError(f"augment: probabilities must lie in [0, 1], got {probs}")
        if self.size < 8 or self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0:
            raise ValueError(f"augment: expected size >= 8 and an odd blur_kernel_size, got {self.size}, {self.blur_kernel_size}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1] or self.interpolation not in _RESAMPLE:
            raise ValueError(f"augment: bad blur_sigma {self.blur_sigma} or interpolation {self.interpolation!r}")
        if not (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 and 0 < self.crop_ratio[0] <= self.crop_ratio[1]):
            raise ValueError(f"augment: expected 0 < crop_scale[0] <= crop_scale[1] <= 1 and 0 < crop_ratio[0] <= "
                             f"crop_ratio[1], got {list(self.crop_scale)}, {list(self.crop_ratio)}")
        if not (0 <= self.hue <= 0.5 and min(self.brightness, self.contrast, self.saturation) >= 0):
            raise ValueError("augment: colour jitter strengths must be >= 0 and hue <= 0.5")

    def spec(self) -> dict:
        """Plain-data description (lists, floats, str) for mast_state.pth / config.yaml."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def param_layout(ops: tuple[str, ...]) -> dict[str, slice]:
    """Columns of the per-view parameter vector θ that belong to each op, in ``ops`` order."""
    layout, start = {}, 0
    for op in ops:
        layout[op] = slice(start, start + PARAM_SIZES[op])
        start += PARAM_SIZES[op]
    return layout


@dataclass
class AugmentedBatch:
    """Two views plus everything the pipeline sampled to make them (METHOD.md §1)."""

    x1: Tensor
    x2: Tensor
    theta1: Tensor
    theta2: Tensor
    delta: Tensor
    param_slices: dict[str, slice] = field(default_factory=dict)
    color_order: Tensor | None = None

    def to(self, device, non_blocking: bool = False) -> "AugmentedBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return AugmentedBatch(move(self.x1), move(self.x2), move(self.theta1), move(self.theta2),
                              move(self.delta), dict(self.param_slices), move(self.color_order))


# ----------------------------------------------------------------------------- spatial (per image)
class SpatialTwoView:
    """RandomResizedCrop + flip, twice, on a PIL image; records (cx, cy, w, h, flip) per view. Samples with
    Python's ``random`` (torchvision's ``RandomResizedCrop.get_params`` algorithm, without its per-call
    tensor overhead); DataLoader seeds ``random`` per worker, so runs are reproducible."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) as torchvision's ``RandomResizedCrop.get_params`` draws it."""
        cfg, area = self.cfg, width * height
        log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        for _ in range(10):
            target_area = area * random.uniform(*cfg.crop_scale)
            aspect = math.exp(random.uniform(log_lo, log_hi))
            w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        in_ratio = width / height  # fallback: centre crop
        if in_ratio < min(cfg.crop_ratio):
            w, h = width, int(round(width / min(cfg.crop_ratio)))
        elif in_ratio > max(cfg.crop_ratio):
            w, h = int(round(height * max(cfg.crop_ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image) -> tuple[Tensor, Tensor]:
        if img.mode != "RGB":
            img = img.convert("RGB")
        cfg, (width, height) = self.cfg, img.size
        pixels = np.empty((2, cfg.size, cfg.size, 3), dtype=np.uint8)
        params = np.empty((2, SPATIAL_PARAMS), dtype=np.float32)
        for v in range(2):
            if "crop" in cfg.ops:
                top, left, h, w = self.crop_box(width, height)
            else:  # no crop op: the centred square crop, the same for both views
                h = w = min(width, height)
                top, left = (height - h) // 2, (width - w) // 2
            out = img.crop((left, top, left + w, top + h)).resize((cfg.size, cfg.size), _RESAMPLE[cfg.interpolation])
            flip = "flip" in cfg.ops and random.random() < cfg.flip_p
            if flip:
                out = out.transpose(Image.FLIP_LEFT_RIGHT)
            pixels[v] = np.asarray(out)
            params[v] = ((left + w / 2) / width, (top + h / 2) / height, w / width, h / height, flip)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(params)


# ----------------------------------------------------------------------------- photometric kernels
# Batched float versions of torchvision.transforms.v2.functional ops, one factor per sample.
def _gray(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma, [n,1,H,W] (torchvision ``rgb_to_grayscale``)."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    ratio = ratio.view(-1, 1, 1, 1)
    return (a * ratio + b * (1.0 - ratio)).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x).mean(dim=(-3, -2, -1), keepdim=True), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x), f)


def adjust_hue(x: Tensor, f: Tensor) -> Tensor:
    """RGB → HSV, shift hue by f (mod 1), → RGB: torchvision's ``adjust_hue`` (after Pillow), written with
    the closed-form HSV → RGB map c_n = v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6, which
    needs no gather (same values up to float rounding)."""
    r, g, b = x.unbind(dim=-3)
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    crange = maxc - minc  # = v·s
    inv = torch.where(crange == 0, 1.0, crange).reciprocal_()
    h = torch.where(maxc == r, g - b, torch.where(maxc == g, (b - r).add_(crange, alpha=2.0),
                                                   (r - g).add_(crange, alpha=4.0)))
    h = h.mul_(inv).div_(6.0).add_(1.0).fmod_(1.0)
    h6 = h.add_(f.view(-1, 1, 1)).remainder_(1.0).mul_(6.0)
    out = torch.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = (h6 + n).remainder_(6.0)
        k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.sub(maxc, k.mul_(crange), out=out[:, channel])
    return out


def _blur_matrix(sigma: Tensor, size: int, kernel_size: int) -> Tensor:
    """[n, size, size] matrices M with (M @ row) = 1-D Gaussian blur with reflect padding."""
    k = min(kernel_size, 2 * ((size - 1) // 2) + 1)  # reflect padding needs pad < size
    lim = (k - 1) / (2.0 * math.sqrt(2.0))
    grid = torch.linspace(-lim, lim, steps=k, device=sigma.device)
    kern = torch.softmax(-(grid.view(1, -1) / sigma.view(-1, 1).float()).pow(2), dim=1)  # torchvision's kernel
    src = torch.arange(size, device=sigma.device).view(-1, 1) + torch.arange(k, device=sigma.device) - k // 2
    src = torch.where(src < 0, -src, src)
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)
    n = sigma.shape[0]
    m = torch.zeros(n, size, size, device=sigma.device)
    return m.scatter_add_(2, src.expand(n, size, k), kern.view(n, 1, k).expand(n, size, k))


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample σ, reflect padding: torchvision's ``gaussian_blur`` as two banded matrix products."""
    _, _, hgt, wid = x.shape
    m_h = _blur_matrix(sigma, hgt, kernel_size)
    m_w = m_h if wid == hgt else _blur_matrix(sigma, wid, kernel_size)
    return torch.matmul(torch.matmul(m_h.unsqueeze(1), x), m_w.transpose(1, 2).unsqueeze(1))


def solarize(x: Tensor, threshold: float) -> Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def _color_blend_stage(x: Tensor, op: Tensor, factors: Tensor, applied: Tensor) -> Tensor:
    """One colour-jitter stage for the samples whose op at this stage is brightness (0), contrast (1) or
    saturation (2), in one pass: each is torchvision's clamp(f·x + (1 − f)·B) with B = 0, the mean grey
    level, or the grey image; other samples get f = 1, which leaves them exactly unchanged."""
    f = torch.ones_like(factors[:, 0])
    for o in range(3):
        f = torch.where(applied & (op == o), factors[:, o], f)
    gray = _gray(x)
    base = gray * (applied & (op == 2)).view(-1, 1, 1, 1).to(x.dtype)
    base = base + gray.mean(dim=(-3, -2, -1), keepdim=True) * (applied & (op == 1)).view(-1, 1, 1, 1).to(x.dtype)
    f = f.view(-1, 1, 1, 1)
    return torch.addcmul(base * (1.0 - f), x, f).clamp_(0.0, 1.0)


def _apply_to(x: Tensor, mask: Tensor, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """x[mask] = fn(x[mask], args[mask]); only the selected samples are computed."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        x[idx] = fn(x[idx], *(a[idx] for a in args))
    return x


# ----------------------------------------------------------------------------- discrepancies δ
def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes given as (cx, cy, w, h), [..., 4] → [...]; exactly 1 for identical boxes."""
    a0, a1 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b0, b1 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0).prod(-1)
    area_a, area_b = (a1 - a0).prod(-1), (b1 - b0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


def discrepancy(theta1: Tensor, theta2: Tensor, cfg: AugmentConfig) -> Tensor:
    """δ_k ∈ [0, 1] per pair and op, METHOD.md §1 table: crop 1 − IoU; flip/gray/solarize XOR;
    color mean |Δ factor| / (2·strength); blur |σ¹ − σ²| / σ_max (= /2 for VICReg's σ ∈ [0.1, 2])."""
    out = []
    for op, sl in param_layout(cfg.ops).items():
        a, b = theta1[:, sl], theta2[:, sl]
        if op == "crop":
            d = 1.0 - box_iou(a, b)
        elif op == "color":
            strengths = torch.tensor([2 * cfg.brightness, 2 * cfg.contrast, 2 * cfg.saturation, 2 * cfg.hue],
                                     device=a.device, dtype=a.dtype)
            used = strengths > 0
            diff = (a[:, 1:] - b[:, 1:]).abs()[:, used] / strengths[used]
            d = diff.mean(1) if used.any() else torch.zeros_like(a[:, 0])
        elif op == "blur":
            d = (a[:, 0] - b[:, 0]).abs() / cfg.blur_sigma[1]
        else:  # flip, gray, solarize: bits
            d = (a[:, 0] != b[:, 0]).to(a.dtype)
        out.append(d.clamp(0.0, 1.0))
    return torch.stack(out, dim=1)


# ----------------------------------------------------------------------------- photometric (batched)
class PhotometricAugment(nn.Module):
    """Colour jitter, grayscale, blur, solarize with per-sample parameters, batched (METHOD §1).

    All parameters are drawn first for the whole batch (:meth:`sample`), then applied (:meth:`apply`);
    on the CPU in chunks of ~``cpu_chunk_pixels`` pixels (64 views at 32 px, 1 at 224 px): tensors stay in
    cache, per-op overhead is amortised. The result does not depend on the chunking.
    """

    def __init__(self, cfg: AugmentConfig, cpu_chunk_pixels: int = 2 ** 16) -> None:
        super().__init__()
        self.cfg, self.cpu_chunk = cfg, max(1, cpu_chunk_pixels // (cfg.size * cfg.size))
        self.param_slices = param_layout(cfg.ops)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def sample(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Parameters for ``2n`` view images (rows 0..n-1 view 1, n..2n-1 view 2), in a fixed draw order."""
        cfg = self.cfg
        rand = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
        second = torch.arange(2 * n, device=device) >= n
        p: dict[str, Tensor] = {}
        if "color" in cfg.ops:
            applied = rand(2 * n) < cfg.color_p
            strength = torch.tensor([cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue], device=device)
            identity = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)
            lo = torch.maximum(identity - strength, torch.tensor([0.0, 0.0, 0.0, -0.5], device=device))
            factors = lo + (identity + strength - lo) * rand(2 * n, 4)
            p["color_applied"] = applied
            p["color_factors"] = torch.where(applied[:, None], factors, identity)
            p["color_order"] = torch.argsort(rand(2 * n, 4), dim=1)  # ColorJitter: random order per call
        if "gray" in cfg.ops:
            p["gray"] = rand(2 * n) < cfg.gray_p
        if "blur" in cfg.ops:
            applied = rand(2 * n) < torch.where(second, cfg.blur_p[1], cfg.blur_p[0])
            lo_s, hi_s = cfg.blur_sigma
            p["blur_sigma"] = torch.where(applied, lo_s + (hi_s - lo_s) * rand(2 * n), 0.0)
        if "solarize" in cfg.ops:
            p["solarize"] = rand(2 * n) < torch.where(second, cfg.solarize_p[1], cfg.solarize_p[0])
        return p

    def apply(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """Apply the photometric ops (pipeline order) to float images in [0, 1], then normalise."""
        cfg = self.cfg
        if "color_order" in p:
            applied, factors = p["color_applied"], p["color_factors"]
            for stage in range(4):
                op = p["color_order"][:, stage]
                x = _color_blend_stage(x, op, factors, applied)
                if cfg.hue > 0:
                    x = _apply_to(x, applied & (op == 3), adjust_hue, factors[:, 3])
        if "gray" in p:
            x = _apply_to(x, p["gray"], lambda im: _gray(im).expand_as(im))
        if "blur_sigma" in p:
            x = _apply_to(x, p["blur_sigma"] > 0, lambda im, s: gaussian_blur(im, s, cfg.blur_kernel_size),
                          p["blur_sigma"])
        if "solarize" in p:
            x = _apply_to(x, p["solarize"], lambda im: solarize(im, cfg.solarize_threshold))
        return torch.addcmul(-self.mean / self.std, x, 1.0 / self.std)  # (x − mean) / std in one pass

    def forward(self, views: Tensor, spatial: Tensor, generator: torch.Generator | None = None) -> AugmentedBatch:
        """views uint8 [N,2,3,S,S], spatial [N,2,5] (from SpatialTwoView) → AugmentedBatch (float32)."""
        return self.render(views, spatial, self.sample(views.shape[0], views.device, generator))

    def render(self, views: Tensor, spatial: Tensor, p: dict[str, Tensor]) -> AugmentedBatch:
        """Apply given parameters ``p`` (:meth:`sample`'s layout: rows 0..N-1 view 1, N..2N-1 view 2)."""
        if views.dim() != 5 or views.shape[1:3] != (2, 3) or spatial.shape[:2] != views.shape[:2]:
            raise ValueError(f"PhotometricAugment: expected views [N,2,3,S,S] and spatial [N,2,5], "
                             f"got {tuple(views.shape)} and {tuple(spatial.shape)}")
        with torch.autocast(device_type=views.device.type, enabled=False):
            n, device = views.shape[0], views.device
            x8 = views.transpose(0, 1).reshape(2 * n, *views.shape[2:])  # view-major
            if device.type == "cpu":
                x = torch.empty(x8.shape, dtype=torch.float32)
                for i in range(0, 2 * n, self.cpu_chunk):
                    rows = slice(i, i + self.cpu_chunk)
                    x[rows] = self.apply(x8[rows].float().div_(255.0), {k: v[rows] for k, v in p.items()})
            else:
                x = self.apply(x8.float().div_(255.0), p)
            return self._batch(x, spatial.transpose(0, 1).reshape(2 * n, -1).to(device, torch.float32), p)

    def _batch(self, x: Tensor, sp: Tensor, p: dict[str, Tensor]) -> AugmentedBatch:
        """Collect θ per view in ``ops`` order (METHOD §1 table) and the discrepancies δ."""
        n = x.shape[0] // 2
        cols = {"crop": sp[:, :4], "flip": sp[:, 4:5]}
        if "color_factors" in p:
            cols["color"] = torch.cat([p["color_applied"][:, None].float(), p["color_factors"]], dim=1)
        if "gray" in p:
            cols["gray"] = p["gray"][:, None].float()
        if "blur_sigma" in p:
            cols["blur"] = p["blur_sigma"][:, None]
        if "solarize" in p:
            cols["solarize"] = p["solarize"][:, None].float()
        theta = torch.cat([cols[op] for op in self.cfg.ops], dim=1)
        theta1, theta2 = theta[:n], theta[n:]
        order = p.get("color_order")
        return AugmentedBatch(x1=x[:n], x2=x[n:], theta1=theta1, theta2=theta2,
                              delta=discrepancy(theta1, theta2, self.cfg), param_slices=dict(self.param_slices),
                              color_order=None if order is None else order.view(2, n, 4).transpose(0, 1))
