"""A procedural dataset with exact object masks: shapes on cluttered backgrounds.

Every image holds one *object* (a circle, square, triangle, cross or star) whose
class is the label, drawn on top of a smooth coloured background and a few
*distractor* strokes. Position, size, rotation and colours are random; the object
lies fully inside the image, and its mask is exactly the set of pixels it paints.

>>> images, labels, masks = shapes(8, size=64, seed=0)
>>> images.shape, labels.shape, masks.shape
(torch.Size([8, 3, 64, 64]), torch.Size([8]), torch.Size([8, 64, 64]))

Same seed, same data: all randomness comes from a private ``torch.Generator`` on
the CPU (uniform draws and a permutation), the global random state is never
touched, and the per-pixel work uses only correctly rounded arithmetic (+, -, ×, ÷)
and comparisons, no sin/cos/exp, so no platform-dependent maths decides whether a
pixel belongs to the object.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CLASSES", "shapes", "sample_params", "render"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")

# Background channels stay in [BG_LO, BG_HI]; every object and distractor colour has
# one channel below COLOR_MARGIN or above 1 - COLOR_MARGIN, so each object pixel
# differs from the background under it by at least MIN_CONTRAST; a stroke whose
# colour is closer than that to the object's is inverted (then it is >= 0.75 away).
BG_LO, BG_HI = 0.25, 0.75
COLOR_MARGIN = 0.1
MIN_CONTRAST = BG_LO - COLOR_MARGIN  # least L-infinity colour distance between an object and what lies under it
RADIUS_RANGE = (0.16, 0.26)  # object radius (circumscribed circle) as a fraction of the image side
_CHUNK = 256


def _unit(deg: float) -> tuple[float, float]:
    return math.cos(math.radians(deg)), math.sin(math.radians(deg))


# Outward unit normals of the triangle's 3 sides and the pentagram's 5 lines (object frame).
_TRIANGLE_NORMALS = [_unit(90 + 120 * k) for k in range(3)]
_STAR_NORMALS = [_unit(90 + 72 * k) for k in range(5)]
_STAR_OFFSET = math.cos(math.radians(72))  # distance of a pentagram line from the centre, in radii


def _shape_mask(kind: int, u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Inside-test for class ``kind`` in the object's frame: offsets ``u, v`` ``(N, H, W)``, radius ``r`` ``(N, 1, 1)``.

    Every shape fits in the circle of radius ``r`` around its centre.
    """
    name = CLASSES[kind]
    if name == "circle":
        return u * u + v * v <= (0.85 * r) ** 2
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.68 * r
    if name == "triangle":
        inside = [nx * u + ny * v <= 0.5 * r for nx, ny in _TRIANGLE_NORMALS]
        return inside[0] & inside[1] & inside[2]
    if name == "cross":
        au, av, arm = u.abs(), v.abs(), 0.3 * r
        return ((au <= arm) & (av <= r)) | ((av <= arm) & (au <= r))
    # A filled pentagram: the points on the centre's side of at least 4 of its 5 lines.
    inner = sum((nx * u + ny * v <= _STAR_OFFSET * r).to(torch.uint8) for nx, ny in _STAR_NORMALS)
    return inner >= 4


