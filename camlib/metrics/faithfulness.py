r"""Faithfulness: does the model's confidence follow the map?

A map is *faithful* when the pixels it calls important are the ones the model
needs. Two families of measurements, both on softmax probabilities:

- **Average drop / increase in confidence** (Chattopadhyay et al. 2018, Grad-CAM++,
  arXiv:1710.11063, §5.1): keep the image only where the map is high, i.e. feed
  :math:`x \odot \hat M` with :math:`\hat M` the map upsampled to the image and
  min–max normalised, and compare the class probability :math:`O_c` with the
  original :math:`Y_c`.
- **Deletion / insertion curves** (Petsiuk et al. 2018, RISE, arXiv:1806.07421,
  §4.1): remove (or add) pixels most-salient first and follow the probability;
  a faithful map makes the deletion curve fall fast (small area) and the
  insertion curve rise fast (large area).

Plus the pieces an evaluation needs: two baseline maps (random, centre Gaussian),
a reduction of 3-channel maps (guided backprop) to one saliency per pixel, and the
model-randomisation sanity check of Adebayo et al. 2018 (arXiv:1810.03292):
a Spearman rank correlation and cumulative top-down re-initialisation of layers.

Every function works on a batch, on the device of ``x``, and is deterministic. Those that run the
model take ``output=``, as the map methods do: for a model whose forward returns a tuple or a
dict, it picks the logits (``output=lambda o: o["logits"]``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..device import amp_dtype
from ..hooks import Output, as_module, check_batch, eval_mode, logits_fast
from ..targets import Targets, class_indices
from ..viz import normalize, upsample

__all__ = [
    "Score",
    "Curve",
    "pixel_saliency",
    "explanation_image",
    "class_probabilities",
    "average_drop",
    "increase_in_confidence",
    "gaussian_blur",
    "deletion_curve",
    "insertion_curve",
    "perturbation_curve",
    "plot_curves",
    "random_map",
    "center_gaussian_map",
    "spearman",
    "randomization_order",
    "cascading_randomization",
]


@dataclass(frozen=True)
class Score:
    """A metric over a batch: ``value`` (the number to report) and ``per_image`` ``(B,)``."""

    name: str
    value: float
    per_image: Tensor

    def __repr__(self) -> str:
        return f"Score({self.name}={self.value:.3f} over {self.per_image.numel()} images)"


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve for a batch of images.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        fractions: ``(S + 1,)`` fraction of pixels removed / inserted at each step.
        probs: ``(B, S + 1)`` probability of each image's target class at each step.
        per_image: ``(B,)`` area under each image's curve (trapezoid rule over ``fractions``).
        value: mean area over the batch.
        targets: ``(B,)`` the class followed in each image.
    """

    kind: str
    fractions: Tensor
    probs: Tensor
    per_image: Tensor
    targets: Tensor

    @property
    def value(self) -> float:
        return float(self.per_image.mean())

    def __repr__(self) -> str:
        b, s = self.probs.shape
        return f"Curve({self.kind}, AUC={self.value:.3f}, {b} images, {s - 1} steps)"


# --------------------------------------------------------------------------- helpers


def pixel_saliency(maps: Tensor) -> Tensor:
    r"""Reduce ``(B, C, H, W)`` attributions (guided backprop, guided Grad-CAM) to ``(B, H, W)``.

    .. math:: S(i, j) = \max_c |G_c(i, j)|

    (the usual choice for gradient images, Simonyan et al. 2014 use the same max over
    channels of the absolute value). ``(B, H, W)`` maps pass through unchanged.
    """
    if maps.dim() == 4:
        return maps.abs().amax(dim=1)
    if maps.dim() != 3:
        raise ValueError(f"Expected maps of shape (B, h, w) or (B, C, H, W), got {tuple(maps.shape)}.")
    return maps


