r"""A shortcut to find: shapes with a coloured corner mark that gives the class away.

Every image of :func:`camlib.synthetic.shapes` gets a small square *mark* in its top-left corner,
painted in one of five colours (:data:`MARK_COLORS`, one per class). In the **biased** data the
mark's colour is the class of the shape (with probability ``bias``); in **unbiased** data it is
drawn independently of the shape. A network trained on biased data can score well by reading the
mark instead of the shape: it is right on a biased test set, wrong as soon as the mark lies.

:func:`mass_shares` says where a saliency map's mass goes: the share of its positive mass,
upsampled to the image, on the mark and on the shape,

.. math:: s_{\text{mark}} = \frac{\sum_{p \in \text{mark}} P_p}{\sum_p P_p},
          \qquad s_{\text{shape}} = \frac{\sum_{p \in \text{shape}} P_p}{\sum_p P_p},
          \qquad P = \mathrm{upsample}(\mathrm{ReLU}(M))

(the energy-based pointing game of Wang et al. 2020, arXiv:1910.01279, on two regions).

>>> data = shortcut_shapes(10, seed=0, bias=1.0)
>>> bool((data.mark_classes == data.labels).all())
True
>>> data.images.shape, data.mark_masks.shape
(torch.Size([10, 3, 64, 64]), torch.Size([10, 64, 64]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .metrics.localization import energy_pointing_game
from .synthetic import CLASSES, shapes

__all__ = [
    "MARK_COLORS",
    "MARK_SIZE",
    "MARK_OFFSET",
    "RECIPES",
    "ShortcutData",
    "add_marks",
    "mark_zone",
    "mass_shares",
    "shortcut_shapes",
    "train",
]

# One colour per class, far apart from each other (each channel 0 or 1): red, green, blue, yellow, magenta.
MARK_COLORS = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0], [1.0, 0, 1.0]])
MARK_SIZE = 8  # pixels, on a 64 x 64 image: 1.6 % of the pixels, 2 x 2 cells of the small net's 16 x 16 map
MARK_OFFSET = 2  # pixels from the top and left edges


@dataclass
class ShortcutData:
    """Images with marks: ``images`` (N, 3, S, S), ``labels`` (N,) the shape's class, ``shape_masks``
    (N, S, S) the shape's visible pixels (the mark painted over it removed), ``mark_masks`` (N, S, S)
    and ``mark_classes`` (N,) the class whose colour the mark has."""

    images: Tensor
    labels: Tensor
    shape_masks: Tensor
    mark_masks: Tensor
    mark_classes: Tensor

    def __len__(self) -> int:
        return len(self.labels)


def add_marks(
    images: Tensor, mark_classes: Tensor, size: int = MARK_SIZE, offset: int = MARK_OFFSET
) -> tuple[Tensor, Tensor]:
    """Paint a ``size`` x ``size`` square of colour ``MARK_COLORS[mark_classes[i]]`` at ``(offset, offset)``.

    Returns ``(marked images, mark masks)``; ``images`` is not changed.
    """
    n, _, h, w = images.shape
    if not (0 <= offset and offset + size <= min(h, w)):
        raise ValueError(f"A {size}-pixel mark at offset {offset} does not fit a {h} x {w} image.")
    if mark_classes.shape != (n,):
        raise ValueError(f"Need one mark class per image: {n}, got shape {tuple(mark_classes.shape)}.")
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    masks[:, offset : offset + size, offset : offset + size] = True
    colors = MARK_COLORS.to(images.dtype)[mark_classes]  # (N, 3)
    marked = torch.where(masks[:, None], colors[:, :, None, None], images)
    return marked, masks


def shortcut_shapes(n: int, seed: int, bias: float, size: int = 64) -> ShortcutData:
    """``n`` shapes (:func:`camlib.synthetic.shapes` with ``seed``) with a corner mark each.

    With probability ``bias`` an image's mark has its shape's colour; otherwise the mark's class is
    drawn uniformly from the *other* classes. ``bias=1.0``: the mark always tells the class (the
    shortcut); ``bias=1/5``: the mark is independent of the shape (it tells nothing). The draws come
    from a private generator seeded with ``seed + 1_000_003``: same arguments, same data, and the
    global random state is not touched.
    """
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias is a probability in [0, 1], got {bias}.")
    images, labels, masks = shapes(n, size=size, seed=seed)
    g = torch.Generator().manual_seed(seed + 1_000_003)
    k = len(CLASSES)
    agree = torch.rand(n, generator=g) < bias
    other = (labels + 1 + torch.randint(0, k - 1, (n,), generator=g)) % k  # uniform over the other classes
    mark_classes = torch.where(agree, labels, other)
    marked, mark_masks = add_marks(images, mark_classes, offset=MARK_OFFSET * size // 64, size=MARK_SIZE * size // 64)
    return ShortcutData(marked, labels, masks & ~mark_masks, mark_masks, mark_classes)


def mark_zone(mark_masks: Tensor, margin: int = 4) -> Tensor:
    """The mark grown by ``margin`` pixels on every side (a square dilation), as bool ``(N, H, W)``.

    The small net's map has one cell per 4 x 4 pixels, and bilinear upsampling spreads a cell's value
    over its neighbours, so a map that points at an 8-pixel mark puts its mass on the mark *and* around
    it. Scoring the mark grown by one cell (4 pixels) counts that mass as "on the mark".
    """
    import torch.nn.functional as F

    grown = F.max_pool2d(mark_masks[:, None].float(), 2 * margin + 1, stride=1, padding=margin)
    return grown[:, 0] > 0


def mass_shares(maps: Tensor, *regions: Tensor) -> list[Tensor]:
    """The share of each map's positive mass inside each region, one ``(B,)`` tensor per region.

    ``maps`` ``(B, h, w)`` are raw maps at any resolution: they are ReLU'd at their own resolution,
    upsampled (bilinear) to the regions' ``(H, W)``, and each region's sum is divided by the whole
    sum: :func:`camlib.metrics.energy_pointing_game` for each region, so a CAM and its Grad-CAM,
    ReLU(CAM)/Z, get the same shares. A map with no positive mass gets share 0 everywhere (not
    NaN). Regions are bool ``(B, H, W)`` masks.
    """
    if not regions:
        raise ValueError("Give at least one region mask.")
    hw = regions[0].shape[-2:]
    for region in regions:
        if region.shape[-2:] != hw or region.shape[0] != maps.shape[0]:
            raise ValueError(
                f"Region of shape {tuple(region.shape)} does not match {maps.shape[0]} maps of {tuple(hw)}."
            )
    return [energy_pointing_game(maps, region.to(maps.device)) for region in regions]


# The two training recipes of notebook 12. The biased net learns its shortcut quickly; the fixed net
# has to learn the shapes themselves, which takes more images and epochs (notebook 08's budget). Both use
# the narrow SmallGapNet of notebook 08's exercise 4 (8, 16, 32 channels: about a quarter of the default
# net's multiply-adds), so that `python tools/train_shortcut.py` trains both in under two minutes on one
# CPU thread.
RECIPES: dict[str, dict[str, Any]] = {
    "shortcut_biased": {"bias": 1.0, "n": 2000, "epochs": 4, "widths": (8, 16, 32)},
    "shortcut_fixed": {"bias": 0.2, "n": 4000, "epochs": 8, "widths": (8, 16, 32)},
}
TRAIN_SEED = 1  # training images: shapes(seed=1); held-out images: seed=2, as in notebook 08


def train(name: str, device: str | None = None, progress: bool = True):
    """Train a :class:`~camlib.smallnet.SmallGapNet` with one of :data:`RECIPES`; returns a
    :class:`~camlib.smallnet.TrainingRun` (``smallnet.save_run(run, name)`` ships it,
    ``smallnet.load_run(name)`` loads it). The shipped weights came from this call on a CPU, one thread."""
    from .smallnet import SmallGapNet, train_run

    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; choose one of {list(RECIPES)}.")
    recipe = RECIPES[name]
    data = shortcut_shapes(int(recipe["n"]), seed=TRAIN_SEED, bias=recipe["bias"])
    net = SmallGapNet(widths=tuple(recipe.get("widths", (16, 32, 64))), seed=0)
    run = train_run(net, data.images, data.labels, epochs=int(recipe["epochs"]), device=device, progress=progress)
    run.config.update(recipe=name, bias=recipe["bias"])
    return run
