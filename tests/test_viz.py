"""camlib.upsample, normalize, overlay, show_maps."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import camlib
from camlib.data import data_dir
from camlib.viz import to_uint8_rgb


def test_upsample_3d_matches_interpolate() -> None:
    maps = torch.randn(2, 7, 10, generator=torch.Generator().manual_seed(0))
    out = camlib.upsample(maps, (224, 320))
    ref = F.interpolate(maps[:, None], size=(224, 320), mode="bilinear", align_corners=False)[:, 0]
    assert out.shape == (2, 224, 320)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_upsample_2d_and_int_size() -> None:
    m = torch.randn(7, 7, generator=torch.Generator().manual_seed(1))
    out = camlib.upsample(m, 32)
    assert out.shape == (32, 32)
    torch.testing.assert_close(out, camlib.upsample(m[None], (32, 32))[0], rtol=0, atol=0)


def test_upsample_by_hand() -> None:
    # bilinear, half-pixel centres (align_corners=False): [0, 1] doubled is [0, 1/4, 3/4, 1]
    out = camlib.upsample(torch.tensor([[0.0, 1.0]]), (1, 4))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.25, 0.75, 1.0]]))


def test_upsample_commutes_with_weighted_sum() -> None:
    g = torch.Generator().manual_seed(2)
    acts, w = torch.randn(5, 7, 7, generator=g), torch.randn(5, generator=g)
    weighted_first = camlib.upsample(torch.einsum("k,khw->hw", w, acts), 224)
    upsampled_first = torch.einsum("k,khw->hw", w, camlib.upsample(acts, 224))
    torch.testing.assert_close(weighted_first, upsampled_first, rtol=1e-5, atol=1e-5)


def test_upsample_dtypes() -> None:
    assert camlib.upsample(torch.zeros(2, 2, dtype=torch.float64), 4).dtype == torch.float64
    assert camlib.upsample(torch.ones(2, 2, dtype=torch.int64), 4).dtype == torch.float32


def test_upsample_rejects_4d() -> None:
    with pytest.raises(ValueError, match=r"\(B, h, w\) or \(h, w\)"):
        camlib.upsample(torch.zeros(1, 3, 7, 7), 224)


def test_upsample_takes_an_array() -> None:
    m = np.random.default_rng(0).random((2, 7, 7))
    torch.testing.assert_close(camlib.upsample(m, 32), camlib.upsample(torch.from_numpy(m), 32), rtol=0, atol=0)


def test_normalize_range_per_map() -> None:
    g = torch.Generator().manual_seed(3)
    maps = torch.stack([torch.randn(7, 7, generator=g) * 100 + 50, torch.randn(7, 7, generator=g) * 1e-3])
    out = camlib.normalize(maps)
    assert out.shape == maps.shape
    torch.testing.assert_close(out.amin((1, 2)), torch.zeros(2), rtol=0, atol=0)
    torch.testing.assert_close(out.amax((1, 2)), torch.ones(2), rtol=0, atol=1e-6)
    ref = (maps[1] - maps[1].min()) / (maps[1].max() - maps[1].min())  # each map on its own
    torch.testing.assert_close(out[1], ref)


def test_normalize_constant_map_is_zeros_not_nan() -> None:
    maps = torch.stack([torch.full((7, 7), 3.5), torch.zeros(7, 7), torch.arange(49.0).view(7, 7)])
    out = camlib.normalize(maps)
    assert not out.isnan().any()
    assert (out[:2] == 0).all()
    assert out[2].max() == 1


def test_normalize_2d_and_no_side_effect() -> None:
    m = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    before = m.clone()
    torch.testing.assert_close(camlib.normalize(m), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    torch.testing.assert_close(m, before, rtol=0, atol=0)


def _left_high(h: int = 7, w: int = 8) -> torch.Tensor:
    m = torch.zeros(h, w)
    m[:, : w // 2] = 1.0
    return m


def test_overlay_shape_and_dtype() -> None:
    img = camlib.load_image("chelsea")  # 451 × 300
    out = camlib.overlay(img, torch.randn(7, 7))
    assert out.shape == (300, 451, 3) and out.dtype == np.uint8


def test_overlay_rgb_order_jet_red_is_high() -> None:
    img = Image.new("RGB", (64, 48), (128, 128, 128))
    out = camlib.overlay(img, _left_high(), alpha=1.0).astype(int)
    left, right = out[:, :8].reshape(-1, 3), out[:, -8:].reshape(-1, 3)
    assert (left[:, 0] > left[:, 2] + 100).all(), "high values should be red (R, G, B order)"
    assert (right[:, 2] > right[:, 0] + 100).all(), "low values should be blue"
    jet = matplotlib.colormaps["jet"]
    np.testing.assert_array_equal(out[0, 0], np.round(np.array(jet(1.0)[:3]) * 255))


def test_overlay_alpha_blend() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(camlib.overlay(rgb, _left_high(), alpha=0.0), rgb)
    half = camlib.overlay(rgb, _left_high(), alpha=0.5).astype(float)
    full = camlib.overlay(rgb, _left_high(), alpha=1.0).astype(float)
    np.testing.assert_allclose(half, 0.5 * rgb + 0.5 * full, atol=1.0)


def test_overlay_accepts_tensor_image_and_batched_map() -> None:
    img = torch.rand(3, 40, 50)
    out = camlib.overlay(img, _left_high()[None])  # (1, h, w) is one map
    assert out.shape == (40, 50, 3)
    with pytest.raises(ValueError, match="one map"):
        camlib.overlay(img, torch.zeros(2, 7, 7))


def test_overlay_reads_a_tensor_that_can_only_be_hwc_as_hwc() -> None:
    chw = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(0))
    expected = camlib.overlay(chw, _left_high())
    assert expected.shape == (32, 40, 3)
    np.testing.assert_array_equal(camlib.overlay(chw.permute(1, 2, 0), _left_high()), expected)
    np.testing.assert_array_equal(camlib.overlay(chw[None], _left_high()), expected)
    gray = to_uint8_rgb(chw[:1])  # (1, H, W): one channel, repeated
    assert gray.shape == (32, 40, 3) and (gray[..., 0] == gray[..., 2]).all()


@pytest.mark.parametrize("image", ["chelsea", data_dir() / "chelsea.png"])
def test_overlay_of_a_name_or_path_says_to_load_it(image) -> None:
    with pytest.raises(TypeError, match=r"camlib\.load_image"):
        camlib.overlay(image, _left_high())


def test_show_maps_returns_figure() -> None:
    img = camlib.load_image("coffee")
    maps = torch.randn(2, 7, 7)
    fig = camlib.show_maps(img, maps, titles=["a", "b"])
    try:
        assert isinstance(fig, matplotlib.figure.Figure)
        assert len(fig.axes) == 3
        assert [ax.get_title() for ax in fig.axes] == ["input", "a", "b"]
    finally:
        plt.close(fig)
    fig = camlib.show_maps(img, maps[0])  # a single (h, w) map is one map, not h rows
    try:
        assert len(fig.axes) == 2
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="titles"):
        camlib.show_maps(img, maps, titles=["only one"])


def test_to_uint8_rgb_inputs() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8_rgb(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(to_uint8_rgb(rgb), rgb)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255  # a (3, H, W) tensor in 0..1
    np.testing.assert_array_equal(to_uint8_rgb(chw), rgb)
    np.testing.assert_array_equal(to_uint8_rgb(chw[None]), rgb)
    np.testing.assert_array_equal(to_uint8_rgb(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(to_uint8_rgb(np.full((2, 2, 3), 0.5)), np.full((2, 2, 3), 128))


def test_a_uint8_tensor_image_is_read_as_0_to_255() -> None:
    """Before: clamped to 0..1 as if it were float, so every pixel above 0 came out white."""
    rgb = torch.arange(48, dtype=torch.uint8).reshape(3, 4, 4) * 5
    expected = rgb.permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(camlib.viz.to_uint8_rgb(rgb), expected)
    np.testing.assert_array_equal(camlib.viz.to_uint8_rgb(rgb.float() / 255), expected)


def test_show_maps_in_rows_of_columns() -> None:
    img = camlib.load_image("coffee")
    fig = camlib.show_maps(img, torch.randn(5, 7, 7), titles=list("abcde"), columns=4)
    try:
        assert len(fig.axes) == 8  # 2 rows of 4: the input, 5 maps, 2 empty panels
        assert [ax.get_title() for ax in fig.axes][:6] == ["input", *"abcde"]
        rows = [ax.get_subplotspec().rowspan.start for ax in fig.axes]
        assert rows == [0, 0, 0, 0, 1, 1, 1, 1]
    finally:
        plt.close(fig)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="columns"):
            camlib.show_maps(img, torch.randn(2, 7, 7), columns=bad)


@pytest.mark.parametrize(("width", "height"), [(448, 224), (200, 400)])
def test_show_maps_panels_follow_the_image_shape(width: int, height: int) -> None:
    """A wide image's rows (a tall image's columns) sit close together, not in square panels with empty bands."""
    img = Image.new("RGB", (width, height), (120, 90, 60))
    fig = camlib.show_maps(img, torch.rand(5, 7, 14), titles=list("abcde"), size=2.4, columns=3)
    try:
        fig.canvas.draw()
        box = [ax.get_window_extent() for ax in fig.axes]  # the drawn images, in pixels (y up)
        row_gap = (box[0].y0 - box[3].y1) / fig.dpi  # below the first row's image, above the second's
        col_gap = (box[1].x0 - box[0].x1) / fig.dpi
        assert 0 < row_gap < 0.75, f"{row_gap:.2f} in between rows"
        assert 0 < col_gap < 0.75, f"{col_gap:.2f} in between columns"
        assert max(max(b.width, b.height) for b in box) / fig.dpi <= 2.4 + 1e-6  # the longer side is size
    finally:
        plt.close(fig)


def test_show_maps_labels_a_map_with_one_value() -> None:
    """A uniform overlay would look like a map: the panel shows the plain image and says why."""
    img = camlib.load_image("coffee")
    nearly = torch.full((7, 7), 0.3) + torch.eye(7) * 1e-7  # rounding noise: normalize calls it constant too
    maps = [torch.zeros(7, 7), nearly, torch.randn(7, 7)]
    assert nearly.max() > nearly.min() and camlib.normalize(nearly).abs().max() == 0
    fig = camlib.show_maps(img, maps, titles=["zero", "flat", "map"])
    try:
        assert [ax.get_title() for ax in fig.axes] == ["input", "zero (all zero)", "flat (constant)", "map"]
        plain = np.asarray(camlib.viz.to_uint8_rgb(img))
        assert np.array_equal(fig.axes[1].images[0].get_array(), plain)
        assert not np.array_equal(fig.axes[3].images[0].get_array(), plain)
    finally:
        plt.close(fig)
    fig = camlib.show_maps(img, torch.zeros(7, 7))  # no titles: the label alone
    try:
        assert fig.axes[1].get_title() == "all zero"
    finally:
        plt.close(fig)
