"""camlib.load_image: sample names, every pixel format, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import camlib
from camlib.data import to_rgb

REQUIRED_SAMPLES = {"chelsea", "coffee", "rocket", "astronaut"}


def _load(path: Path) -> np.ndarray:
    img = camlib.load_image(path)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape[2] == 3
    return arr


def test_sample_names_include_the_course_photos() -> None:
    assert REQUIRED_SAMPLES <= set(camlib.sample_names())


@pytest.mark.parametrize("name", sorted(REQUIRED_SAMPLES))
def test_samples_load_as_rgb(name: str) -> None:
    img = camlib.load_image(name)
    assert img.mode == "RGB" and min(img.size) >= 200
    assert np.asarray(img).std() > 10  # a photo, not a blank


def test_sample_by_file_name_and_path_agree() -> None:
    by_name = np.asarray(camlib.load_image("chelsea"))
    assert by_name.shape == (300, 451, 3)  # scikit-image's chelsea
    np.testing.assert_array_equal(by_name, np.asarray(camlib.load_image("chelsea.png")))
    np.testing.assert_array_equal(by_name, np.asarray(camlib.load_image(camlib.data.data_dir() / "chelsea.png")))


def test_grayscale(tmp_path: Path) -> None:
    gray = np.array([[0, 100], [200, 255]], np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    arr = _load(tmp_path / "g.png")
    np.testing.assert_array_equal(arr, np.repeat(gray[..., None], 3, axis=2))


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[0, :, 3] = 255  # top row opaque
    rgba[1, 0, 3] = 0  # transparent
    rgba[1, 1, 3] = 128  # half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = _load(tmp_path / "a.png")
    np.testing.assert_array_equal(arr[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(arr[1, 0], [255, 255, 255])
    np.testing.assert_allclose(arr[1, 1], [255, 127, 127], atol=1)


def test_la_is_composited_on_white(tmp_path: Path) -> None:
    la = np.array([[[10, 255], [10, 0]]], np.uint8)  # an opaque dark pixel, a transparent one
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    arr = _load(tmp_path / "la.png")
    np.testing.assert_array_equal(arr[0], [[10, 10, 10], [255, 255, 255]])


def test_palette_with_transparency(tmp_path: Path) -> None:
    pal = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    pal.save(tmp_path / "p.png", transparency=1)  # index 1 (green) is transparent
    assert Image.open(tmp_path / "p.png").mode == "P"
    arr = _load(tmp_path / "p.png")
    np.testing.assert_array_equal(arr[0], [[255, 0, 0], [255, 255, 255], [0, 0, 255]])


def test_palette_gif_without_transparency(tmp_path: Path) -> None:
    Image.new("RGB", (3, 2), (0, 0, 255)).convert("P").save(tmp_path / "p.gif")
    np.testing.assert_array_equal(_load(tmp_path / "p.gif")[1, 2], [0, 0, 255])


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 64], [32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")
    arr = _load(tmp_path / "g16.png")
    np.testing.assert_array_equal(arr[..., 0], [[0, 64], [128, 255]])
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])


def test_dark_16bit_png_stays_dark(tmp_path: Path) -> None:
    # a 16-bit value of 200 is 0.3 % of full scale: near black, not the 8-bit value 200
    Image.fromarray(np.full((2, 2), 200, np.uint16)).save(tmp_path / "dark16.png")
    assert _load(tmp_path / "dark16.png").max() <= 1


@pytest.mark.parametrize(
    ("values", "expected"), [([0, 200], [0, 200]), ([0, 65535], [0, 255]), ([10, 70010], [0, 255])]
)
def test_32bit_integer_image(values: list[int], expected: list[int]) -> None:
    # mode I: the 8-bit range is kept, the 16-bit range scaled, anything wider min–max scaled
    img = Image.fromarray(np.array([values], np.int32))
    assert img.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[0, :, 0], expected)


def test_float_tiff(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    Image.fromarray(unit, "F").save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    np.testing.assert_array_equal(_load(tmp_path / "f.tif")[..., 1], [[0, 64], [128, 255]])
    wide = np.array([[-3.0, 1.0], [5.0, np.nan]], np.float32)  # outside 0..1: min–max, NaN -> 0
    Image.fromarray(wide, "F").save(tmp_path / "w.tif")
    np.testing.assert_array_equal(_load(tmp_path / "w.tif")[..., 0], [[0, 128], [255, 0]])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = _load(tmp_path / "c.jpg")[4, 4].astype(int)
    assert r > 200 and g < 50 and b < 50


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "o.jpg", exif=exif)
    assert camlib.load_image(tmp_path / "o.jpg").size == (2, 4)


def test_pil_image_passes_through_to_rgb() -> None:
    img = camlib.load_image(Image.new("LA", (3, 2), (7, 255)))
    assert img.mode == "RGB" and img.size == (3, 2) and img.getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("missing", ["no/such/dir/cat.png", "cat_missing.jpg"])
def test_missing_file_names_the_path(tmp_path: Path, missing: str) -> None:
    path = tmp_path / missing
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        camlib.load_image(path)
    with pytest.raises(FileNotFoundError, match="not found: " + re.escape(str(path))):
        camlib.load_image(str(path))


def test_unknown_sample_suggests_nearest() -> None:
    with pytest.raises(FileNotFoundError, match="Did you mean 'chelsea'") as info:
        camlib.load_image("chelsee")
    assert "astronaut" in str(info.value)  # the list of samples


def test_unknown_sample_without_near_match_lists_samples() -> None:
    with pytest.raises(FileNotFoundError, match="Samples: .*coffee") as info:
        camlib.load_image("zzzzzzz")
    assert "Did you mean" not in str(info.value)
