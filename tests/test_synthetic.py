"""camlib.synthetic.shapes: determinism, balance, and exact masks checked against polygons."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.path import Path

from camlib import synthetic


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return synthetic.shapes(100, size=64, seed=7)


def test_shapes_dtypes_and_ranges(data):
    images, labels, masks = data
    assert images.shape == (100, 3, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (100,) and labels.dtype == torch.long
    assert masks.shape == (100, 64, 64) and masks.dtype == torch.bool
    assert images.min() >= 0 and images.max() <= 1
    assert torch.bincount(labels, minlength=5).tolist() == [20] * 5  # balanced classes


def test_same_seed_same_data_and_global_rng_untouched(data):
    state = torch.get_rng_state()
    again = synthetic.shapes(100, size=64, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(data, again, strict=True):
        assert torch.equal(a, b)
    other = synthetic.shapes(100, size=64, seed=8)
    assert not torch.equal(other[0], data[0])


def test_other_sizes():
    images, labels, masks = synthetic.shapes(10, size=32, seed=0)
    assert images.shape == (10, 3, 32, 32) and masks.shape == (10, 32, 32)
    assert masks.flatten(1).any(1).all()


def test_masks_nonempty_inside_and_exact(data):
    images, labels, masks = data
    assert masks.flatten(1).sum(1).min() >= 30  # every object covers a visible area
    border = masks[:, 0].any() | masks[:, -1].any() | masks[:, :, 0].any() | masks[:, :, -1].any()
    assert not border  # the object lies fully inside the image
    params = synthetic.sample_params(100, 64, 7, 4)
    again, background, m2 = synthetic.render(params, 64)
    assert torch.equal(again, images) and torch.equal(m2, masks)
    # Outside the mask the image is exactly the background; on it, every pixel differs clearly.
    outside = ~masks[:, None].expand_as(images)
    assert torch.equal(images[outside], background[outside])
    diff = (images - background).abs().amax(dim=1)  # (N, H, W): largest channel difference
    assert diff[masks].min() >= synthetic.MIN_CONTRAST - 1e-6


def _polygon(name: str, r: float) -> np.ndarray:
    """The shape's outline in its own frame, built independently with trigonometry."""

    def polar(radius, degrees):
        return [(radius * math.cos(math.radians(d)), radius * math.sin(math.radians(d))) for d in degrees]

    if name == "square":
        s = 0.68 * r
        return np.array([(-s, -s), (s, -s), (s, s), (-s, s)])
    if name == "triangle":
        return np.array(polar(r, [270, 30, 150]))
    if name == "cross":
        a = 0.3 * r
        pts = [
            (a, -r),
            (a, -a),
            (r, -a),
            (r, a),
            (a, a),
            (a, r),
            (-a, r),
            (-a, a),
            (-r, a),
            (-r, -a),
            (-a, -a),
            (-a, -r),
        ]
        return np.array(pts)
    if name == "star":
        inner = r * math.cos(math.radians(72)) / math.cos(math.radians(36))
        pts = []
        for k in range(5):
            pts += polar(r, [90 + 72 * k]) + polar(inner, [126 + 72 * k])
        return np.array(pts)
    raise ValueError(name)


def test_masks_match_independent_geometry():
    n, size = 50, 64
    params = synthetic.sample_params(n, size, 11, 4)
    _, _, masks = synthetic.render(params, size)
    centres = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="xy"), -1).reshape(-1, 2)
    for i in range(n):
        name = synthetic.CLASSES[int(params["labels"][i])]
        r = float(params["radius"][i])
        cx, cy = params["center"][i].double().tolist()
        c, s = params["direction"][i].double().tolist()
        if name == "circle":
            ref = ((centres[:, 0] - cx) ** 2 + (centres[:, 1] - cy) ** 2) <= (0.85 * r) ** 2
        else:
            poly = _polygon(name, r)
            # object frame (u, v) -> image: x = cx + u c - v s, y = cy + u s + v c
            xy = np.stack([cx + poly[:, 0] * c - poly[:, 1] * s, cy + poly[:, 0] * s + poly[:, 1] * c], 1)
            ref = Path(xy).contains_points(centres)
        ref = torch.from_numpy(ref.reshape(size, size))
        mismatch = int((ref != masks[i]).sum())
        assert mismatch <= 2, f"image {i} ({name}): {mismatch} pixels differ from the polygon"  # boundary ties
