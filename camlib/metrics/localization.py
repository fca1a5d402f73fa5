"""Localization metrics: does a saliency map point at the object whose mask we know?

All functions take raw maps ``(B, h, w)`` at any resolution (e.g. a 16 × 16 CAM) and
boolean masks ``(B, H, W)``; the maps are first upsampled bilinearly to the masks'
size with :func:`camlib.upsample` (:func:`energy_pointing_game` clips them at 0 before that),
then compared. They return one value per image,
so ``.float().mean()`` gives the score over a data set. Everything runs batched on
the maps' device.

>>> maps = torch.zeros(1, 4, 4); maps[0, 1, 2] = 1.0
>>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, 1, 2] = True
>>> pointing_game(maps, masks)
tensor([True])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..viz import normalize, upsample
from .faithfulness import check_finite

__all__ = ["upsample_to", "pointing_game", "mask_iou", "energy_pointing_game"]


def _check(maps: Tensor, masks: Tensor) -> None:
    if maps.dim() != 3 or masks.dim() != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(
            f"Expected maps (B, h, w) and masks (B, H, W) with the same B; got {tuple(maps.shape)} "
            f"and {tuple(masks.shape)}. For one image, add the batch dimension: maps[None], masks[None]."
        )
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool (True on the object), got {masks.dtype}.")
    check_finite(maps)


def upsample_to(maps: Tensor, masks: Tensor) -> Tensor:
    """Maps upsampled (bilinear, as :func:`camlib.upsample`) to the masks' ``(H, W)``, on the masks' device."""
    _check(maps, masks)
    maps = maps.to(masks.device)
    return maps.float() if maps.shape[-2:] == masks.shape[-2:] else upsample(maps, masks.shape[-2:])


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    r"""Pointing game (Zhang et al. 2016, arXiv:1608.00507): is the map's maximum on the object?

    .. math:: \mathrm{hit}_b = \big[\arg\max_{p} \hat M_b(p) \in \mathrm{mask}_b\big]

    with :math:`\hat M_b` the map upsampled to the mask's size. Ties go to the first
    maximum in row-major order, and values within ``1e-5`` of the maximum (relative to
    the map's range) count as ties: a symmetric map (a centred Gaussian on an even grid)
    has several maxima that float round-off would otherwise pick between differently
    on different CPUs. ``tolerance`` (pixels, default 0) counts a hit when
    the maximum is within that many pixels (Chebyshev distance) of the mask; the
    paper uses 15 pixels on full-size photos. Returns a ``(B,)`` bool tensor.
    """
    up = upsample_to(maps, masks)
    if tolerance > 0:
        k = 2 * tolerance + 1
        masks = F.max_pool2d(masks[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    up = up.flatten(1)
    lo, hi = up.min(dim=1, keepdim=True).values, up.max(dim=1, keepdim=True).values
    flat = (up >= hi - 1e-5 * (hi - lo)).byte().argmax(dim=1)  # the first of the (near-)maxima
    return masks.flatten(1).gather(1, flat[:, None])[:, 0]


def mask_iou(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    r"""Intersection over union of the thresholded map and the mask.

    The upsampled map is min–max normalised per image (:func:`camlib.normalize`) and
    the pixels with :math:`\hat M_b \ge` ``threshold`` form the predicted region:

    .. math:: P_b = \{\hat M_b \ge t\}, \qquad
              \mathrm{IoU}_b = \frac{|P_b \cap \mathrm{mask}_b|}{|P_b \cup \mathrm{mask}_b|}

    Returns a ``(B,)`` float tensor in [0, 1] (0 when both regions are empty).
    """
    pred = normalize(upsample_to(maps, masks)) >= threshold
    inter = (pred & masks).flatten(1).sum(1)
    union = (pred | masks).flatten(1).sum(1)
    return inter.float() / union.clamp(min=1).float()


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Energy-based pointing game (Wang et al. 2020, Score-CAM, arXiv:1910.01279).

    The share of the map's positive mass that falls on the object:

    .. math:: E_b = \frac{\sum_{p \in \mathrm{mask}_b} P_b(p)}{\sum_p P_b(p)},
              \qquad P_b = \mathrm{upsample}(\mathrm{ReLU}(M_b))

    Negative values are clipped at the map's own resolution, before upsampling (raw
    CAMs have them; Grad-CAM maps are already clipped), so the score is the same for
    a CAM and for its Grad-CAM, ReLU(CAM)/Z. Returns a ``(B,)`` float tensor in [0, 1] (0 for an all-zero map).
    """
    pos = upsample_to(maps.clamp(min=0), masks)
    inside = (pos * masks).flatten(1).sum(1)
    total = pos.flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(pos.dtype).tiny), torch.zeros_like(total))
