r"""More of the CAM family: HiResCAM, XGrad-CAM, LayerCAM, Score-CAM, Ablation-CAM, Eigen-CAM.

Every method fills in the same template, :math:`L = \mathrm{ReLU}(\sum_k \alpha_k A^k)`, with its
own weights :math:`\alpha` (a number per channel, or per channel *and* pixel; HiResCAM and Eigen-CAM
keep the sign, without the ReLU). Each has a small
helper that works on tensors you already have, so a notebook or an interactive explorer
with cached activations ``acts`` ``(B, K, h, w)`` and gradients ``grads`` can call it
without another forward:

============== ============================================ =============================
method         helper on cached tensors                     needs
============== ============================================ =============================
HiResCAM       :func:`hirescam_map` ``(acts, grads)``         one backward
XGrad-CAM      :func:`xgradcam_weights` ``(acts, grads)``     one backward
LayerCAM       :func:`layercam_map` ``(acts, grads)``         one backward
Score-CAM      :func:`scorecam_weights` ``(net, x, acts, c)`` a forward per channel
Ablation-CAM   :func:`ablationcam_weights` ``(net, x, layer, acts, c)``  a forward of the
                                                            part after the layer per channel
Eigen-CAM      :func:`eigencam_weights` ``(acts)``            nothing: no class, no gradient
============== ============================================ =============================

Channel weights become a map with :func:`camlib.methods.weighted_map`. The public
functions (``camlib.hirescam(net, x, layer, targets=None)`` and so on) return raw maps
``(B, h, w)`` on the input's device; upsampling and normalisation stay in :mod:`camlib.viz`.
``targets`` as in :mod:`camlib.methods`; a batch of one image with K classes gives K maps.
``amp=True`` (HiResCAM, XGrad-CAM, LayerCAM, Score-CAM) runs the forwards in reduced precision and
the map's arithmetic in float32, as :func:`camlib.gradcam` does: for big batches on a GPU.
Ablation-CAM has none: its weights are differences of nearly equal logits (see :func:`ablationcam`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import amp_dtype, exact
from .hooks import (
    Capture,
    Layer,
    LayerError,
    Output,
    as_module,
    captured,
    check_batch,
    cpu_twin,
    eval_mode,
    fast_layout,
    forward_fast,
    hooked_modules,
    logits_fast,
    logits_of,
    modules,
    resolve_layer,
)
from .methods import _many, layer_gradients, weighted_map
from .split import Split, split_at
from .targets import Targets, class_indices, is_many
from .tokens import Reshape, token_grid
from .tokens import _Error as TokenError
from .viz import upsample

__all__ = [
    "hirescam",
    "hirescam_map",
    "xgradcam",
    "xgradcam_weights",
    "layercam",
    "layercam_map",
    "fuse_layers",
    "scorecam",
    "scorecam_weights",
    "ablationcam",
    "ablationcam_weights",
    "eigencam",
    "eigencam_weights",
    "eigencam_map",
]


# --------------------------------------------------------------------------- gradient methods


def _gradients(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets,
    output: Output,
    reshape: Reshape = None,
    amp: bool | torch.dtype = False,
) -> tuple[Tensor, Tensor]:
    """``(acts, grads)`` from :func:`camlib.methods.layer_gradients` (which checks ``x`` and raises
    :class:`LayerError` for a layer whose output does not reach the logits)."""
    acts, grads, _ = layer_gradients(net, x, layer, targets, output, amp=amp, reshape=reshape)
    return acts, grads


def hirescam_map(acts: Tensor, grads: Tensor) -> Tensor:
    r"""HiResCAM's map :math:`\sum_k g^k \odot A^k` from ``acts`` and ``grads`` ``(B, K, h, w)``; signed, no ReLU."""
    return (grads * acts).sum(dim=1)


