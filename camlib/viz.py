"""Turn raw maps into pictures: upsample, normalise, overlay, grids."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["upsample", "normalize", "overlay", "to_uint8_rgb", "show_maps"]


def upsample(maps: Tensor | np.ndarray, size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize of maps ``(B, h, w)`` or ``(h, w)`` (a tensor or an array) to ``size`` (H, W).

    Bilinear interpolation is linear in the map, so it commutes with the weighted
    sum of CAM: upsample(Σ_k w_k A^k) = Σ_k w_k upsample(A^k).
    """
    maps = torch.as_tensor(maps)
    if maps.dim() not in (2, 3):
        raise ValueError(f"upsample expects maps (B, h, w) or (h, w), got shape {tuple(maps.shape)}.")
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    squeeze = maps.dim() == 2
    m = maps[None, None] if squeeze else maps[:, None]
    m = m if m.dtype in (torch.float32, torch.float64) else m.float()
    out = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0]
    return out[0] if squeeze else out


def normalize(maps: Tensor, eps: float | None = None) -> Tensor:
    r"""Per-map min–max scaling to [0, 1]: :math:`(M - \min M) / (\max M - \min M)`.

    Works on ``(h, w)`` or ``(B, h, w)`` (any leading dims); each map's minimum goes to 0 and
    its maximum to 1, whatever the map's scale (``normalize(c * M) == normalize(M)`` for any
    ``c > 0``, up to rounding; exactly for a power of two). A constant map becomes all zeros,
    never NaN: a map counts as constant when its range is at most ``eps`` times its largest
    magnitude (default ``eps``: 16 units in the last place of the dtype, e.g. 1.9e-6 for
    float32), so the rounding noise of upsampling a constant map is not stretched to [0, 1].
    A NaN in a map makes that map all NaN; an inf gives NaN where it is.
    """
    if not isinstance(maps, Tensor) or maps.dim() < 2:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"normalize takes maps (h, w) or (B, h, w), got {got}.")
    flat = maps.flatten(-2)
    flat = flat if flat.is_floating_point() else flat.float()
    lo, hi, constant = _range(flat, eps)
    span = hi - lo
    out = (flat - lo) / torch.where(constant, torch.ones_like(span), span)
    return torch.where(constant, torch.zeros_like(out), out).view(maps.shape)


def _range(flat: Tensor, eps: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's minimum and maximum of ``flat`` ``(..., n)`` (float), and whether :func:`normalize` counts it as
    constant: a range of at most ``eps`` (default 16 ulp of the dtype) times the largest magnitude."""
    lo = flat.min(dim=-1, keepdim=True).values
    hi = flat.max(dim=-1, keepdim=True).values
    rel = 16 * torch.finfo(flat.dtype).eps if eps is None else eps
    span = hi - lo
    return lo, hi, (span <= rel * torch.maximum(hi.abs(), lo.abs())) & span.isfinite()


def to_uint8_rgb(image: Image.Image | np.ndarray | Tensor) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array from a PIL image, an array (HWC or HW) or a tensor (CHW or ``(1, C, H, W)``,
    0..1, or 0..255 if uint8).

    A 3-D tensor whose first dimension cannot be channels (not 1, 3 or 4) and whose last can, such
    as ``(32, 32, 3)``, is read as HWC.

    Raises:
        TypeError: a sample name or a path: load the image first, ``camlib.load_image(name)``.
    """
    if isinstance(image, str | os.PathLike):
        raise TypeError(
            f"Expected an image (PIL, array or tensor), got the name or path {str(image)!r}: load it first, "
            f"image = camlib.load_image({str(image)!r})."
        )
    if isinstance(image, Image.Image):
        from .data import to_rgb

        return np.asarray(to_rgb(image))
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        t = t[0] if t.dim() == 4 else t
        hwc = t.dim() != 3 or (t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4))
        t = t if t.dtype == torch.uint8 else (t.float().clamp(0, 1) * 255).round().byte()  # uint8: 0..255 as is
        image = (t if hwc else t.permute(1, 2, 0)).numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


def overlay(
    image: Image.Image | np.ndarray | Tensor, map: Tensor | np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """Blend a heat map onto an image: ``(1 - alpha) * image + alpha * cmap(normalize(map))``.

    ``image``: a PIL image, an ``(H, W, 3)`` array or a ``(3, H, W)`` tensor in 0..1 (see
    :func:`to_uint8_rgb`; a name or path is a TypeError: ``camlib.load_image`` it first).
    ``map`` is a raw ``(h, w)`` (or ``(1, h, w)``) map at any resolution; it is
    upsampled (bilinear) to the image's size and min–max normalised. Returns an
    ``(H, W, 3)`` uint8 RGB array (with "jet", red = high, blue = low).
    """
    import matplotlib

    m = torch.as_tensor(map).detach().float()
    m = m[0] if m.dim() == 3 and m.shape[0] == 1 else m
    if m.dim() != 2:
        raise ValueError(f"overlay takes one map (h, w), got shape {tuple(m.shape)}; pass maps[i].")
    rgb = to_uint8_rgb(image)
    heat = normalize(upsample(m, rgb.shape[:2])).cpu().numpy()
    colored = matplotlib.colormaps[cmap](heat)[..., :3]
    mixed = (1 - alpha) * rgb / 255.0 + alpha * colored
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def show_maps(
    image: Image.Image | np.ndarray | Tensor,
    maps: Sequence[Tensor] | Tensor,
    titles: Sequence[str] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    size: float = 3.0,
    columns: int | None = None,
):
    """Show the image and one overlay per map, ``columns`` panels a row (default: all in one row); returns the figure.

    Each panel has the image's proportions, its longer side ``size`` inches (no empty band between rows).

    A map with one value everywhere would be min–max normalised to a uniform colour that looks like
    a map (all "low"): its panel shows the image alone, its title ends in "(all zero)" or "(constant)".
    """
    import matplotlib.pyplot as plt

    maps = [maps] if isinstance(maps, Tensor) and maps.dim() == 2 else list(maps)
    if not maps:
        raise ValueError("show_maps needs at least one map (h, w) to show beside the image.")
    if titles is not None and len(titles) != len(maps):
        raise ValueError(f"Got {len(titles)} titles for {len(maps)} maps.")
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise ValueError(f"columns={columns!r}: give the number of panels per row, a positive int (or None: one row).")
    panels = len(maps) + 1
    cols = panels if columns is None else min(columns, panels)
    rows = -(-panels // cols)
    picture = to_uint8_rgb(image)
    aspect = picture.shape[0] / picture.shape[1]  # height / width
    width, height = size * min(1.0, 1 / aspect), size * min(1.0, aspect) + 0.35  # + a title's line
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(picture)
    axes[0].set_title("input")
    for i, m in enumerate(maps):
        flat = _flat(m)
        axes[i + 1].imshow(picture if flat else overlay(image, m, alpha=alpha, cmap=cmap))
        title = "" if titles is None else titles[i]
        if flat:
            title = f"{title} ({flat})" if title else flat
        axes[i + 1].set_title(title)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _flat(m: Tensor | np.ndarray) -> str:
    """``"all zero"`` or ``"constant"`` for a map that :func:`normalize` (and so :func:`overlay`) turns into
    zeros everywhere, else ``""``."""
    flat = torch.as_tensor(m).detach().flatten().float()
    if flat.numel() == 0:
        return ""
    lo, hi, constant = _range(flat)
    if not bool(constant):
        return ""
    return "all zero" if bool(lo == 0) and bool(hi == 0) else "constant"
