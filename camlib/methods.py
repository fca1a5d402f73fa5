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

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .hooks import Layer, capture, eval_mode, forward_with_grad_at, logits_of, resolve_layer
from .targets import Targets, class_indices, scores
from .viz import normalize, upsample

__all__ = [
    "CamError",
    "find_gap_head",
    "cam",
    "layer_gradients",
    "gradcam",
    "gradcam_pp",
    "guided_backprop",
    "guided_gradcam",
]

Output = Callable[[Any], Tensor] | None


class CamError(ValueError):
    """CAM asked of a network whose head is not global average pooling + linear."""


_heads: weakref.WeakKeyDictionary[nn.Module, tuple[str, nn.Linear]] = weakref.WeakKeyDictionary()


def find_gap_head(net: nn.Module, x: Tensor, output: Output = None) -> tuple[str, nn.Linear]:
    """Find ``(feature_layer, fc)`` of a net whose head is GAP followed by one linear layer.

    One forward of ``x[:1]`` records every module's output; the head is accepted when
    the last linear layer's output is the logits and its input equals the spatial
    mean of an earlier ``(1, K, h, w)`` output (the feature layer). Cached per net.

    Raises:
        CamError: no such head; use :func:`gradcam`, which works on any CNN.
    """
    if net in _heads:
        return _heads[net]
    seen: list[tuple[str, Tensor]] = []
    linear_io: list[tuple[str, nn.Linear, Tensor, Tensor]] = []

    def make(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: Any, out: Any) -> None:
            if isinstance(module, nn.Linear):
                linear_io.append((name, module, inp[0].detach(), out.detach()))
            elif isinstance(out, Tensor) and out.dim() == 4:
                seen.append((name, out.detach()))

        return hook

    handles = [m.register_forward_hook(make(n, m)) for n, m in net.named_modules() if n]
    try:
        with eval_mode(net), torch.no_grad():
            logits = logits_of(net(x[:1]), output)
    finally:
        for h in handles:
            h.remove()
    explain = (
        f"{type(net).__name__} has no global-average-pooling + linear head, so CAM "
        "(Zhou et al. 2016) is not defined for it. Use camlib.gradcam(net, x, layer), "
        "which works on any CNN and equals ReLU(CAM)/Z where CAM exists."
    )
    if not linear_io or not torch.allclose(linear_io[-1][3], logits, atol=1e-5):
        raise CamError(explain + " (The logits are not the output of a final nn.Linear.)")
    fc_name, fc, fc_in, _ = linear_io[-1]
    matches = [
        (name, a)
        for name, a in seen
        if a.shape[1] == fc.in_features and torch.allclose(a.mean((2, 3)), fc_in.flatten(1), atol=1e-5, rtol=1e-4)
    ]
    if not matches:
        raise CamError(explain + f" (The input of {fc_name!r} is not the spatial mean of any feature map.)")
    spatial = [m for m in matches if m[1].shape[2] * m[1].shape[3] > 1]
    name = (spatial or matches)[-1][0]
    _heads[net] = (name, fc)
    return name, fc


def _cam_parts(model: Any, x: Tensor, output: Output) -> tuple[nn.Module, str, nn.Linear]:
    if isinstance(model, nn.Module):
        return (model, *find_gap_head(model, x, output))
    return model.net, model.feature_layer, model.fc


def _broadcast(x: Tensor, targets: Targets) -> Tensor:
    """Repeat a single image once per target when a batch of one gets K > 1 classes."""
    if x.shape[0] == 1 and not callable(targets) and not isinstance(targets, int) and targets is not None:
        k = torch.as_tensor(targets).numel()
        if k > 1:
            return x.expand(k, *x.shape[1:])
    return x


def cam(model: Any, x: Tensor, targets: Targets = None, output: Output = None) -> Tensor:
    r"""Class activation maps (Zhou et al. 2016, arXiv:1512.04150), raw.

    .. math:: M_c(i, j) = \sum_k w^c_k \, f_k(i, j)

    where :math:`f_k` is the last feature map (before global average pooling) and
    :math:`w^c` the linear layer's row for class :math:`c`; no ReLU, no bias, no
    normalisation. ``model`` is what :func:`camlib.load_model` returns or any
    ``nn.Module`` with a GAP + linear head (found automatically). Returns ``(B, h, w)``.
    """
    net, layer, fc = _cam_parts(model, x, output)
    with capture(net, layer) as cap, torch.no_grad():
        logits = logits_of(net(x), output)
    feats = cap.activation
    if feats.shape[0] == 1 and _is_many(targets):
        idx = _many(targets, logits)
        feats = feats.expand(idx.numel(), *feats.shape[1:])
    else:
        idx = class_indices(logits, targets)
    with torch.no_grad():
        return torch.einsum("bk,bkhw->bhw", fc.weight[idx].to(feats.dtype), feats)


def _is_many(targets: Targets) -> bool:
    return targets is not None and not isinstance(targets, int) and not callable(targets)