@exact
def hirescam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    output: Output = None,
    reshape: Reshape = None,
    amp: bool | torch.dtype = False,
) -> Tensor:
    r"""HiResCAM (Draelos & Carin 2020, arXiv:2011.08891), raw and signed ``(B, h, w)``.

    .. math:: L^c = \sum_k \frac{\partial y^c}{\partial A^k} \odot A^k

    Grad-CAM averages the gradient over the pixels before multiplying; HiResCAM
    multiplies pixel by pixel, so each pixel's value is its first-order share of the
    score. At a global-average-pooling + linear head the gradient is constant,
    :math:`w^c_k / hw`, and HiResCAM equals CAM divided by :math:`hw` (negative values
    included: apply ReLU yourself to show only positive evidence).

    >>> maps = camlib.hirescam(net, x, "layer4", targets=281)   # doctest: +SKIP
    """
    acts, grads = _gradients(net, x, layer, targets, output, reshape, amp)
    return hirescam_map(acts, grads)


def xgradcam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    r"""XGrad-CAM's weights :math:`\alpha_k = \sum_{ij} \frac{A^k_{ij}}{\sum_{ab} A^k_{ab}} g^k_{ij}`, ``(B, K)``.

    A channel whose activations sum to 0 gets weight 0 (pytorch-grad-cam adds
    ``1e-7`` to the denominator instead).
    """
    total = acts.sum(dim=(2, 3))
    num = (acts * grads).sum(dim=(2, 3))
    return torch.where(total != 0, num / torch.where(total != 0, total, torch.ones_like(total)), torch.zeros_like(num))


@exact
def xgradcam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    output: Output = None,
    reshape: Reshape = None,
    amp: bool | torch.dtype = False,
) -> Tensor:
    r"""XGrad-CAM (Fu et al. 2020, arXiv:2008.02312), raw ``(B, h, w)``.

    .. math:: \alpha^c_k = \sum_{i,j} \frac{A^k_{ij}}{\sum_{a,b} A^k_{ab}}
              \frac{\partial y^c}{\partial A^k_{ij}},
              \qquad L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big)

    The weights are chosen so that, to first order, the map's total is the score
    (*conservation*: :math:`\sum_{ij}\sum_k \alpha_k A^k_{ij} = \sum_{ijk} g A`) and
    channel :math:`k`'s share :math:`\alpha_k \sum_{ij} A^k_{ij}` is what the score
    loses without it (*sensitivity*); both hold exactly at a GAP + linear head.
    """
    acts, grads = _gradients(net, x, layer, targets, output, reshape, amp)
    return weighted_map(xgradcam_weights(acts, grads), acts)


def layercam_map(acts: Tensor, grads: Tensor) -> Tensor:
    r"""LayerCAM's map :math:`\mathrm{ReLU}(\sum_k \mathrm{ReLU}(g^k) \odot A^k)` from ``(B, K, h, w)`` tensors."""
    return torch.relu((torch.relu(grads) * acts).sum(dim=1))


@exact
def layercam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    output: Output = None,
    reshape: Reshape = None,
    amp: bool | torch.dtype = False,
) -> Tensor:
    r"""LayerCAM (Jiang et al. 2021, IEEE TIP, doi:10.1109/TIP.2021.3089943), raw ``(B, h, w)``.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\Big(\frac{\partial y^c}{\partial A^k}\Big) \odot A^k\Big)

    Each pixel keeps only its positive gradients, so shallow layers (where gradients
    change sign from pixel to pixel and Grad-CAM's average cancels) still give a map.
    Combine several layers with :func:`fuse_layers`.
    """
    acts, grads = _gradients(net, x, layer, targets, output, reshape, amp)
    return layercam_map(acts, grads)


