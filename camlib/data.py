"""Sample photos and robust image loading."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["data_dir", "sample_names", "load_image", "to_rgb"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def data_dir() -> Path:
    """The folder with the sample photos (``CAMLIB_DATA`` overrides)."""
    return Path(os.environ.get("CAMLIB_DATA", Path(__file__).resolve().parent.parent / "data"))


def sample_names() -> list[str]:
    """Names accepted by :func:`load_image`, e.g. ``["astronaut", "chelsea", ...]``."""
    return sorted(p.stem for p in data_dir().iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    Grayscale is repeated over three channels, transparency (RGBA, LA, palette with
    transparency) is composited onto white, and 16/32-bit or float images are scaled
    to 0..255 from their full range instead of being clipped.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        elif arr.max() > 255:
            arr = arr / 65535 * 255
        image = Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def load_image(name_or_path: str | os.PathLike | Image.Image) -> Image.Image:
    """Load a sample photo by name (``"chelsea"``) or any image file as RGB.

    Grayscale, RGBA, palette and 16-bit files just work (see :func:`to_rgb`).

    Raises:
        FileNotFoundError: a path that does not exist, or an unknown sample name
            (the message suggests the nearest sample names).
    """
    if isinstance(name_or_path, Image.Image):
        return to_rgb(name_or_path)
    text = str(name_or_path)
    path = Path(text).expanduser()
    looks_like_path = path.suffix != "" or os.sep in text or "/" in text
    if not looks_like_path:
        matches = [p for p in data_dir().glob(text + ".*") if p.suffix.lower() in _IMAGE_SUFFIXES]
        if not matches:
            names = sample_names()
            near = difflib.get_close_matches(text, names, n=3, cutoff=0.3)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise FileNotFoundError(
                f"No sample image named {text!r} in {data_dir()}.{hint} "
                f"Samples: {', '.join(names)}; or pass a path to an image file."
            )
        path = matches[0]
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path} (give an existing path or a sample name)")
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)
