"""Procedural scenes: shapes, colors, backgrounds and the per-pixel masks that go with them.

Everything here is a pure function of a ``numpy.random.Generator``, so one seed gives one scene.
Objects are rasterised as hard polygons (no anti-aliasing): the drawn pixels *are* the mask,
which keeps instance masks, semantic labels and COCO areas exact. Objects are painted in list
order, a later object covers earlier ones, and each instance mask holds only its visible pixels.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart")
# Hue-bin centres in degrees; objects get a hue within +-HUE_JITTER of their bin's centre.
COLORS: tuple[tuple[str, float], ...] = (
    ("red", 0.0), ("orange", 30.0), ("yellow", 60.0), ("green", 120.0),
    ("cyan", 180.0), ("blue", 225.0), ("purple", 270.0), ("magenta", 320.0),
)
COLOR_NAMES: tuple[str, ...] = tuple(name for name, _ in COLORS)
HUE_JITTER = 8.0
MIN_VISIBLE_FRACTION = 0.35  # an occluded object keeps at least this share of its pixels
MIN_VISIBLE_PIXELS = 12


def _regular(n: int, phase: float, radius: float = 1.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    return np.array([(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
                     (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)], dtype=float)


def _heart(n: int = 40) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x, y + 2.5], axis=1)
    return pts / np.abs(pts).max()


# Each shape is (outer polygon, hole polygon or None) in unit coordinates (y up, radius ~1).
OUTLINES: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
    "circle": (_regular(40, 0.0), None),
    "square": (_regular(4, np.pi / 4), None),
    "triangle": (_regular(3, np.pi / 2), None),
    "star": (_star(), None),
    "cross": (_cross(), None),
    "ring": (_regular(40, 0.0), _regular(40, 0.0, radius=0.55)),
    "hexagon": (_regular(6, 0.0), None),
    "heart": (_heart(), None),
}


@dataclass(frozen=True)
class SceneObject:
    """One object: class ids, placement (pixels, radians) and its exact fill color."""

    shape: int
    color: int
    cx: float
    cy: float
    radius: float
    angle: float
    rgb: tuple[float, float, float]


@dataclass
class Scene:
    """A rendered image with its objects (paint order) and their visible masks."""

    image: np.ndarray  # uint8 [H, W, 3]
    objects: list[SceneObject]
    masks: list[np.ndarray]  # bool [H, W], visible pixels only, same order as objects

    def semantic_label(self) -> np.ndarray:
        """uint8 [H, W]: 0 background, shape id + 1 where an object is visible."""
        label = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for obj, mask in zip(self.objects, self.masks):
            label[mask] = obj.shape + 1
        return label


def object_color(rng: np.random.Generator, color: int) -> tuple[float, float, float]:
    """A saturated RGB color (floats in [0, 1]) whose hue lies inside bin ``color``."""
    hue = (COLORS[color][1] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360.0
    return colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))


def sample_object(rng: np.random.Generator, size: int, radius: tuple[float, float],
                  shape: int | None = None, color: int | None = None,
                  x_range: tuple[float, float] | None = None) -> SceneObject:
    """Draw one object; ``radius`` and ``x_range`` are fractions of the image size."""
    shape = int(rng.integers(len(SHAPES))) if shape is None else shape
    color = int(rng.integers(len(COLORS))) if color is None else color
    r = rng.uniform(*radius) * size
    lo, hi = (r, size - r) if x_range is None else (max(r, x_range[0] * size), min(size - r, x_range[1] * size))
    cx = rng.uniform(lo, hi)
    cy = rng.uniform(r, size - r)
    return SceneObject(shape, color, cx, cy, r, rng.uniform(0, 2 * np.pi), object_color(rng, color))


def _transform(points: np.ndarray, obj: SceneObject) -> list[tuple[float, float]]:
    c, s = np.cos(obj.angle), np.sin(obj.angle)
    x = obj.cx + obj.radius * (points[:, 0] * c - points[:, 1] * s)
    y = obj.cy - obj.radius * (points[:, 0] * s + points[:, 1] * c)  # image y points down
    return list(zip(x.tolist(), y.tolist()))


def object_mask(obj: SceneObject, size: int) -> np.ndarray:
    """bool [size, size]: every pixel the object covers when nothing occludes it."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    outer, hole = OUTLINES[SHAPES[obj.shape]]
    draw.polygon(_transform(outer, obj), fill=1)
    if hole is not None:
        draw.polygon(_transform(hole, obj), fill=0)
    return np.asarray(canvas, dtype=bool)