def fuse_layers(maps: Sequence[Tensor], size: int | tuple[int, int] | None = None, gamma: float = 2.0) -> Tensor:
    r"""LayerCAM's fusion of maps from several layers (Jiang et al. 2021, Eq. 9), ``(B, H, W)``.

    .. math:: \hat M_l = \tanh\Big(\gamma \frac{M_l}{\max M_l}\Big), \qquad
              M = \max_l \mathrm{upsample}(\hat M_l)

    Each map is scaled by its own maximum (per image) and squashed, so a shallow layer's
    small values count as much as a deep layer's; then the element-wise maximum over
    layers at ``size`` (default: the largest map's size).
    """
    if not maps:
        raise ValueError("fuse_layers needs at least one map, e.g. [layercam(net, x, 'layer3'), ...].")
    shapes = [f"{tuple(m.shape)} {m.dtype}" if isinstance(m, Tensor) else type(m).__name__ for m in maps]
    bad = any(not isinstance(m, Tensor) or m.dim() != 3 or not m.is_floating_point() for m in maps)
    if bad or len({m.shape[0] for m in maps}) > 1:
        raise ValueError(
            "fuse_layers takes raw float maps (B, h, w) of one batch, one per layer, as layercam returns them; "
            f"got [{', '.join(shapes)}]. For one map (h, w) use m[None]."
        )
    if size is None:
        size = (max(m.shape[-2] for m in maps), max(m.shape[-1] for m in maps))
    scaled = []
    for m in maps:
        top = m.flatten(1).amax(dim=1).clamp_min(torch.finfo(m.dtype).tiny)[:, None, None]
        scaled.append(upsample(torch.tanh(gamma * m / top), size))
    return torch.stack(scaled).amax(dim=0)


# --------------------------------------------------------------------------- one forward per channel


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (images per forward), got {batch_size!r}.")