def _colors(g: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    """Random RGB colours ``(*shape, 3)`` with one channel pushed near 0 or 1 (strong contrast)."""
    rgb = torch.rand(*shape, 3, generator=g)
    channel = (torch.rand(*shape, generator=g) * 3).long().clamp(max=2)
    low = torch.rand(*shape, generator=g) < 0.5
    extreme = torch.rand(*shape, generator=g) * COLOR_MARGIN
    extreme = torch.where(low, extreme, 1 - extreme)
    return rgb.scatter(-1, channel[..., None], extreme[..., None])


def sample_params(n: int, size: int, seed: int, strokes: int = 4) -> dict[str, Tensor]:
    """Draw every random choice of :func:`shapes` (labels, radius, centre, direction, colours,
    background noise, strokes) from a private generator; :func:`render` turns them into pixels."""
    g = torch.Generator().manual_seed(seed)
    k = len(CLASSES)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    lo_r, hi_r = RADIUS_RANGE
    radius = size * (lo_r + (hi_r - lo_r) * torch.rand(n, generator=g))
    lo, span = radius + 1, size - 2 * (radius + 1)
    center = lo[:, None] + span[:, None] * torch.rand(n, 2, generator=g)
    # A random direction from a uniform point in the unit square, normalised (no trig per image).
    d = torch.rand(n, 2, generator=g) * 2 - 1
    d = d / d.norm(dim=1, keepdim=True).clamp(min=1e-6)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    fine = torch.rand(n, 3, 12, 12, generator=g)
    ends = torch.rand(n, strokes, 2, 2, generator=g) * size
    width = 1.0 + 1.0 * torch.rand(n, strokes, generator=g)
    used = torch.rand(n, strokes, generator=g) < 0.8
    color, stroke_color = _colors(g, (n,)), _colors(g, (n, strokes))
    close = (stroke_color - color[:, None]).abs().amax(-1) < MIN_CONTRAST
    stroke_color = torch.where(close[..., None], 1 - stroke_color, stroke_color)
    return {
        "labels": labels,
        "radius": radius,
        "center": center,
        "direction": d,
        "coarse": coarse,
        "fine": fine,
        "stroke_ends": ends,
        "stroke_width": width,
        "stroke_used": used,
        "stroke_color": stroke_color,
        "color": color,
    }


def render(params: dict[str, Tensor], size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Draw images from the parameters :func:`shapes` samples; returns ``(images, background, masks)``.

    ``background`` is the same image without the object (for tests and exercises).
    """
    n = params["labels"].shape[0]
    bg = 0.6 * F.interpolate(params["coarse"], size=size, mode="bilinear", align_corners=False)
    bg = bg + 0.4 * F.interpolate(params["fine"], size=size, mode="bilinear", align_corners=False)
    bg = BG_LO + (BG_HI - BG_LO) * bg.clamp(0, 1)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    xs, ys = xs.expand(n, size, size), ys.expand(n, size, size)
    for s in range(params["stroke_ends"].shape[1]):
        p0, p1 = params["stroke_ends"][:, s, 0], params["stroke_ends"][:, s, 1]
        dx, dy = (p1 - p0)[:, 0, None, None], (p1 - p0)[:, 1, None, None]
        px, py = xs - p0[:, 0, None, None], ys - p0[:, 1, None, None]
        t = ((px * dx + py * dy) / (dx * dx + dy * dy).clamp(min=1e-6)).clamp(0, 1)
        ex, ey = px - t * dx, py - t * dy
        half = params["stroke_width"][:, s, None, None] / 2
        hit = (ex * ex + ey * ey <= half * half) & params["stroke_used"][:, s, None, None]
        bg = torch.where(hit[:, None], params["stroke_color"][:, s, :, None, None], bg)
    ox = xs - params["center"][:, 0, None, None]
    oy = ys - params["center"][:, 1, None, None]
    c, s_ = params["direction"][:, 0, None, None], params["direction"][:, 1, None, None]
    u, v = ox * c + oy * s_, oy * c - ox * s_  # rotate into the object's frame
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    r = params["radius"][:, None, None]
    for kind in range(len(CLASSES)):
        idx = (params["labels"] == kind).nonzero()[:, 0]
        masks[idx] = _shape_mask(kind, u[idx], v[idx], r[idx])
    images = torch.where(masks[:, None], params["color"][:, :, None, None], bg)
    return images, bg, masks


def shapes(n: int, size: int = 64, seed: int = 0, strokes: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` images of one shape each on a cluttered background, with exact masks.

    Args:
        n: number of images; the classes are balanced (``n % 5`` extra go to the first ones).
        size: side of the square images in pixels (objects scale with it).
        seed: the same seed gives the same data on any machine.
        strokes: at most this many distractor strokes per image (each drawn with p = 0.8).

    Returns:
        ``images`` ``(n, 3, size, size)`` float in [0, 1], ``labels`` ``(n,)`` long
        (indices into :data:`CLASSES`) and ``masks`` ``(n, size, size)`` bool, True
        on exactly the pixels the object covers.
    """
    params = sample_params(n, size, seed, strokes)
    images, masks = [], []
    for start in range(0, n, _CHUNK):
        part = {key: val[start : start + _CHUNK] for key, val in params.items()}
        img, _, m = render(part, size)
        images.append(img)
        masks.append(m)
    if n == 0:
        return torch.zeros(0, 3, size, size), params["labels"], torch.zeros(0, size, size, dtype=torch.bool)
    return torch.cat(images), params["labels"], torch.cat(masks)
