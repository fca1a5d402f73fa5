"""Sample photos and robust image loading."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["data_dir", "sample_names", "load_image", "to_rgb"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def data_dir() -> Path:
    """The folder with the sample photos and the small nets' weights.

    ``CAMLIB_DATA`` overrides; else the copy installed with the package (``camlib/_data``,
    from a wheel: ``pip install .`` or ``pip install git+URL``); else the repository's
    ``data/`` (an editable install or a checkout on ``sys.path``).
    """
    forced = os.environ.get("CAMLIB_DATA", "").strip()
    if forced:
        return Path(forced).expanduser()
    here = Path(__file__).resolve().parent
    installed = here / "_data"
    return installed if installed.is_dir() else here.parent / "data"


def _samples() -> dict[str, Path]:
    files = sorted(p for p in data_dir().iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    return {p.stem: p for p in files}


def sample_names() -> list[str]:
    """Names accepted by :func:`load_image`, e.g. ``["astronaut", "chelsea", ...]``."""
    return sorted(_samples())


def _to_uint8_gray(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit ``L``, scaled, never clipped.

    ``I;16*`` (16-bit PNG/TIFF) maps 0..65535 to 0..255. ``I`` (32-bit integer) is read
    as 8-bit if its values fit 0..255, as 16-bit if they fit 0..65535, else min–max
    scaled. ``F`` (float) maps 0..1 to 0..255 if its values lie there, else min–max
    scaled. Non-finite values become 0.
    """
    arr = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(arr)
    vals = arr[finite]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        arr = arr / 65535 * 255
    elif image.mode == "I" and lo >= 0 and hi <= 255:
        pass
    elif image.mode == "I" and lo >= 0 and hi <= 65535:
        arr = arr / 65535 * 255
    elif image.mode == "F" and lo >= 0 and hi <= 1:
        arr = arr * 255
    else:
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    arr = np.where(finite, arr, 0)
    return Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    Grayscale is repeated over three channels; transparency (RGBA, LA, palette or
    grayscale with a transparent colour) is composited onto white; 16/32-bit integer
    and float images are scaled to 0..255 (see :func:`_to_uint8_gray`), never clipped.
    """
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_uint8_gray(image)
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def _resolve(name_or_path: str | os.PathLike) -> Path:
    """An existing file: the path itself, else the sample of that name (``"chelsea"`` or ``"chelsea.png"``)."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    samples = _samples()
    plain_name = not isinstance(name_or_path, os.PathLike) and "/" not in text and os.sep not in text
    if plain_name and Path(text).stem in samples and Path(text).suffix in ("", samples[Path(text).stem].suffix):
        return samples[Path(text).stem]
    if plain_name and path.suffix == "":
        near = difflib.get_close_matches(text, list(samples), n=3, cutoff=0.3)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise FileNotFoundError(
            f"No sample image named {text!r} in {data_dir()}.{hint} "
            f"Samples: {', '.join(samples)}; or pass a path to an image file."
        )
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)[:5]
        hint = f" Images in it: {', '.join(inside)}." if inside else " It holds no image files."
        raise IsADirectoryError(f"{path} is a folder, not an image file: give the path of one image.{hint}")
    raise FileNotFoundError(f"Image file not found: {path} (give an existing path or a sample name)")


def load_image(name_or_path: str | os.PathLike | Image.Image) -> Image.Image:
    """Load a sample photo by name (``"chelsea"``) or any image file as RGB.

    Grayscale, RGBA, palette, 16-bit and float files just work (see :func:`to_rgb`);
    a camera's EXIF orientation is applied. A PIL image is converted the same way.

    >>> load_image("chelsea").size   # doctest: +SKIP
    (451, 300)

    Raises:
        FileNotFoundError: a path that does not exist (the message names it), or an
            unknown sample name (the message suggests the nearest sample names).
        IsADirectoryError: a folder (the message lists images in it).
        OSError: a file that is not an image or is cut off (the message names the file).
    """
    if isinstance(name_or_path, Image.Image):
        return to_rgb(name_or_path)
    path = _resolve(name_or_path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except OSError as e:  # PIL's UnidentifiedImageError too; a truncated file says only "Truncated File Read"
        raise OSError(f"Cannot read the image {path}: {e}. Is the file complete (not cut off) and an image?") from e