def _is_oom(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "not enough memory" in text


def _classes(logits: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
    """``(image, class)`` index pairs, one per map: per image, or K classes for one image."""
    if logits.shape[0] == 1 and is_many(targets):
        cls = _many(targets, logits)
        return torch.zeros_like(cls), cls
    cls = class_indices(logits, targets)
    return torch.arange(logits.shape[0], device=logits.device), cls


def _per_channel_logits(
    run: Callable[[Tensor, Tensor], Tensor],
    batch: int,
    channels: int,
    batch_size: int,
    progress: bool,
    desc: str,
    skip: tuple[Tensor, Callable[[], Tensor]] | None = None,
) -> Tensor:
    """``(B, K, C)`` logits of ``run(images, channels)`` over every (image, channel) pair, in chunks.

    ``skip = (mask, logits_of_skipped)``: the pairs where ``mask`` ``(B, K)`` is true all have the
    same logits, computed once by ``logits_of_skipped()`` (one row) instead of one forward each.
    """
    from tqdm.auto import tqdm

    _check_batch_size(batch_size)
    total = batch * channels
    todo = torch.arange(total) if skip is None else (~skip[0].reshape(-1).cpu()).nonzero()[:, 0]

    def guarded(fn: Callable[[], Tensor]) -> Tensor:
        try:
            return fn()
        except (RuntimeError, MemoryError) as err:
            if not _is_oom(err) and not isinstance(err, MemoryError):
                raise
            raise MemoryError(
                f"{desc} ran out of memory with batch_size={batch_size} (images per forward). "
                f"Pass a smaller batch_size, e.g. batch_size={max(1, batch_size // 4)}."
            ) from err

    out: Tensor | None = None
    if skip is not None and bool(skip[0].any()):
        shared = guarded(skip[1])
        out = shared.new_empty(total, shared.shape[1])
        out[skip[0].reshape(-1).to(out.device)] = shared
    for lo in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not progress, leave=False):
        pairs = todo[lo : lo + batch_size]
        logits = guarded(lambda: run(pairs // channels, pairs % channels))  # noqa: B023 (called at once)
        if out is None:
            out = logits.new_empty(total, logits.shape[1])
        out[pairs.to(out.device)] = logits
    assert out is not None
    return out.view(batch, channels, -1)


def _score_weights(logits: Tensor, images: Tensor, classes: Tensor) -> Tensor:
    return logits[images, :, classes]


def _masks(acts: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """Upsampled, per-map min-max normalised activations ``(N, H, W)`` for ``acts`` ``(N, h, w)``."""
    up = F.interpolate(acts[:, None].float(), size=size, mode="bilinear", align_corners=align_corners)[:, 0]
    flat = up.flatten(1)
    lo, hi = flat.amin(dim=1)[:, None, None], flat.amax(dim=1)[:, None, None]
    return (up - lo) / (hi - lo + 1e-8)


@exact
def scorecam_weights(
    net: nn.Module,
    x: Tensor,
    acts: Tensor,
    targets: Targets = None,
    batch_size: int = 32,
    progress: bool = True,
    align_corners: bool = False,
    output: Output = None,
    amp: bool | torch.dtype = False,
) -> Tensor:
    r"""Score-CAM's channel weights ``(B, K)`` from activations ``acts`` ``(B, K, h, w)`` of ``x``.

    .. math:: H^k = \frac{U(A^k) - \min U(A^k)}{\max U(A^k) - \min U(A^k) + 10^{-8}},
              \qquad w^c = \mathrm{softmax}_k\big(y^c(x \odot H^k)\big)

    with :math:`U` bilinear upsampling to ``x``'s size (``align_corners=True`` is what
    pytorch-grad-cam uses) and :math:`y^c` the logit. The (image, channel) pairs run
    ``batch_size`` at a time, without gradients, channels-last through the batch-norm-folded
    twin on the CPU (:func:`camlib.hooks.cpu_twin`), with a tqdm bar (``progress``); memory grows
    with ``batch_size``, not with the number of channels. An all-zero channel (common after a
    ReLU) has :math:`H^k = 0` exactly: all such pairs share one forward of the black image.
    ``amp=True`` runs the masked forwards in reduced precision (:func:`camlib.hooks.logits_fast`;
    the class is chosen and the softmax taken in float32).
    """
    net = as_module(net)
    with eval_mode(net), torch.no_grad():
        logits = logits_fast(net, x, output=output)
    return _scorecam_weights(net, x, acts, logits, targets, batch_size, progress, align_corners, output, amp)


def _scorecam_weights(
    net: nn.Module,
    x: Tensor,
    acts: Tensor,
    logits: Tensor,
    targets: Targets,
    batch_size: int,
    progress: bool,
    align_corners: bool,
    output: Output,
    amp: bool | torch.dtype,
) -> Tensor:
    """:func:`scorecam_weights` with the classes chosen on ``logits`` (the model's, for ``x``)."""
    low = amp_dtype(x.device, amp)
    with eval_mode(net), torch.no_grad():
        images, classes = _classes(logits, targets)
        size = (x.shape[-2], x.shape[-1])
        twin = cpu_twin(net, x, amp=low is not None, batch=min(batch_size, x.shape[0] * acts.shape[1]))

        def run(img: Tensor, ch: Tensor) -> Tensor:
            img, ch = img.to(x.device), ch.to(x.device)
            masked = x[img] * _masks(acts[img, ch], size, align_corners)[:, None].to(x.dtype)
            return logits_fast(net, masked, low, output, twin)

        # An all-zero channel gives H = 0 exactly, so x ⊙ H is the black image for every such pair.
        dead = acts.flatten(2).eq(0).all(dim=2)
        black = (dead, lambda: logits_fast(net, torch.zeros_like(x[:1]), low, output, twin))
        logits = _per_channel_logits(run, x.shape[0], acts.shape[1], batch_size, progress, "Score-CAM", black)
    return _score_weights(logits, images, classes).softmax(dim=1)


@exact
def scorecam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    batch_size: int = 32,
    progress: bool = True,
    align_corners: bool = False,
    output: Output = None,
    amp: bool | torch.dtype = False,
) -> Tensor:
    r"""Score-CAM (Wang et al. 2020, arXiv:1910.01279), raw ``(B, h, w)``. No gradients.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big), \qquad
              w^c = \mathrm{softmax}_k\big(y^c(x \odot H^k)\big)

    where :math:`H^k` is channel :math:`k` upsampled to the image and min-max normalised
    (:func:`scorecam_weights`): the weight is how much the class likes the image seen
    through that channel alone. One forward per channel and image: ``B * K`` forwards,
    ``batch_size`` at a time (lower it if memory runs out). ``targets``: class indices
    (not callables). ``amp=True``: those forwards in reduced precision, for a GPU
    (:func:`scorecam_weights`).

    >>> maps = camlib.scorecam(net, x, "layer4", batch_size=64)   # doctest: +SKIP
    """
    check_batch(x)
    _check_batch_size(batch_size)
    net = as_module(net)
    cap, logits = captured(net, x, layer, output)
    _no_tokens(cap, "Score-CAM")
    a = cap.activation
    weights = _scorecam_weights(net, x, a, logits, targets, batch_size, progress, align_corners, output, amp)
    return weighted_map(weights.to(a.dtype), a.expand(weights.shape[0], *a.shape[1:]))


@exact
def ablationcam_weights(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    acts: Tensor,
    targets: Targets = None,
    batch_size: int = 32,
    progress: bool = True,
    output: Output = None,
) -> Tensor:
    r"""Ablation-CAM's channel weights :math:`w_k = (y^c - y^c_k) / y^c`, ``(B, K)``.

    :math:`y^c_k` is the logit with channel :math:`k` of ``layer`` set to zero, :math:`y^c` the
    logit with ``acts`` as they are, both from the part of the net after the layer run on ``acts``
    (so that they differ by the ablation only). That part runs on ``batch_size`` ablated copies at a
    time. Where the net can be cut at the layer (:func:`camlib.split.split_at`, :mod:`torch.fx`)
    the part before the layer runs once per image and only the part after it per chunk; otherwise
    the whole net runs per chunk with a hook that swaps in the copies (and if the part after the
    layer mixes batch rows, on as many copies of the image). The cut is checked against the hook
    once per chunk size and dropped if they differ. On the CPU through the folded twin
    (:func:`camlib.hooks.cpu_twin`). The classes are chosen on the model's own logits.
    """
    net = as_module(net)
    with eval_mode(net), torch.no_grad():
        logits = logits_fast(net, x, output=output)
    return _ablationcam_weights(net, x, layer, acts, logits, targets, batch_size, progress, output)


def _ablationcam_weights(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    acts: Tensor,
    logits: Tensor,
    targets: Targets,
    batch_size: int,
    progress: bool,
    output: Output,
) -> Tensor:
    """:func:`ablationcam_weights` with the classes chosen on ``logits`` (the model's, for ``x``)."""
    name, _ = resolve_layer(net, layer)
    with eval_mode(net), torch.no_grad():
        images, classes = _classes(logits, targets)
        model = cpu_twin(net, x, keep=(name,), batch=min(batch_size, acts.shape[1]))
        base: dict[int, Tensor] = {}  # per image, the logits with acts as they are
        with _swapped(net, model, name, x, output) as after:

            def run(img: Tensor, ch: Tensor) -> Tensor:
                rows = []
                for b in img.unique_consecutive().tolist():
                    if b not in base:  # at the image's first chunk, while what comes before the layer is at hand
                        base[b] = after(b, _copy(acts[b : b + 1]))
                    sel = ch[img == b].to(acts.device)
                    ablated = _copy(acts[b].expand(len(sel), *acts.shape[1:]))
                    ablated[torch.arange(len(sel), device=sel.device), sel] = 0
                    rows.append(after(b, ablated))
                return torch.cat(rows)

            out = _per_channel_logits(run, x.shape[0], acts.shape[1], batch_size, progress, "Ablation-CAM")
    y = torch.cat([base[b] for b in range(x.shape[0])])[images, classes]
    yk = _score_weights(out, images, classes)
    return (y[:, None] - yk) / y[:, None]


def _copy(a: Tensor) -> Tensor:
    """A copy of ``a`` to write into, in :func:`camlib.hooks.fast_layout`'s memory format."""
    cl = a.dim() == 4 and a.device.type == "cpu"
    return torch.empty_like(a, memory_format=torch.channels_last if cl else torch.contiguous_format).copy_(a)


@contextlib.contextmanager
def _swapped(net: nn.Module, model: nn.Module, name: str, x: Tensor, output: Output) -> Iterator[Callable]:
    """``after(b, a)``: the logits of image ``b`` of ``x`` with layer ``name``'s output replaced by the
    ``n`` rows of ``a`` (``n`` logit rows). ``model``: ``net`` or its twin. Through the cut of
    ``model`` at the layer (:func:`camlib.split.split_at`) where it gives what the hook gives (checked
    once per ``n``), else the whole model with a hook; the hooks are removed on exit.
    """
    from .fold import FoldMismatch, clear

    swap: dict[str, Tensor] = {}
    mode: dict[str, bool] = {}
    unhooked = not any(m._forward_hooks or m._forward_pre_hooks for m in modules(model))
    cut = {"split": split_at(model, name) if unhooked else None, "b": None, "phi": ()}
    checked: set[int] = set()

    def hook(_m: nn.Module, _i: Any, _o: Any) -> Tensor:
        return swap["a"]

    def whole(b: int, a: Tensor) -> Tensor:
        swap["a"] = a
        if mode.get("broadcast", True):
            try:  # the part before the layer on one image, the n rows after it
                out = logits_of(forward_fast(net, x[b : b + 1], twin=model), output)
                if out.shape[0] == len(a):
                    mode["broadcast"] = True
                    return out
            except RuntimeError as err:
                if _is_oom(err):
                    raise
            mode["broadcast"] = False
        return logits_of(forward_fast(net, x[b].expand(len(a), *x.shape[1:]), twin=model), output)

    def through_cut(split: Split, b: int, a: Tensor) -> Tensor | None:
        if cut["b"] != b:
            cut["b"], cut["phi"] = b, split.head(fast_layout(x[b : b + 1]))
        phi = cut["phi"]
        seen = [v._version for v in phi if isinstance(v, Tensor)]
        try:
            out = logits_of(split.after(a.clone() if len(a) not in checked else a, phi), output)
        except (RuntimeError, FoldMismatch) as err:
            if _is_oom(err):
                raise
            return None
        finally:
            if model is not net:
                clear(model)
        if seen != [v._version for v in phi if isinstance(v, Tensor)] or out.shape[0] != len(a):
            return None  # the part after the layer wrote into what came from before it, or mixed rows
        if len(a) not in checked:
            ref = whole(b, a)
            if not torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())):
                return None
            checked.add(len(a))
        return out

    def after(b: int, a: Tensor) -> Tensor:
        split = cut["split"]
        out = None if split is None else through_cut(split, b, a)
        if out is None:
            cut["split"], cut["phi"] = None, ()
            out = whole(b, a)
        return out

    handles = [m.register_forward_hook(hook) for m in hooked_modules(net, model, name)]
    try:
        yield after
    finally:
        for handle in handles:
            handle.remove()


@exact
def ablationcam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    batch_size: int = 32,
    progress: bool = True,
    output: Output = None,
) -> Tensor:
    r"""Ablation-CAM (Desai & Ramaswamy 2020, WACV, doi:10.1109/WACV45572.2020.9093360), raw ``(B, h, w)``.

    .. math:: w^c_k = \frac{y^c - y^c_k}{y^c}, \qquad L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    with :math:`y^c_k` the class score when channel :math:`k` of the layer is zeroed:
    a channel matters as much as the score drops without it. No gradients; one
    forward of the net after the layer per channel (:func:`ablationcam_weights`).
    Note the division by :math:`y^c` (the paper's): a negative logit flips the signs.

    There is no ``amp``, unlike Score-CAM: each weight is a small difference of two nearly equal
    logits, which bfloat16's 8-bit mantissa does not resolve. With its forwards under bf16 autocast
    the maps moved by up to 26 % of their maximum at ``bn2`` (Score-CAM's ``amp=True``: 0.9 %) on the
    sample photos, and the weights' rank correlation with float32's fell to 0.52
    (``benchmarks/bench_ablation.py --amp``, CPU, 2026-11-28).
    """
    check_batch(x)
    _check_batch_size(batch_size)
    net = as_module(net)
    cap, logits = captured(net, x, layer, output)
    _no_tokens(cap, "Ablation-CAM")
    weights = _ablationcam_weights(net, x, layer, cap.activation, logits, targets, batch_size, progress, output)
    acts = cap.activation.expand(weights.shape[0], *cap.activation.shape[1:])
    return weighted_map(weights.to(acts.dtype), acts)


