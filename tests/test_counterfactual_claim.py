"""The real-model claims of notebook 06 on the cat + espresso collage, and the composed images' layout.

Collage ``data/cat_and_coffee.png`` at 224 x 448: the cat is the left half, the cup the right half.
Claims (EfficientNet-Lite0, layer ``bn2``, classes "Egyptian cat" and "espresso"):

- each class's counterfactual Grad-CAM puts more than 95% of its mass on the *other* object;
- blurring the pixels where the normalised counterfactual map is >= tau raises P(espresso) at every
  tau in 0.1..0.5, and P(Egyptian cat) for tau <= 0.3; for tau 0.4 and 0.5 (the smallest regions)
  P(Egyptian cat) does not rise (it stays within 15% below the original);
- the control, blurring a class's own Grad-CAM region, divides its probability by more than 5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

import camlib
from camlib.data import data_dir

TAUS = (0.1, 0.2, 0.3, 0.4, 0.5)


@pytest.fixture(scope="module")
def collage_x(real_model: camlib.LoadedModel) -> torch.Tensor:
    return real_model.preprocess(camlib.load_image("cat_and_coffee"), size=(224, 448))


@pytest.fixture(scope="module")
def classes(real_model: camlib.LoadedModel) -> dict[str, int]:
    return {n: real_model.classes.index(n) for n in ("Egyptian cat", "espresso")}


def _cat_half_share(raw: torch.Tensor, size: tuple[int, int]) -> float:
    up = camlib.upsample(raw, size)
    return float(up[..., : size[1] // 2].sum() / up.sum())


def test_collage_is_the_two_photos_side_by_side() -> None:
    collage = np.asarray(camlib.load_image("cat_and_coffee"))
    chelsea = np.asarray(camlib.load_image("chelsea"))
    assert collage.shape == (300, 600, 3)
    np.testing.assert_array_equal(collage[:, :300], chelsea[:, 75:375])
    coffee = camlib.load_image("coffee").crop((100, 0, 500, 400)).resize((300, 300), Image.LANCZOS)
    np.testing.assert_array_equal(collage[:, 300:], np.asarray(coffee))


def test_three_cats_boxes_match_the_image() -> None:
    img = np.asarray(camlib.load_image("three_cats")).astype(int)
    boxes = json.loads((data_dir() / "three_cats_boxes.json").read_text())["boxes"]
    inside = np.zeros(img.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
        crop = img[y0:y1, x0:x1]
        assert (np.abs(crop - 190).sum(axis=2) > 0).mean() > 0.99  # a photo, not background
    assert (img[~inside] == 190).all()  # everything outside the boxes is the plain grey background


def test_counterfactual_is_negative_part_of_cam(real_model, collage_x, classes) -> None:
    """Independent reference: at bn2, counterfactual Grad-CAM = ReLU(-CAM)/Z (no gradients involved)."""
    z = (collage_x.shape[-2] // 32) * (collage_x.shape[-1] // 32)  # 7 x 14 positions
    for c in classes.values():
        cf = camlib.gradcam(real_model.net, collage_x, "bn2", c, counterfactual=True)
        ref = torch.relu(-camlib.cam(real_model, collage_x, c)) / z
        torch.testing.assert_close(cf, ref, rtol=1e-4, atol=1e-6)


def test_counterfactual_lands_on_the_other_object(real_model, collage_x, classes) -> None:
    size = tuple(collage_x.shape[-2:])
    net, cat, cup = real_model.net, classes["Egyptian cat"], classes["espresso"]
    cf_cat = camlib.gradcam(net, collage_x, "bn2", cat, counterfactual=True)
    cf_cup = camlib.gradcam(net, collage_x, "bn2", cup, counterfactual=True)
    assert 1 - _cat_half_share(cf_cat, size) > 0.95  # the cat's counterfactual is on the cup
    assert _cat_half_share(cf_cup, size) > 0.95  # the espresso's counterfactual is on the cat
    assert _cat_half_share(camlib.gradcam(net, collage_x, "bn2", cat), size) > 0.9
    assert 1 - _cat_half_share(camlib.gradcam(net, collage_x, "bn2", cup), size) > 0.95


def _blur_table(real_model, x: torch.Tensor, c: int) -> tuple[float, list[float], list[float]]:
    """P(c) on x; after blurring the counterfactual region at each tau; after blurring the Grad-CAM region."""
    blurred = gaussian_blur(x, kernel_size=61, sigma=10)
    batch = []
    for counterfactual in (True, False):
        raw = camlib.gradcam(real_model.net, x, "bn2", c, counterfactual=counterfactual)
        heat = camlib.normalize(camlib.upsample(raw, x.shape[-2:]))[:, None]
        for tau in TAUS:
            mask = (heat >= tau).float()
            batch.append(x * (1 - mask) + blurred * mask)
    with torch.no_grad():
        p = real_model.net(torch.cat([x, *batch])).softmax(1)[:, c].tolist()
    return p[0], p[1 : 1 + len(TAUS)], p[1 + len(TAUS) :]


def test_blurring_the_counterfactual_region_of_espresso_raises_it(real_model, collage_x, classes) -> None:
    p0, p_cf, p_gc = _blur_table(real_model, collage_x, classes["espresso"])
    assert all(p > 1.1 * p0 for p in p_cf), (p0, p_cf)
    assert all(p < p0 / 5 for p in p_gc), (p0, p_gc)


def test_blurring_the_counterfactual_region_of_the_cat(real_model, collage_x, classes) -> None:
    p0, p_cf, p_gc = _blur_table(real_model, collage_x, classes["Egyptian cat"])
    large = dict(zip(TAUS, p_cf, strict=True))
    assert all(large[t] > 1.5 * p0 for t in (0.1, 0.2, 0.3)), (p0, p_cf)
    # Blurring only the peak of the counterfactual map (5-9% of the image) does not raise it on this model.
    assert all(0.85 * p0 < large[t] < p0 for t in (0.4, 0.5)), (p0, p_cf)
    assert all(p < p0 / 5 for p in p_gc), (p0, p_gc)