def check_finite(maps: Tensor) -> None:
    """Raise a ValueError naming the first map (image) with a NaN or inf value."""
    bad = ~torch.isfinite(maps.flatten(1)).all(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        nan, inf = int(maps[i].isnan().sum()), int(maps[i].isinf().sum())
        raise ValueError(
            f"maps[{i}] (image {i}) has {nan} NaN and {inf} inf values ({int(bad.sum())} of {bad.numel()} maps "
            "are not finite). A metric of such a map means nothing: find where the map was computed (a "
            "division by zero, an overflow in half precision) or replace those values yourself."
        )


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (images per forward pass), got {batch_size!r}.")


def _check_maps(x: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
    """Validate shapes and values; a batch of one image with K maps is repeated K times."""
    check_batch(x)  # a batch (B, C, H, W) of at least one image, float, finite on the CPU
    if maps.dim() == 2:
        maps = maps[None]
    if maps.dim() != 3:
        raise ValueError(
            f"maps must be (B, h, w), got shape {tuple(maps.shape)}. For 3-channel attributions "
            "(guided backprop, guided Grad-CAM) reduce them first: camlib.metrics.pixel_saliency(maps)."
        )
    if x.shape[0] == 1 and maps.shape[0] > 1:
        x = x.expand(maps.shape[0], *x.shape[1:])
    if maps.shape[0] != x.shape[0]:
        raise ValueError(f"Got {maps.shape[0]} maps for {x.shape[0]} images: give one map per image.")
    check_finite(maps)
    return x, maps.to(x.device)


def explanation_image(x: Tensor, maps: Tensor) -> Tensor:
    r"""The Grad-CAM++ "explanation map": :math:`E = x \odot \mathrm{normalize}(\mathrm{upsample}(M))`.

    ``x`` is the network's input (for ImageNet models: after mean/std normalisation,
    so a pixel multiplied by 0 becomes the dataset's mean colour). Returns ``(B, C, H, W)``.
    """
    x, maps = _check_maps(x, maps)
    return x * normalize(upsample(maps.float(), x.shape[-2:]))[:, None].to(x.dtype)


def _probs(
    net: nn.Module, batch: Tensor, classes: Tensor, amp: torch.dtype | None = None, output: Output = None
) -> Tensor:
    """Softmax probability of ``classes[b]`` for ``batch[b]`` (call under no_grad and eval_mode).

    The batch goes in as channels-last: the same numbers up to float rounding, and on
    CPU about 40 % less time for depthwise-separable nets such as EfficientNet.
    """
    return logits_fast(net, batch, amp, output).softmax(dim=1).gather(1, classes[:, None])[:, 0]


@torch.no_grad()
def class_probabilities(
    net: nn.Module, x: Tensor, classes: Tensor | Sequence[int] | int, batch_size: int = 64, output: Output = None
) -> Tensor:
    """Softmax probability of ``classes[b]`` for image ``x[b]``, in chunks of ``batch_size``, eval mode.

    ``classes``: one class index per image (a tensor or a list), or one int for every image;
    ``output``: picks the logits from a tuple or dict output (``lambda o: o["logits"]``).
    """
    check_batch_size(batch_size)
    classes = torch.as_tensor(classes, device=x.device)
    classes = classes.expand(x.shape[0]) if classes.dim() == 0 else classes
    integer = classes.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    if classes.shape != x.shape[:1] or not integer:
        raise ValueError(
            f"classes must be one class index per image ({x.shape[0]} ints) or one int, "
            f"got {classes.dtype} of shape {tuple(classes.shape)}."
        )
    classes = classes.long()
    net = as_module(net)
    with eval_mode(net):
        return torch.cat(
            [
                _probs(net, x[i : i + batch_size], classes[i : i + batch_size], output=output)
                for i in range(0, x.shape[0], batch_size)
            ]
        )


def _targets_and_y(
    net: nn.Module, x: Tensor, targets: Targets, batch_size: int, output: Output = None
) -> tuple[Tensor, Tensor]:
    """``(classes, Y)``: the class followed in each image (``targets`` resolved on the logits of ``x``, computed
    ``batch_size`` images at a time) and its softmax probability."""
    check_batch_size(batch_size)
    net = as_module(net)
    with torch.no_grad(), eval_mode(net):
        chunks = range(0, x.shape[0], batch_size)
        logits = torch.cat([logits_fast(net, x[i : i + batch_size], output=output) for i in chunks])
    idx = class_indices(logits, targets)
    return idx, logits.softmax(dim=1).gather(1, idx[:, None])[:, 0]


def _confidences(
    net: nn.Module, x: Tensor, maps: Tensor, targets: Targets, batch_size: int, output: Output
) -> tuple[Tensor, Tensor, Tensor]:
    """``(Y, O, classes)``: p(class) on ``x`` and on its explanation image, and the classes followed."""
    x, maps = _check_maps(x, maps)
    idx, y = _targets_and_y(net, x, targets, batch_size, output)
    o = class_probabilities(net, explanation_image(x, maps), idx, batch_size, output)
    return y, o, idx


def _log_confidences(
    net: nn.Module, x: Tensor, maps: Tensor, classes: Tensor, output: Output = None
) -> tuple[Tensor, Tensor]:
    """``(log Y, log O)`` from log-softmax, finite where the probabilities underflow to 0."""
    net = as_module(net)
    with torch.no_grad(), eval_mode(net):
        log_y = logits_fast(net, x, output=output).log_softmax(1).gather(1, classes[:, None])[:, 0]
        log_o = logits_fast(net, explanation_image(x, maps), output=output).log_softmax(1)
        log_o = log_o.gather(1, classes[:, None])[:, 0]
    return log_y, log_o


# --------------------------------------------------------------------------- average drop, increase


def average_drop(
    net: nn.Module, x: Tensor, maps: Tensor, targets: Targets = None, batch_size: int = 64, output: Output = None
) -> Score:
    r"""Average drop in % (Chattopadhyay et al. 2018, arXiv:1710.11063, §5.1). Lower is better.

    .. math:: \text{Average drop} = \frac{100}{N} \sum_{i=1}^{N} \frac{\max(0,\; Y^c_i - O^c_i)}{Y^c_i}

    :math:`Y^c_i` is the softmax probability of class :math:`c` for image :math:`i`,
    :math:`O^c_i` the same for its explanation image :func:`explanation_image`.
    ``targets``: ``None`` = each image's top-1 class on ``x``, an int, or one class per
    image. ``maps``: ``(B, h, w)`` at any resolution (3-channel maps: see
    :func:`pixel_saliency`). Returns a :class:`Score`; ``per_image`` holds each
    image's term (in %). ``output``: picks the logits from a tuple or dict output
    (``lambda o: o["logits"]``). Where :math:`Y^c_i` underflows to 0 (a class the model rules
    out), the term is computed from log-probabilities, :math:`1 - e^{\log O - \log Y}`,
    so it is defined. A map with a NaN or inf raises a ValueError naming the image.

    >>> s = average_drop(model.net, x, camlib.gradcam(model.net, x, "bn2"))  # doctest: +SKIP
    >>> s.value, s.per_image                                                 # doctest: +SKIP
    """
    y, o, idx = _confidences(net, x, maps, targets, batch_size, output)
    per = 100.0 * torch.clamp(y - o, min=0) / y
    under = y == 0  # p(target) underflowed: the same ratio as 1 - O/Y = -expm1(log O - log Y)
    if under.any():
        x, maps = _check_maps(x, maps)
        log_y, log_o = _log_confidences(net, x[under], maps[under], idx[under], output)
        per[under] = 100.0 * torch.clamp(-torch.expm1(log_o - log_y), min=0).to(per.dtype)
    return Score("average_drop", float(per.mean()), per)


def increase_in_confidence(
    net: nn.Module, x: Tensor, maps: Tensor, targets: Targets = None, batch_size: int = 64, output: Output = None
) -> Score:
    r"""Increase in confidence in % (Chattopadhyay et al. 2018, §5.1). Higher is better.

    .. math:: \text{Increase in confidence} = \frac{100}{N} \sum_{i=1}^{N} \mathbb{1}\left[O^c_i > Y^c_i\right]

    Same inputs as :func:`average_drop`; ``per_image`` is 1.0 where the explanation
    image is *more* confident than the original, else 0.0.
    """
    y, o, _ = _confidences(net, x, maps, targets, batch_size, output)
    per = (o > y).float()
    return Score("increase_in_confidence", float(100.0 * per.mean()), per)


# --------------------------------------------------------------------------- deletion / insertion


def gaussian_blur(x: Tensor, sigma: float = 5.0, kernel_size: int = 11) -> Tensor:
    """Depthwise Gaussian blur of ``(B, C, H, W)`` with reflect padding (RISE uses 11 × 11, sigma 5).

    Blurring is linear and the same in every channel, so it commutes with a per-channel
    mean/std normalisation: blurring the normalised input is normalising the blurred image.
    """
    r = kernel_size // 2
    t = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - r
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    c = x.shape[1]
    xp = F.pad(x, (r, r, r, r), mode="reflect")
    xp = F.conv2d(xp, k1.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(xp, k1.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _baseline(x: Tensor, baseline: str | float | Tensor) -> Tensor:
    if isinstance(baseline, Tensor):
        try:
            return baseline.to(x.device, x.dtype).expand_as(x)
        except RuntimeError:
            raise ValueError(
                f"A tensor baseline must have x's shape {tuple(x.shape)} or broadcast to it, e.g. "
                f"{tuple(x.shape[1:])}; got {tuple(baseline.shape)}."
            ) from None
    if isinstance(baseline, int | float):
        return torch.full_like(x, float(baseline))
    if baseline == "zeros":
        return torch.zeros_like(x)
    if baseline == "blur":
        return gaussian_blur(x)
    raise ValueError(f"baseline must be 'zeros', 'blur', a number or a tensor like x, got {baseline!r}.")


def _ranks(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Rank of each pixel, 0 = most salient; ties keep raster order (stable sort)."""
    sal = upsample(maps.float(), size).flatten(1)
    order = torch.argsort(sal, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def perturbation_curve(
    net: nn.Module,
    x: Tensor,
    maps: Tensor,
    start: Tensor,
    finish: Tensor,
    targets: Targets = None,
    steps: int = 50,
    batch_size: int = 64,
    progress: bool = True,
    kind: str = "deletion",
    amp: bool | torch.dtype = False,
    output: Output = None,
) -> Curve:
    r"""The general RISE curve: go from ``start`` to ``finish`` pixel by pixel, most salient first.

    At step :math:`s = 0 \dots S` the :math:`k_s = \lfloor s\,HW/S \rfloor` most salient
    pixels (of the map upsampled to ``x``) show ``finish`` and the rest ``start``.
    The probability of the target class (``None``: top-1 on ``x``) is recorded at
    each step. All (image, step) pairs are built as batches of ``batch_size`` and run
    without gradients; ``progress`` shows a tqdm bar over those batches.
    Ties in the map are broken by raster order, so the result is deterministic. ``amp=True`` runs
    those forwards in reduced precision (:func:`camlib.device.amp_dtype`, float32 probabilities; the
    target is still chosen in float32): for many images on a GPU. ``output``: picks the logits from a
    tuple or dict output (``lambda o: o["logits"]``).
    """
    x, maps = _check_maps(x, maps)
    low = amp_dtype(x.device, amp)
    b, _, h, w = x.shape
    check_batch_size(batch_size)
    if not 1 <= steps <= h * w:
        raise ValueError(f"steps must be between 1 and the number of pixels ({h * w}), got {steps}.")
    idx, _ = _targets_and_y(net, x, targets, batch_size, output)
    net = as_module(net)
    ranks = _ranks(maps, (h, w)).view(b, h, w)
    counts = torch.div(torch.arange(steps + 1, device=x.device) * (h * w), steps, rounding_mode="floor")
    pairs = torch.cartesian_prod(torch.arange(b, device=x.device), torch.arange(steps + 1, device=x.device))
    probs = torch.empty(b, steps + 1, device=x.device)
    from tqdm.auto import tqdm

    chunks = range(0, pairs.shape[0], batch_size)
    with torch.no_grad(), eval_mode(net):
        for lo in tqdm(chunks, desc=kind, disable=not progress, leave=False):
            img, step = pairs[lo : lo + batch_size].unbind(1)
            keep = (ranks[img] < counts[step, None, None])[:, None]
            batch = torch.where(keep, finish[img], start[img])
            probs[img, step] = _probs(net, batch, idx[img], low, output).to(probs.dtype)
    fractions = counts.float() / (h * w)
    return Curve(kind, fractions, probs, torch.trapezoid(probs, fractions, dim=1), idx)


def deletion_curve(
    net: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    steps: int = 50,
    baseline: str | float | Tensor = "zeros",
    batch_size: int = 64,
    progress: bool = True,
    amp: bool | torch.dtype = False,
    output: Output = None,
) -> Curve:
    r"""Deletion curve and its area (Petsiuk et al. 2018, RISE, arXiv:1806.07421). Lower AUC is better.

    Pixels are *removed* most-salient first: replaced by ``baseline``, by default
    ``"zeros"`` — zero in the network's input space, which for a mean/std-normalised
    ImageNet input is the dataset's mean colour (RISE's code also uses zeros). ``"blur"``
    replaces them by a blurred copy (:func:`gaussian_blur`) instead, a number or an
    ``x``-shaped tensor by that. The area is the trapezoid rule over the fraction of
    pixels removed, in [0, 1]. ``amp=True``: the forwards in reduced precision; ``output``: picks the
    logits from a tuple or dict output (see :func:`perturbation_curve`).

    >>> d = deletion_curve(model.net, x, maps, steps=20)   # doctest: +SKIP
    >>> d.value, d.per_image, d.probs.shape                # doctest: +SKIP
    """
    x, maps = _check_maps(x, maps)
    start, finish = x, _baseline(x, baseline)
    return perturbation_curve(
        net, x, maps, start, finish, targets, steps, batch_size, progress, "deletion", amp, output
    )


def insertion_curve(
    net: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    steps: int = 50,
    baseline: str | float | Tensor = "blur",
    batch_size: int = 64,
    progress: bool = True,
    amp: bool | torch.dtype = False,
    output: Output = None,
) -> Curve:
    r"""Insertion curve and its area (Petsiuk et al. 2018, RISE). Higher AUC is better.

    Start from ``baseline`` (by default a blurred copy of ``x``, as in RISE) and
    *insert* the original pixels most-salient first. Other arguments as in
    :func:`deletion_curve`.
    """
    x, maps = _check_maps(x, maps)
    return perturbation_curve(
        net, x, maps, _baseline(x, baseline), x, targets, steps, batch_size, progress, "insertion", amp, output
    )


def plot_curves(curves: dict[str, Curve], ax=None, image: int | None = None):
    """Plot probability vs fraction of pixels for several curves, AUC in the legend.

    ``image=None`` plots the mean over the batch, an int that one image. Returns the axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    for label, c in curves.items():
        y = c.probs.mean(0) if image is None else c.probs[image]
        auc = c.value if image is None else float(c.per_image[image])
        ax.plot(c.fractions.cpu(), y.cpu(), label=f"{label} ({auc:.3f})")
    kind = next(iter(curves.values())).kind if curves else ""
    ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
    ax.set_ylabel("p(target class)")
    ax.set_title(f"{kind} (AUC)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, None)
    ax.legend(fontsize="small")
    return ax


# --------------------------------------------------------------------------- baseline maps


def random_map(n: int, size: int | tuple[int, int] = 7, seed: int = 0, device: str | torch.device = "cpu") -> Tensor:
    """``n`` maps of uniform noise in [0, 1), shape ``(n, h, w)``, from a private seeded generator.

    A map that knows nothing about the image: any metric should score it worse than
    a real explanation. Drawn on the CPU, then moved, so it is the same on every device.
    """
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, generator=g).to(device)


def center_gaussian_map(
    n: int, size: int | tuple[int, int] = 7, sigma: float = 0.25, device: str | torch.device = "cpu"
) -> Tensor:
    r"""``n`` copies of a Gaussian bump centred in the image, shape ``(n, h, w)``.

    .. math:: M(i, j) = \exp\!\left(-\frac{u_i^2 + v_j^2}{2\sigma^2}\right)

    with :math:`u, v` the pixel centres in [-0.5, 0.5] (fraction of the image size).
    Photos tend to put the object in the middle ("centre bias"), so this map knows
    nothing about the image yet is a strong baseline.
    """
    h, w = (size, size) if isinstance(size, int) else size
    u = (torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5
    v = (torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5
    m = torch.exp(-(u[:, None] ** 2 + v[None, :] ** 2) / (2 * sigma**2))
    return m.expand(n, h, w).clone().to(device)


# --------------------------------------------------------------------------- sanity checks


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank."""
    uniq, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def spearman(a: Tensor, b: Tensor) -> Tensor:
    r"""Spearman rank correlation per image between maps ``a`` and ``b`` (``(B, ...)`` each).

    .. math:: \rho = \mathrm{corr}(\mathrm{rank}(a), \mathrm{rank}(b))

    with ties given their average rank (as ``scipy.stats.spearmanr``). A constant map
    ranks nothing: its correlation is defined here as 0 (scipy returns NaN).
    Returns ``(B,)`` float64.
    """
    a, b = a.flatten(1), b.flatten(1)
    if a.shape != b.shape:
        raise ValueError(f"Maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}.")
    out = []
    for u, v in zip(a.detach().cpu(), b.detach().cpu(), strict=True):
        ru, rv = _average_ranks(u), _average_ranks(v)
        ru, rv = ru - ru.mean(), rv - rv.mean()
        den = (ru.square().sum() * rv.square().sum()).sqrt()
        out.append(torch.where(den > 0, (ru * rv).sum() / den.clamp(min=1e-300), torch.zeros((), dtype=den.dtype)))
    return torch.stack(out)


def randomization_order(net: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """Modules to randomise, output side first: the order of Adebayo et al. (logits, then down).

    Default: ``net``'s top-level children that hold parameters, in reverse definition
    order, with an ``nn.Sequential`` child split into its own children (for timm's
    EfficientNet: ``classifier, bn2, conv_head, blocks.6, ..., blocks.0, bn1, conv_stem``).
    Pass ``names`` to choose your own groups; they are checked to exist.
    """
    net = as_module(net)
    modules = dict(net.named_modules())
    if names is not None:
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"No module named {missing[0]!r} in {type(net).__name__}.")
        return list(names)
    order = []
    for name, child in net.named_children():
        parts = list(child.named_children()) if isinstance(child, nn.Sequential) else [("", child)]
        for sub, m in parts:
            if any(True for _ in m.parameters()):
                order.append(f"{name}.{sub}" if sub else name)
    return order[::-1]


def _reinit(module: nn.Module, gen: torch.Generator) -> None:
    """Fresh random weights: normal(0, 1/sqrt(fan_in)) for conv/linear weights, N(0, 0.1) else."""
    for p in module.parameters(recurse=True):
        fan_in = p[0].numel() if p.dim() > 1 else 0
        std = 1.0 / fan_in**0.5 if fan_in else 0.1
        with torch.no_grad():
            p.copy_((torch.randn(p.shape, generator=gen) * std).to(p.device, p.dtype))


def cascading_randomization(
    net: nn.Module, order: Sequence[str] | None = None, seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Adebayo et al. 2018 (arXiv:1810.03292) cascading model randomisation.

    Yields ``(name, randomised_net)`` once per module in ``order`` (default
    :func:`randomization_order`), each time with *that module and all before it*
    re-initialised (top-down, cumulative). Works on one deep copy of ``net``; the
    original is never touched. Weights come from a generator seeded with ``seed``
    (drawn on the CPU, so every device gets the same ones). BatchNorm running
    statistics are kept: only learned parameters are re-drawn.
    """
    net = as_module(net)
    order = randomization_order(net, order)
    rnd = copy.deepcopy(net)
    modules = dict(rnd.named_modules())
    gen = torch.Generator().manual_seed(seed)
    for name in order:
        _reinit(modules[name], gen)
        yield name, rnd