# --------------------------------------------------------------------------- class-free


def _no_tokens(cap: Capture, method: str) -> None:
    """A clear error for a token layer (B, N, C) given to a method that masks or zeroes feature-map channels."""
    act = cap.activation
    if isinstance(act, Tensor) and act.dim() == 3:
        raise LayerError(
            f"Layer {cap.name!r} outputs tokens {tuple(act.shape)}: {method} is implemented for feature maps "
            "(B, C, h, w) only. On a transformer's tokens use a gradient method (camlib.gradcam, gradcam_pp, "
            "hirescam, xgradcam, layercam), camlib.eigencam or camlib.attention_rollout."
        )


def eigencam_weights(acts: Tensor, center: bool = False) -> Tensor:
    r"""The first principal direction :math:`v_1` of each image's activations, ``(B, K)``.

    :math:`A` as an :math:`hw \times K` matrix (centred per channel if ``center``),
    :math:`A = U \Sigma V^\top`, :math:`v_1` the first column of :math:`V`. Its sign is
    arbitrary in an SVD; it is fixed so that the projection's largest-magnitude value
    is positive.
    """
    m = acts.flatten(2).transpose(1, 2)  # (B, hw, K)
    m = m if m.dtype in (torch.float32, torch.float64) else m.float()
    if center:
        m = m - m.mean(dim=1, keepdim=True)
    v = torch.linalg.svd(m, full_matrices=False).Vh[:, 0, :]
    proj = torch.einsum("bpk,bk->bp", m, v)
    flip = proj.amax(dim=1) < -proj.amin(dim=1)
    return torch.where(flip[:, None], -v, v).to(acts.dtype)


