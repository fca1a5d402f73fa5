"""The CAM family: CAM, Grad-CAM, Grad-CAM++, guided backpropagation, guided Grad-CAM.

Every function returns raw maps as torch tensors on the input's device; ReLU is
part of a method's definition, but upsampling and normalisation are left to
:mod:`camlib.viz` so each step can be shown and tested on its own.

``targets`` everywhere: ``None`` = each image's top-1 class, an ``int`` = that class
for every image, a sequence = one class per image, or (gradient methods) a callable
``logits -> (B,)`` scores, e.g. ``lambda z: z[:, a] - z[:, b]`` for "a rather than b".
A batch of *one* image with a sequence of K classes gives K maps from one forward.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .device import amp_dtype, exact
from .hooks import (
    Layer,
    LayerError,
    Output,
    as_module,
    check_batch,
    eval_mode,
    forward_hooked,
    forward_with_grad_at,
    logits_of,
    resolve_layer,
)
from .targets import Targets, check_kind, class_indices, is_many, scores
from .tokens import Reshape
from .viz import normalize, upsample

__all__ = [
    "CamError",
    "find_gap_head",
    "pooled_features",
    "cam",
    "layer_gradients",
    "gradcam",
    "gradcam_pp",
    "gradcam_pp_weights",
    "gradcam_weights",
    "weighted_map",
    "guided_backprop",
    "guided_gradcam",
]


class CamError(ValueError):
    """CAM asked of a network whose head is not global average pooling + linear."""


# net -> (feature_layer, fc) found by find_gap_head; every cam() call checks it still holds
_heads: weakref.WeakKeyDictionary[nn.Module, tuple[str, nn.Linear]] = weakref.WeakKeyDictionary()

_NO_HEAD = (
    "{net} has no global-average-pooling + linear head, so CAM (Zhou et al. 2016) is not defined "
    "for it. Use camlib.gradcam(net, x, layer), which works on any CNN and equals ReLU(CAM)/Z where "
    "CAM exists."
)


def _same(a: Tensor, b: Tensor) -> bool:
    """``a == b`` up to float rounding (relative to ``b``'s largest magnitude), shapes included."""
    if a.shape != b.shape:
        return False
    tol = max(1e-4, 64 * torch.finfo(b.dtype).eps) if b.is_floating_point() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    if not math.isfinite(scale):  # NaN or inf (a non-finite input on a GPU): nothing to match
        return False
    return bool(torch.allclose(a.to(b.dtype), b, rtol=tol, atol=0.1 * tol * scale))


def find_gap_head(net: nn.Module, x: Tensor, output: Output = None) -> tuple[str, nn.Linear]:
    """Find ``(feature_layer, fc)`` of a net whose head is GAP followed by one linear layer.

    One forward of ``x[:1]`` records every module's output; the head is accepted when the
    last linear layer's output is the logits and its input equals the spatial mean of an
    earlier ``(1, K, h, w)`` output with ``h * w > 1`` (the feature layer; the output as it
    is when pooled, so an in-place ReLU after the layer, as in DenseNet, counts). Cached per
    net; :func:`cam` checks the cached head on every call and looks again when it no longer
    holds (a new ``fc``, another input size).

    Raises:
        CamError: no such head; use :func:`gradcam`, which works on any CNN.
    """
    seen: list[tuple[str, Tensor, bool, bool]] = []  # (name, output after the forward, input spatial?, a global max?)
    linear_io: list[tuple[str, nn.Linear, Tensor, Tensor]] = []

    def make(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: Any, out: Any) -> None:
            if isinstance(module, nn.Linear):
                linear_io.append((name, module, inp[0].detach(), out.detach()))
            elif isinstance(out, Tensor) and out.dim() == 4:
                first = inp[0] if inp and isinstance(inp[0], Tensor) else None
                spatial_in = first is not None and first.dim() == 4 and first.shape[-2] * first.shape[-1] > 1
                global_max = spatial_in and out.shape[-2:] == (1, 1) and _same(out.flatten(1), first.amax((2, 3)))
                seen.append((name, out.detach(), spatial_in, global_max))  # an alias: sees later in-place ops

        return hook

    handles = [m.register_forward_hook(make(n, m)) for n, m in net.named_modules() if n]
    try:
        with eval_mode(net), torch.no_grad():
            logits = logits_of(net(x[:1]), output)
    finally:
        for h in handles:
            h.remove()
    explain = _NO_HEAD.format(net=type(net).__name__)
    if not linear_io or not _same(linear_io[-1][3], logits):
        raise CamError(explain + " (The logits are not the output of a final nn.Linear.)")
    fc_name, fc, fc_in, _ = linear_io[-1]
    matches = [m for m in seen if m[1].shape[1] == fc.in_features and _same(m[1].mean((2, 3)), fc_in.flatten(1))]
    spatial = [m[0] for m in matches if m[1].shape[2] * m[1].shape[3] > 1]
    if not spatial:
        raise CamError(_why_no_spatial_match(explain, fc_name, matches, tuple(x.shape[-2:])))
    _heads[net] = (spatial[-1], fc)
    return spatial[-1], fc


def _why_no_spatial_match(explain: str, fc: str, matches: list[tuple[str, Tensor, bool, bool]], size: tuple) -> str:
    """The CamError message when no feature map with ``h * w > 1`` feeds ``fc`` through a mean."""
    if not matches:
        return explain + f" (The input of {fc!r} is not the spatial mean of any feature map.)"
    maxed = [n for n, _, _, global_max in matches if global_max]
    if maxed:  # global max pooling: a larger input would not help
        return (
            f"{maxed[0]!r} takes each channel's maximum over the positions (global max pooling), not their mean, "
            "so the score is not the mean of a class map and CAM (Zhou et al. 2016) is not defined for this net. "
            "The map sum_k w^c_k A^k can still be computed by hand (camlib.gmpnet.class_maps does it for the "
            "course's max-pooling net), and camlib.gradcam works at any layer."
        )
    shrinks = [n for n, _, spatial_in, _ in matches if spatial_in]
    if shrinks:  # a strided layer took a larger map down to 1x1: the input is too small for this net
        return (
            f"At this {size[0]}×{size[1]} input, {shrinks[0]!r} of the GAP + linear head is already 1×1: "
            "a class activation map needs more than one position. Give a larger input, e.g. the "
            "224×224 the net was trained on."
        )
    return explain + (
        f" (The input of {fc!r} is a 1×1 map, {matches[0][0]!r}, computed after global pooling, e.g. a "
        "LayerNorm as in ConvNeXt, not the spatial mean of a feature map.)"
    )


class _HeadMismatch(CamError):
    """The given (feature_layer, fc) is not this forward's GAP + linear head (any more)."""


def pooled_features(
    net: nn.Module, x: Tensor, layer: Layer, fc: nn.Linear, output: Output = None
) -> tuple[Tensor, Tensor]:
    """``(F, logits)``: the feature map ``F`` (B, K, h, w) that global average pooling reduces, checked.

    ``F`` is ``layer``'s output as the pooling sees it: taken when the layer returns, or, if an
    in-place op changes it afterwards (DenseNet's ``F.relu(features, inplace=True)``), after the
    forward. Checked: ``fc`` runs once, its output is the logits and its input is
    :math:`\\frac{1}{hw}\\sum_{ij} F_{ij}` with ``h * w > 1``, so :math:`\\mathrm{mean}(M_c) + b_c = y_c`.
    One forward, through :func:`camlib.hooks.forward_hooked` (on the CPU the batch-norm-folded twin,
    channels-last: the same values to float rounding; :func:`cam` took 0.69–0.79× the time of a plain
    forward on EfficientNet-Lite0 and ResNet-50, ``benchmarks/bench_cam.py``).

    Raises:
        CamError: ``layer`` and ``fc`` are not this net's GAP + linear head for this input.
    """
    name, _ = resolve_layer(net, layer)
    outs: list[tuple[Tensor, Tensor]] = []
    fcs: list[tuple[Tensor, Tensor]] = []

    def at_layer(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            outs.append((out.detach(), out.detach().clone()))  # alias (sees in-place ops after), copy

    def at_fc(_m: nn.Module, inp: Any, out: Any) -> None:
        fcs.append((inp[0].detach().clone(), out.detach()))

    hooks = {name: at_layer}
    fc_name = next((n for n, m in net.named_modules() if m is fc), None)  # None: not in net, never called
    if fc_name is not None:
        hooks[fc_name] = at_fc
    with eval_mode(net), torch.no_grad():
        logits = logits_of(forward_hooked(net, x, hooks, before_retry=lambda: (outs.clear(), fcs.clear())), output)
    return _check_head(name, outs, fcs, logits, tuple(x.shape[-2:])), logits


def _check_head(
    name: str, outs: list[tuple[Tensor, Tensor]], fcs: list[tuple[Tensor, Tensor]], logits: Tensor, size: tuple
) -> Tensor:
    if len(outs) != 1 or len(fcs) != 1 or outs[0][0].dim() != 4 or not _same(fcs[0][1], logits):
        raise _HeadMismatch(
            f"{name!r} and the linear layer are not this net's GAP + linear head (each must run once, the "
            "linear layer's output must be the logits and the layer's output a (B, K, h, w) map)."
        )
    pooled = fcs[0][0].flatten(1)
    feats = next((f for f in outs[0][::-1] if _same(f.mean((2, 3)), pooled)), None)
    if feats is None:
        raise _HeadMismatch(f"The linear layer's input is not the spatial mean of {name!r}'s output.")
    if feats.shape[-2] * feats.shape[-1] == 1:
        raise CamError(
            f"{name!r} outputs a 1×1 map for this {size[0]}×{size[1]} input: a class activation map needs "
            "more than one position. Give a larger input, e.g. the 224×224 the net was trained on."
        )
    return feats


def _cam_features(model: Any, x: Tensor, output: Output) -> tuple[Tensor, Tensor, nn.Linear]:
    """(pooled features, logits, fc) for a LoadedModel or a bare net (head found, cached, re-checked)."""
    check_batch(x)
    if not isinstance(model, nn.Module):
        try:
            return (*pooled_features(model.net, x, model.feature_layer, model.fc, output), model.fc)
        except _HeadMismatch as err:
            raise CamError(
                f"{getattr(model, 'name', type(model.net).__name__)} has no global-average-pooling + linear head at "
                f"{model.feature_layer!r}, so CAM (Zhou et al. 2016) is not defined for it. Use "
                f"camlib.gradcam(model.net, x, layer), which works on any layer Grad-CAM takes. ({err})"
            ) from None
    cached = _heads.get(model)
    if cached is not None:
        try:
            return (*pooled_features(model, x, *cached, output), cached[1])
        except _HeadMismatch:
            del _heads[model]  # the net changed (a new fc, another input size): look again
    layer, fc = find_gap_head(model, x, output)
    return (*pooled_features(model, x, layer, fc, output), fc)


@exact
def cam(model: Any, x: Tensor, targets: Targets = None, output: Output = None) -> Tensor:
    r"""Class activation maps (Zhou et al. 2016, arXiv:1512.04150), raw.

    .. math:: M_c(i, j) = \sum_k w^c_k \, f_k(i, j)

    where :math:`f_k` is the last feature map, as global average pooling sees it, and
    :math:`w^c` the linear layer's row for class :math:`c`; no ReLU, no bias, no
    normalisation, so :math:`\frac{1}{hw}\sum_{ij} M_c(i, j) + b_c = y_c` (checked on every
    call). ``model`` is what :func:`camlib.load_model` returns or any ``nn.Module`` with a
    GAP + linear head (found automatically). Returns ``(B, h, w)``.

    Raises:
        CamError: no GAP + linear head, or a 1×1 feature map (input too small).
    """
    feats, logits, fc = _cam_features(model, x, output)
    if feats.shape[0] == 1 and is_many(targets):
        idx = _many(targets, logits)
        feats = feats.expand(idx.numel(), *feats.shape[1:])
    else:
        idx = class_indices(logits, targets)
    with torch.no_grad():
        return torch.einsum("bk,bkhw->bhw", fc.weight[idx].to(feats.dtype), feats)


def _many(targets: Targets, logits: Tensor) -> Tensor:
    """K class indices for the one image of ``logits`` (1, C), range-checked."""
    check_kind(targets)
    idx = torch.as_tensor(targets, device=logits.device).reshape(-1)
    return class_indices(logits.expand(idx.numel(), -1), idx)


def _many_list(targets: Targets, logits: Tensor) -> list[int]:
    """:func:`_many` as Python ints, checked on the CPU: no wait for a GPU (unless ``targets`` is on it)."""
    check_kind(targets)
    idx = torch.as_tensor(targets).reshape(-1).cpu()
    return class_indices(torch.empty(()).expand(idx.numel(), logits.shape[1]), idx).tolist()  # shape only


@exact
def layer_gradients(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    output: Output = None,
    amp: bool | torch.dtype = False,
    reshape: Reshape = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Activations :math:`A` of ``layer``, gradients :math:`\partial y^c / \partial A` and logits.

    One forward (upstream of the layer without a graph) and one
    :func:`torch.autograd.grad` per distinct backward needed; parameters' ``.grad``
    are never touched and every submodule's train/eval flag is restored. For a
    batch of one image with K targets, returns K rows (one forward, K backwards
    through the part of the net after the layer).

    On the CPU the batch runs channels-last (:func:`camlib.hooks.fast_layout`; same values to
    float rounding, ~0.7× the time). ``amp=True`` runs the forward and backward in reduced
    precision (:func:`camlib.device.amp_dtype`: bfloat16 where the device supports it, else
    float16; or pass the dtype), on CUDA with the batch channels-last: at batch 256 on an H100
    4.2× the throughput of float32 on ResNet-50 and 2.0–2.3× on EfficientNet-Lite0. The targets
    are chosen on float32 logits, and the returned tensors are float32, so every method's own
    arithmetic stays in float32; a non-finite gradient in reduced precision (float16
    overflow) makes the call fall back to float32, with a warning, never a NaN map.

    A transformer layer's tokens ``(B, N, C)`` come as their patch grid ``(B, C, h, w)``, the
    class token dropped (:mod:`camlib.tokens`); ``reshape=(h, w)`` or a callable where camlib
    cannot tell the grid from the model.
    """
    return _then(net, x, layer, targets, output, amp, reshape, lambda acts, grads, logits: (acts, grads, logits))


def _then(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets,
    output: Output,
    amp: bool | torch.dtype,
    reshape: Reshape,
    finish: Callable[[Tensor, Tensor, Tensor], Any],
) -> Any:
    """``finish(acts, grads, logits)`` of :func:`layer_gradients`; with ``amp``, ``finish`` runs before the
    finiteness check is read: one wait for the GPU, at the end, instead of three before the map (on an
    H100 at batch 256 the time did not change measurably; it cannot cost)."""
    net = as_module(net)
    check_batch(x)
    low = amp_dtype(x.device, amp)
    if low is not None:
        out = _layer_gradients(net, x, layer, targets, output, low, reshape)
        finite = torch.stack([t.isfinite().all() for t in out]).all()  # on the device: no wait yet
        result = finish(*out)
        if bool(finite):
            return result
        warnings.warn(f"non-finite values in {low} at layer {layer!r}; recomputed in float32.", stacklevel=3)
    return finish(*_layer_gradients(net, x, layer, targets, output, None, reshape))


def _layer_gradients(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets,
    output: Output,
    amp: torch.dtype | None,
    reshape: Reshape = None,
) -> tuple[Tensor, Tensor, Tensor]:
    try:
        with eval_mode(net), torch.inference_mode(False), torch.enable_grad():
            acts, logits = forward_with_grad_at(net, x, layer, output, amp, reshape)
            if amp is not None:  # targets and the returned tensors in float32; the model's own dtype otherwise
                logits = logits.float()
            if x.shape[0] == 1 and is_many(targets):
                idx = _many_list(targets, logits)
                rows = [
                    torch.autograd.grad(logits[0, c], acts, retain_graph=i < len(idx) - 1)[0] for i, c in enumerate(idx)
                ]
                return (
                    _wide(acts.detach(), amp).expand(len(rows), *acts.shape[1:]),
                    _wide(torch.cat(rows), amp),
                    logits.detach(),
                )
            (grads,) = torch.autograd.grad(scores(logits, targets).sum(), acts)
        return _wide(acts.detach(), amp), _wide(grads, amp), logits.detach()
    except RuntimeError as err:  # autograd's own message names no layer
        if "not have been used in the graph" not in str(err) and "does not require grad" not in str(err):
            raise
        name, _ = resolve_layer(net, layer)
        raise LayerError(
            f"Layer {name!r} does not reach the output: the score has no gradient with respect to it. Pick a layer "
            "on the path from the input to the logits, or a gradient-free method that does not need one: "
            "camlib.scorecam or camlib.eigencam (Ablation-CAM gives a zero map there, since zeroing the layer "
            "changes nothing downstream)."
        ) from err


def _wide(t: Tensor, amp: torch.dtype | None) -> Tensor:
    """A reduced-precision result as float32 (``amp`` set), else as it is (float64 models stay float64)."""
    return t.float() if amp is not None else t


@exact
def gradcam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    counterfactual: bool = False,
    output: Output = None,
    amp: bool | torch.dtype = False,
    reshape: Reshape = None,
) -> Tensor:
    r"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391), raw ``(B, h, w)``.

    .. math:: \alpha^c_k = \frac{1}{Z}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}},
              \qquad L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big)

    ``counterfactual=True`` negates the gradients (the paper's counterfactual
    explanations): regions whose removal would *raise* the class score. ``amp=True``: the
    forward in reduced precision, the map in float32 (see :func:`layer_gradients`).

    On a Vision Transformer's block (tokens ``(B, N, C)``) the map is on the patch grid:
    ``camlib.gradcam(vit, x, "blocks.10")`` is ``(B, 14, 14)`` for timm's ``vit_tiny_patch16_224``;
    ``reshape=(h, w)`` or a callable where the grid cannot be inferred (see :func:`layer_gradients`).
    With a class-token head the *last* block's map is all zero (its patch tokens never reach the
    logits: the class token read them inside that block); take the block before, or the last
    block's ``norm1``.
    """
    finish = lambda acts, grads, _: weighted_map(gradcam_weights(grads, counterfactual), acts)  # noqa: E731
    return _then(net, x, layer, targets, output, amp, reshape, finish)


def gradcam_weights(grads: Tensor, counterfactual: bool = False) -> Tensor:
    r"""Grad-CAM's channel weights :math:`\alpha_k = \pm\frac{1}{Z}\sum_{ij} g_{ij}` from gradients ``(B, K, h, w)``."""
    alpha = grads.mean(dim=(2, 3))
    return -alpha if counterfactual else alpha


def gradcam_pp_weights(acts: Tensor, grads: Tensor) -> Tensor:
    r"""Grad-CAM++'s channel weights :math:`\alpha_k = \sum_{ij} \beta_{ij} \mathrm{ReLU}(g_{ij})` (Eq. 19 closed form;
    the paper writes :math:`w` for the channel weight and :math:`\alpha` for :math:`\beta`)."""
    g2 = grads * grads
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads
    beta = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
    return (beta * torch.relu(grads)).sum(dim=(2, 3))


def weighted_map(weights: Tensor, acts: Tensor) -> Tensor:
    r""":math:`\mathrm{ReLU}(\sum_k w_k A^k)` for weights ``(B, K)`` and activations ``(B, K, h, w)``."""
    return torch.relu(torch.einsum("bk,bkhw->bhw", weights, acts))


@exact
def gradcam_pp(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    output: Output = None,
    amp: bool | torch.dtype = False,
    reshape: Reshape = None,
) -> Tensor:
    r"""Grad-CAM++ (Chattopadhyay et al. 2018, arXiv:1710.11063), raw ``(B, h, w)``.

    With :math:`Y^c = \exp(y^c)` the higher derivatives reduce to powers of the first
    one, :math:`g = \partial y^c / \partial A` (Eq. 19):

    .. math:: \beta^{kc}_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + \sum_{ab} A^k_{ab}\, g_{ij}^3},
              \qquad \alpha^c_k = \sum_{ij} \beta^{kc}_{ij}\,\mathrm{ReLU}(g_{ij}),
              \qquad L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big)

    with :math:`\beta = 0` where the denominator is 0. The course's letters (``notebooks/NOTATION.md``):
    the paper writes :math:`\alpha^{kc}_{ij}` for :math:`\beta`, :math:`w^c_k` for :math:`\alpha`
    and :math:`S^c` for the logit :math:`y^c`. ``amp=True``: the forward in reduced
    precision, the coefficients and the map in float32 (see :func:`layer_gradients`).
    """
    finish = lambda acts, grads, _: weighted_map(gradcam_pp_weights(acts, grads), acts)  # noqa: E731
    return _then(net, x, layer, targets, output, amp, reshape, finish)


class _GuidedClamp(torch.autograd.Function):
    """``clamp(x, lo, hi)`` (ReLU: ``hi=None``) whose backward is the guided rule.

    Backward: ``R_in = [lo < out < hi] * max(R_out, 0)``; the activation's own mask and
    the positive-gradient mask are both elementwise, so one function applies both.
    ``inplace=True`` modifies ``x`` and marks it dirty, so code that ignores the return
    value of ``x.relu_()`` still sees the guided node in ``x``'s history.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: float, hi: float | None, inplace: bool) -> Tensor:
        out = x.clamp_(lo, hi) if inplace else x.clamp(lo, hi)
        if inplace:
            ctx.mark_dirty(out)
        ctx.save_for_backward(out)
        ctx.lo, ctx.hi = lo, hi
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (out,) = ctx.saved_tensors
        active = out > ctx.lo
        if ctx.hi is not None:
            active &= out < ctx.hi
        return torch.where(active, grad.clamp(min=0), torch.zeros_like(grad)), None, None, None


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _relu_family(func: Any, args: tuple, kwargs: dict) -> tuple[float, float | None, bool] | None:
    """``(lo, hi, inplace)`` if ``func(*args, **kwargs)`` is a ReLU-family activation, else None."""
    if func in (F.relu, torch.relu, Tensor.relu):
        return 0.0, None, bool(_arg(args, kwargs, 1, "inplace", False)) if func is F.relu else False
    if func in (torch.relu_, F.relu_, Tensor.relu_):
        return 0.0, None, True
    if func is F.relu6:
        return 0.0, 6.0, bool(_arg(args, kwargs, 1, "inplace", False))
    if func in (F.hardtanh, F.hardtanh_) and float(_arg(args, kwargs, 1, "min_val", -1.0)) == 0.0:
        inplace = func is F.hardtanh_ or bool(_arg(args, kwargs, 3, "inplace", False))
        return 0.0, float(_arg(args, kwargs, 2, "max_val", 1.0)), inplace
    return None


_UNGUIDED = {F.silu: "SiLU", F.gelu: "GELU", F.hardswish: "Hardswish", F.mish: "Mish", F.elu: "ELU"}
_UNGUIDED |= {F.leaky_relu: "LeakyReLU", F.softplus: "Softplus", F.selu: "SELU"}


class _GuidedMode(TorchFunctionMode):
    """Inside this mode every ReLU-family call runs as :class:`_GuidedClamp`.

    It sees modules (``nn.ReLU``, ``nn.ReLU6``: their ``forward`` calls ``F.relu`` /
    ``F.hardtanh``), functions (``F.relu``, ``torch.relu``, ``F.relu6``,
    ``F.hardtanh(x, 0, t)``) and tensor methods (``x.relu()``, ``x.relu_()``), in-place
    or not. No hook is registered, so nothing can be left behind on the model.
    ``guided`` counts the activations replaced, ``others`` names the activations it left alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.guided = 0
        self.others: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        spec = _relu_family(func, args, kwargs)
        if spec is None:
            if func in _UNGUIDED:
                self.others.add(_UNGUIDED[func])
            return func(*args, **kwargs)
        self.guided += 1
        return _GuidedClamp.apply(args[0], *spec)


def _check_guidable(net: nn.Module) -> None:
    """Refuse TorchScript: its activations run outside Python, where the guided rule cannot reach."""
    scripted = next(((n, m) for n, m in net.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        where = f"submodule {scripted[0]!r}" if scripted[0] else "the net"
        raise TypeError(
            f"guided_backprop cannot see inside TorchScript ({where} is a {type(scripted[1]).__name__}, from "
            "torch.jit.script or torch.jit.trace): the result would be the plain input gradient. Pass the "
            "original nn.Module, before scripting."
        )


def _check_guided(mode: _GuidedMode) -> None:
    others = ", ".join(sorted(mode.others))
    if mode.guided == 0:
        raise ValueError(
            "guided_backprop found no ReLU-family activation (ReLU, ReLU6, hardtanh(x, 0, t)) in the forward"
            + (f", only {others}" if others else "")
            + ": the result would be the plain input gradient. Guided backpropagation is defined for "
            "ReLU networks; use camlib.gradcam for this one."
        )
    if others:
        warnings.warn(
            f"guided_backprop: {mode.guided} ReLU-family activations were guided, but {others} pass "
            "gradients unchanged (the guided rule is defined for ReLU only).",
            stacklevel=3,
        )


@exact
def guided_backprop(net: nn.Module, x: Tensor, targets: Targets = None, output: Output = None) -> Tensor:
    r"""Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806), ``(B, C, H, W)``.

    The gradient of the target score with respect to the input, except that at every
    ReLU-family activation (ReLU, ReLU6, ``hardtanh(x, 0, t)``; module, function or
    tensor method; in-place or not) the backward keeps a gradient only where the unit
    was active *and* the incoming gradient is positive:

    .. math:: R^{l} = \mathbb{1}[f^{l} > 0] \cdot \mathbb{1}[R^{l+1} > 0] \cdot R^{l+1}

    (for ReLU6 the first factor is :math:`\mathbb{1}[0 < f^l < 6]`). Each image's
    gradient depends on its own score only (eval mode), so a batch gives the same
    rows as separate calls. Nothing is registered on the model.

    Raises:
        TypeError: a TorchScript module (its activations cannot be guided).
        ValueError: no ReLU-family activation ran (SiLU or GELU nets); a warning when some
            other activations (SiLU, Hardswish, ...) ran beside them, unguided.

    >>> gb = camlib.guided_backprop(net, x, targets=281)   # doctest: +SKIP
    """
    net = as_module(net)
    check_batch(x)
    _check_guidable(net)
    with eval_mode(net), torch.inference_mode(False), torch.enable_grad():
        xg = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
        with _GuidedMode() as mode:
            logits = logits_of(net(xg), output)
        _check_guided(mode)
        if x.shape[0] == 1 and is_many(targets):  # one forward, one backward per class
            idx = _many_list(targets, logits)
            rows = [torch.autograd.grad(logits[0, c], xg, retain_graph=i < len(idx) - 1)[0] for i, c in enumerate(idx)]
            return torch.cat(rows)
        (grad,) = torch.autograd.grad(scores(logits, targets).sum(), xg)
    return grad


def guided_gradcam(net: nn.Module, x: Tensor, layer: Layer, targets: Targets = None, output: Output = None) -> Tensor:
    r"""Guided Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): guided backprop times the map.

    .. math:: G^c = \mathrm{GB}^c \odot \mathrm{normalize}(\mathrm{upsample}(L^c_{\text{Grad-CAM}}))

    Returns ``(B, 3, H, W)``.
    """
    gb = guided_backprop(net, x, targets, output)
    heat = normalize(upsample(gradcam(net, x, layer, targets, output=output), x.shape[-2:]))
    return gb * heat[:, None]