@lru_cache(maxsize=4)
def _grid(size: int) -> np.ndarray:
    grid = np.mgrid[0:size, 0:size].astype(np.float32) / size
    grid.setflags(write=False)
    return grid


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [3, size, size] (channels first: numpy is slow on a trailing axis of 3): a
    low-saturation two-color gradient with a random wave texture."""
    c0, c1 = (np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.45), rng.uniform(0.2, 0.9)),
                       dtype=np.float32) for _ in range(2))
    yy, xx = _grid(size)
    phi = rng.uniform(0, 2 * np.pi)
    t = np.clip(np.float32(0.5) + (xx - 0.5) * np.float32(np.cos(phi)) + (yy - 0.5) * np.float32(np.sin(phi)), 0, 1)
    texture = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        freq, theta, phase = rng.uniform(1.5, 8.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        kx, ky = np.float32(2 * np.pi * freq * np.cos(theta)), np.float32(2 * np.pi * freq * np.sin(theta))
        texture += np.sin(xx * kx + yy * ky + np.float32(phase))
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32) * np.float32(rng.uniform(0.0, 0.12))
    return c0[:, None, None] + t * (c1 - c0)[:, None, None] + texture * tint[:, None, None]


def render(rng: np.random.Generator, size: int, objects: list[SceneObject]) -> Scene | None:
    """Paint ``objects`` in order over a random background; None if occlusion hides one too much."""
    full = [object_mask(obj, size) for obj in objects]
    masks, covered = [], np.zeros((size, size), dtype=bool)
    for mask in reversed(full):
        visible = mask & ~covered
        need = max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * mask.sum())
        if visible.sum() < need:
            return None
        masks.append(visible)
        covered |= mask
    masks.reverse()
    img = background(rng, size)
    for obj, mask in zip(objects, masks):
        img[:, mask] = np.asarray(obj.rgb, dtype=np.float32)[:, None]
    # uniform pixel noise (std 0.01-0.05): as good as Gaussian here and ~4x cheaper to draw
    img += np.float32(rng.uniform(0.01, 0.05) * 12 ** 0.5) * (rng.random(img.shape, dtype=np.float32) - 0.5)
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()
    return Scene(image, list(objects), masks)


def _first_valid(rng: np.random.Generator, propose, tries: int = 200) -> Scene:
    for _ in range(tries):
        scene = propose()
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place objects after {tries} tries (image too small?)")


def free_scene(rng: np.random.Generator, size: int, radius: tuple[float, float] = (0.1, 0.25),
               max_objects: int = 3) -> Scene:
    """1..max_objects objects of random shape, color, size, position and rotation (may overlap)."""
    def propose() -> Scene | None:
        count = int(rng.integers(1, max_objects + 1))
        return render(rng, size, [sample_object(rng, size, radius) for _ in range(count)])
    return _first_valid(rng, propose)


TASKS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLOR_NAMES,
    "side": ("left", "right"),
    "shape_color": tuple(f"{s}_{c}" for s in SHAPES for c in COLOR_NAMES),
}


def labelled_scene(rng: np.random.Generator, size: int, task: str, label: int,
                   max_objects: int = 3) -> Scene:
    """A scene whose *largest visible* object (painted last) carries class ``label`` of ``task``.

    shape / color / shape_color constrain that object's classes; side puts its mask centroid left
    (label 0) or right (label 1) of the image centre. Smaller distractors of any class sit behind it.
    """
    shape = color = x_range = None
    if task == "shape":
        shape = label
    elif task == "color":
        color = label
    elif task == "side":
        x_range = (0.0, 0.42) if label == 0 else (0.58, 1.0)
    elif task == "shape_color":
        shape, color = divmod(label, len(COLORS))
    else:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")

    def propose() -> Scene | None:
        distractors = [sample_object(rng, size, (0.08, 0.15)) for _ in range(int(rng.integers(0, max_objects)))]
        primary = sample_object(rng, size, (0.2, 0.3), shape, color, x_range)
        scene = render(rng, size, distractors + [primary])
        if scene is None:
            return None
        areas = [int(m.sum()) for m in scene.masks]
        if areas[-1] <= max(areas[:-1], default=0):
            return None
        if task == "side":
            centroid_x = np.nonzero(scene.masks[-1])[1].mean()
            if (centroid_x < (size - 1) / 2) != (label == 0):
                return None
        return scene
    return _first_valid(rng, propose)