def _many(targets: Targets, logits: Tensor) -> Tensor:
    idx = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    return class_indices(logits.expand(idx.numel(), -1), idx)


def layer_gradients(
    net: nn.Module, x: Tensor, layer: Layer, targets: Targets = None, output: Output = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Activations :math:`A` of ``layer``, gradients :math:`\partial y^c / \partial A` and logits.

    One forward (upstream of the layer without a graph) and one
    :func:`torch.autograd.grad` per distinct backward needed; parameters' ``.grad``
    are never touched and every submodule's train/eval flag is restored. For a
    batch of one image with K targets, returns K rows (one forward, K backwards
    through the part of the net after the layer).
    """
    resolve_layer(net, layer)
    with eval_mode(net):
        acts, logits = forward_with_grad_at(net, x, layer, output)
        with torch.enable_grad():
            if x.shape[0] == 1 and _is_many(targets):
                idx = _many(targets, logits)
                rows = [torch.autograd.grad(logits[0, c], acts, retain_graph=True)[0] for c in idx.tolist()]
                return acts.detach().expand(len(rows), *acts.shape[1:]), torch.cat(rows), logits.detach()
            s = scores(logits, targets)
            (grads,) = torch.autograd.grad(s.sum(), acts)
    return acts.detach(), grads, logits.detach()


def gradcam(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    targets: Targets = None,
    counterfactual: bool = False,
    output: Output = None,
) -> Tensor:
    r"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391), raw ``(B, h, w)``.

    .. math:: \alpha^c_k = \frac{1}{Z}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}},
              \qquad L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big)

    ``counterfactual=True`` negates the gradients (the paper's counterfactual
    explanations): regions whose removal would *raise* the class score.
    """
    acts, grads, _ = layer_gradients(net, x, layer, targets, output)
    alpha = grads.mean(dim=(2, 3))
    if counterfactual:
        alpha = -alpha
    return torch.relu(torch.einsum("bk,bkhw->bhw", alpha, acts))


def gradcam_pp(net: nn.Module, x: Tensor, layer: Layer, targets: Targets = None, output: Output = None) -> Tensor:
    r"""Grad-CAM++ (Chattopadhyay et al. 2018, arXiv:1710.11063), raw ``(B, h, w)``.

    With :math:`Y^c = \exp(S^c)` the higher derivatives reduce to powers of the first
    one, :math:`g = \partial S^c / \partial A` (Eq. 19):

    .. math:: \alpha^{kc}_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + \sum_{ab} A^k_{ab}\, g_{ij}^3},
              \qquad w^c_k = \sum_{ij} \alpha^{kc}_{ij}\,\mathrm{ReLU}(g_{ij}),
              \qquad L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    with :math:`\alpha = 0` where the denominator is 0.
    """
    acts, g, _ = layer_gradients(net, x, layer, targets, output)
    g2 = g * g
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * g
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
    weights = (alpha * torch.relu(g)).sum(dim=(2, 3))
    return torch.relu(torch.einsum("bk,bkhw->bhw", weights, acts))


class _PositiveGradOnly(torch.autograd.Function):
    """Identity forward; backward keeps only positive gradients (the guided rule)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


_RELU_FAMILY = (nn.ReLU, nn.ReLU6)


def guided_backprop(net: nn.Module, x: Tensor, targets: Targets = None, output: Output = None) -> Tensor:
    r"""Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806), ``(B, 3, H, W)``.

    At every ReLU-family module (``nn.ReLU``, ``nn.ReLU6``, in-place or not) the
    backward pass keeps a gradient only where the forward input was active *and* the
    incoming gradient is positive:
    :math:`R^{l} = (f^{l} > 0) \cdot (R^{l+1} > 0) \cdot R^{l+1}`.
    The activation's own backward applies the first factor; a forward hook appends
    an identity whose backward applies the second. Hooks are removed afterwards.
    Functional ``F.relu`` calls inside ``forward`` are not seen.
    """
    x = _broadcast(x, targets).contiguous()
    handles = [
        m.register_forward_hook(lambda _m, _i, out: _PositiveGradOnly.apply(out))
        for m in net.modules()
        if isinstance(m, _RELU_FAMILY)
    ]
    try:
        with eval_mode(net), torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = logits_of(net(xg), output)
            (grad,) = torch.autograd.grad(scores(logits, targets).sum(), xg)
    finally:
        for h in handles:
            h.remove()
    return grad


def guided_gradcam(
    net: nn.Module, x: Tensor, layer: Layer, targets: Targets = None, output: Output = None
) -> Tensor:
    r"""Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled map.

    .. math:: G^c = \mathrm{GB}^c \odot \mathrm{normalize}(\mathrm{upsample}(L^c_{\text{Grad-CAM}}))

    Returns ``(B, 3, H, W)``.
    """
    gb = guided_backprop(net, x, targets, output)
    heat = normalize(upsample(gradcam(net, x, layer, targets, output=output), x.shape[-2:]))
    return gb * heat[:, None]
