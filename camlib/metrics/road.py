r"""ROAD: RemOve And Debias (Rong et al. 2022, arXiv:2202.00449).

Deletion curves replace pixels by a constant or a blur; the hole's *shape* then tells the
model where the removed pixels were, and a map can score well by leaking that shape
rather than by being faithful. ROAD fills removed pixels by **noisy linear imputation**:
each removed pixel becomes the weighted mean of its 8 neighbours (direct ones 1/6,
diagonal ones 1/12), all removed pixels solved together as one linear system, plus a
little Gaussian noise. The filled image looks like a smooth version of the original and
the hole is hard to see. Then, as in deletion, follow the class probability while a
growing fraction of pixels is removed, **most relevant first** (MoRF: a faithful map makes
it fall fast, lower is better) or **least relevant first** (LeRF: it should stay high).

Everything runs in torch on ``x``'s device: the linear system is solved by conjugate
gradients on the image grid (a 3 × 3 convolution per iteration), not by a sparse solver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..device import amp_dtype
from ..hooks import as_module, cpu_twin, eval_mode, logits_fast
from ..targets import Targets
from ..viz import upsample
from .faithfulness import Output, _check_maps, _targets_and_y

__all__ = ["Road", "linear_imputation", "road", "road_ranks"]


@dataclass(frozen=True)
class Road:
    """ROAD probabilities for a batch.

    Attributes:
        order: ``"morf"`` (most relevant first, lower is better) or ``"lerf"`` (higher is better).
        fractions: ``(P,)`` fraction of pixels removed.
        probs: ``(B, P)`` probability of each image's target class after removal.
        per_image: ``(B,)`` mean of ``probs`` over the fractions.
        targets: ``(B,)`` the class followed in each image.
    """

    order: str
    fractions: Tensor
    probs: Tensor
    per_image: Tensor
    targets: Tensor

    @property
    def value(self) -> float:
        return float(self.per_image.mean())

    def __repr__(self) -> str:
        b, p = self.probs.shape
        return f"Road({self.order}, mean p={self.value:.3f}, {b} images, {p} fractions)"


def _neighbours(z: Tensor) -> Tensor:
    """:math:`\\sum_j w_j z_j` over the 8 neighbours (zero outside the image), ``z`` ``(N, 1, H, W)``.

    Shifted sums rather than a convolution: exact weights, and fast in float64 too."""
    p = F.pad(z, (1, 1, 1, 1))
    h, w = z.shape[-2:]
    direct = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    diagonal = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return direct / 6 + diagonal / 12


def _solve(xd: Tensor, u: Tensor, tol: float, max_iter: int) -> Tensor:
    """Solve the imputation system for the removed pixels (``u`` = 1) of ``xd`` ``(N, 1, H, W)``.

    Conjugate gradients with a Jacobi preconditioner, started from the solution of the
    same problem at half the resolution (upsampled): a coarse-to-fine start that cuts
    the iterations on large holes from thousands to tens. Returns the removed pixels'
    values (0 elsewhere).
    """
    h, w = xd.shape[-2:]
    sol = torch.zeros_like(xd)
    if min(h, w) >= 16:
        kept = F.avg_pool2d(1 - u, 2, ceil_mode=True)
        xc = F.avg_pool2d(xd * (1 - u), 2, ceil_mode=True) / kept.clamp_min(1e-12)
        uc = (kept == 0).to(u.dtype)
        coarse = torch.where(uc > 0, _solve(xc, uc, tol, max_iter), xc)
        sol = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * u
    diag = _neighbours(torch.ones_like(u))  # sum of the weights of the neighbours inside the image

    def apply(z: Tensor) -> Tensor:  # the system matrix, on the removed pixels
        return (diag * z - _neighbours(z)) * u

    rhs = _neighbours(xd * (1 - u)) * u
    r = rhs - apply(sol)
    zres = r / diag
    p = zres.clone()
    rz = (r * zres).flatten(1).sum(1)
    stop = tol * rhs.flatten(1).norm(dim=1).clamp_min(1e-30)
    for _ in range(max_iter):
        if bool((r.flatten(1).norm(dim=1) <= stop).all()):
            break
        ap = apply(p)
        alpha = rz / (p * ap).flatten(1).sum(1).clamp_min(1e-300)
        sol = sol + alpha.view(-1, 1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1, 1) * ap
        zres = r / diag
        rz_new = (r * zres).flatten(1).sum(1)
        p = zres + (rz_new / rz.clamp_min(1e-300)).view(-1, 1, 1, 1) * p
        rz = rz_new
    return sol


def linear_imputation(
    x: Tensor, removed: Tensor, noise: float = 0.01, seed: int = 0, tol: float = 1e-6, max_iter: int = 5000
) -> Tensor:
    r"""Fill the ``removed`` pixels of ``x`` by noisy linear imputation (Rong et al. 2022, §4).

    .. math:: x_p = \frac{\sum_{q \in N(p)} w_{pq}\, x_q}{\sum_{q \in N(p)} w_{pq}}
              \quad \text{for every removed } p, \qquad
              \tilde x_p = x_p + \sigma\,\varepsilon_p,\ \ \varepsilon_p \sim \mathcal N(0, 1)

    :math:`N(p)`: the 8 neighbours inside the image, weight 1/6 (direct) or 1/12 (diagonal);
    kept pixels are fixed. The system is symmetric positive definite as long as every
    region of removed pixels touches a kept one; it is solved per image and channel by
    Jacobi-preconditioned conjugate gradients to a relative residual ``tol``. The noise
    (``noise`` = :math:`\sigma`, in ``x``'s units) for image ``i`` comes from a CPU generator
    seeded with ``seed + i``, so every device and batch split gets the same image. ``x`` ``(B, C, H, W)``, ``removed``
    ``(B, H, W)`` bool. Returns a new tensor; ``x`` is not changed.

    Raises:
        ValueError: shapes that do not match, or an image with every pixel removed.
    """
    if x.dim() != 4 or removed.shape != (x.shape[0], *x.shape[2:]):
        got = f"{tuple(x.shape)} and {tuple(removed.shape)}"
        raise ValueError(f"Expected x (B, C, H, W) and removed (B, H, W); got {got}.")
    if removed.flatten(1).all(dim=1).any():
        raise ValueError("Every pixel of an image is removed: nothing is left to impute from. Remove a fraction < 1.")
    b, c, h, w = x.shape
    dtype = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    xd = x.to(dtype).reshape(b * c, 1, h, w)
    u = removed.to(x.device)[:, None].expand(b, c, h, w).reshape(b * c, 1, h, w).to(dtype)
    sol = _solve(xd, u, tol, max_iter)
    eps = torch.stack([torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed + i)) for i in range(b)])
    filled = torch.where(u > 0, sol + noise * eps.to(sol).view_as(sol), xd)
    return filled.view(b, c, h, w).to(x.dtype)


def road_ranks(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Rank of each pixel of the upsampled map, 0 = most relevant; ties in raster order. ``(B, H, W)``."""
    sal = upsample(maps.float(), size).flatten(1)
    order = torch.argsort(sal, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks.view(-1, *size)


def road(
    net: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    order: str = "morf",
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    tol: float = 1e-6,
    amp: bool | torch.dtype = False,
    output: Output = None,
) -> Road:
    r"""ROAD (Rong et al. 2022, arXiv:2202.00449): probability after removing pixels by noisy linear imputation.

    .. math:: p_b(f) = \mathrm{softmax}\big(\mathrm{net}(\mathrm{impute}(x_b, R_b(f)))\big)_{c_b},
              \qquad \mathrm{ROAD}_b = \frac{1}{|F|} \sum_{f \in F} p_b(f)

    :math:`R_b(f)`: the fraction :math:`f` of pixels ranked highest (``order="morf"``,
    most relevant first: lower is better) or lowest (``"lerf"``: higher is better) by the
    map upsampled to ``x``; ties in raster order. Imputation: :func:`linear_imputation`
    with ``noise``, ``seed`` and ``tol`` (the solver's relative residual; a looser one,
    e.g. ``1e-2``, is many times faster on a CPU). ``targets``: ``None`` = top-1 on ``x``,
    an int, or one class per image, chosen on ``x`` in batches of ``batch_size``. All (image,
    fraction) images are imputed then classified in batches of ``batch_size`` (tqdm bar if
    ``progress``). Rong et al. report accuracy over a data set; this is the per-image probability,
    as in pytorch-grad-cam's ``ROADMostRelevantFirst`` (which reports its change from the
    original). ``amp=True`` classifies the imputed images in reduced precision
    (:func:`camlib.device.amp_dtype`, float32 probabilities; the target is chosen in float32): for
    many images on a GPU. ``output``: picks the logits from a tuple or dict output
    (``lambda o: o["logits"]``), as in the map methods.

    >>> r = metrics.road(net, x, maps, order="morf")    # doctest: +SKIP
    >>> r.value, r.probs.shape                           # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}.")
    frac = torch.as_tensor(list(fractions), dtype=torch.float64)
    if frac.numel() == 0 or bool(((frac <= 0) | (frac >= 1)).any()):
        raise ValueError(f"fractions must be between 0 and 1 (exclusive), e.g. (0.1, ..., 0.9); got {list(fractions)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    x, maps = _check_maps(x, maps)
    low = amp_dtype(x.device, amp)
    b, _, h, w = x.shape
    idx, _ = _targets_and_y(net, x, targets, batch_size, output)
    net = as_module(net)
    with torch.no_grad(), eval_mode(net):
        ranks = road_ranks(maps if order == "morf" else -maps, (h, w))  # 0 = removed first
        counts = (frac * h * w).round().long().to(x.device)
        pairs = torch.cartesian_prod(torch.arange(b), torch.arange(len(frac)))
        probs = torch.empty(b, len(frac), device=x.device)
        twin = cpu_twin(net, x, amp=low is not None, batch=min(batch_size, len(pairs)))  # once for all chunks
        for lo in tqdm(range(0, len(pairs), batch_size), desc=f"ROAD {order}", disable=not progress, leave=False):
            img, step = pairs[lo : lo + batch_size].to(x.device).unbind(1)
            removed = ranks[img] < counts[step, None, None]
            filled = linear_imputation(x[img], removed, noise, seed + lo, tol)  # image i: seed + pair index
            logits = logits_fast(net, filled, low, output, twin=twin)
            probs[img, step] = logits.softmax(1).gather(1, idx[img, None])[:, 0].to(probs.dtype)
    return Road(order, frac.float(), probs, probs.mean(1), idx)