def eigencam_map(acts: Tensor, center: bool = False) -> Tensor:
    r"""Eigen-CAM's map :math:`A v_1` (``center``: :math:`(A - \bar A) v_1`), signed, ``(B, h, w)``."""
    a = acts - acts.mean(dim=(2, 3), keepdim=True) if center else acts
    return torch.einsum("bk,bkhw->bhw", eigencam_weights(acts, center), a)


@exact
def eigencam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    center: bool = False,
    output: Output = None,
    reshape: Reshape = None,
) -> Tensor:
    r"""Eigen-CAM (Muhammad & Yeasin 2020, arXiv:2008.00299), raw ``(B, h, w)``. No class, no gradient.

    .. math:: A = U \Sigma V^\top, \qquad L = A\, v_1

    the projection of the layer's activations (an :math:`hw \times K` matrix per image) on
    their first right singular vector: the pattern that explains most of the layer's
    activity, whatever the class. With non-negative activations (after a ReLU) it is
    non-negative. ``center=True`` subtracts each channel's mean first, as
    pytorch-grad-cam does (its map is then :math:`(A - \bar A) v_1`, with signs). On a
    transformer's tokens ``(B, N, C)`` the patch tokens are folded into their grid first, as
    for the gradient methods (``reshape=`` as in :func:`camlib.layer_gradients`).

    Raises:
        ValueError: ``targets`` given: Eigen-CAM explains no class.
    """
    if targets is not None:
        raise ValueError(
            "Eigen-CAM is class-free: it gives the same map for every class, so it takes no targets. "
            "Call camlib.eigencam(net, x, layer) without targets, or use a class-specific method "
            "such as camlib.gradcam(net, x, layer, targets)."
        )
    check_batch(x)
    cap, _ = captured(net, x, layer, output)  # the logits: only to check that output= picks them
    acts = cap.activation
    if acts.dim() == 3 or callable(reshape):  # a transformer's tokens: the patch grid (camlib.tokens)
        acts = _token_map(net, cap, x, reshape)
    return eigencam_map(acts, center)


def _token_map(net: nn.Module, cap: Capture, x: Tensor, reshape: Reshape) -> Tensor:
    try:
        fold = reshape if callable(reshape) else token_grid(as_module(net), cap.activation, x, reshape)
        return fold(cap.activation)
    except TokenError as err:
        raise LayerError(f"Layer {cap.name!r}: {err}") from None
