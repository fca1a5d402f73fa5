r"""Batch-norm folding: the same eval-mode network with one pass over the activations fewer per conv.

In eval mode a ``BatchNorm2d`` right after a convolution is an affine map per channel,

.. math:: \mathrm{BN}(W * x + b) = (sW) * x + \big(s(b - \mu) + \beta\big),
          \qquad s = \gamma / \sqrt{\sigma^2 + \epsilon},

so the pair is one convolution with scaled weights (Ioffe & Szegedy 2015, arXiv:1502.03167;
the folding used by every inference engine). On a CPU the batch norm is a separate memory-bound
pass over each feature map; without it ResNet-50 and EfficientNet-Lite0 forward in about 0.75×
the time (2-core AVX2 CPU, channels-last).

:func:`folded` never changes the user's model: it returns a *twin*, a copy of the modules that hold a
folded pair (the model and its blocks) which shares every other module, every parameter and every
buffer with the original (no weights are copied), so a setting changed on the model is seen. Each folded
convolution computes :math:`s` and the shift from the shared tensors; on the CPU without autograd it
keeps these per-channel vectors between calls and recomputes them when a value they come from
changes (compared on each call), so the copy follows the original's weights, however they were
changed (an optimizer's step, a write through ``.data``). A block whose ``forward`` is set on the
instance is not folded (its wiring is not the class's), and a convolution that cannot stand in for
the model's (an input it would refuse, a padding mode set later, a residual of another shape)
raises :class:`FoldMismatch`, so the model itself runs and gives its own result or error.
On the CPU without gradients the scale is applied as oneDNN's per-channel post-op,
:math:`s \odot (W * x + \mathrm{shift}/s)`; where that does not apply (a ReLU6 after it, a zero
:math:`s`, a residual sum) the weights are scaled.
Only pairs whose wiring is known are folded: a convolution followed by its batch norm inside an
``nn.Sequential``, and the ``conv``/``bn`` pairs of torchvision's ResNet blocks and timm's
EfficientNet/MobileNet blocks (their ``forward`` is read, not guessed). A folded batch norm checks
at run time that its input is its convolution's output; if the model is wired differently the
call raises :class:`FoldMismatch` and camlib runs the original model instead.

Where the folded convolution is followed by a ReLU or ReLU6 whose place is known (timm's
``BatchNormAct2d``, a ReLU right after the pair in an ``nn.Sequential``, torchvision's ResNet
blocks), the activation runs inside oneDNN's convolution as a post-op, and in a ResNet block the
residual sum too (``ReLU(conv(x) + identity)``): one pass over the feature map instead of three.
The activation is the same function; the values differ from the unfolded model's by float
rounding (≤ 1e-5 relative, ``tests/test_fold.py``).

On the CPU the weights are handed to oneDNN already in its blocked layout (:func:`_packed`), made
once and kept until they change, instead of being copied into the input's layout and reordered on
every call. That copy is the one thing camlib keeps beside the model after a call: about the size of
its convolution weights (ResNet-50 91 MiB, EfficientNet-Lite0 12 MiB), dropped with the model or by
:func:`forget`.

On CUDA (large batches of a ResNet, :func:`camlib.hooks.cpu_twin`) a pair followed by a ReLU runs as
cuDNN's fused convolution + bias (+ residual) + ReLU with the weights scaled during the call; any
other pair runs unfolded, as the model's own kernels.
"""

from __future__ import annotations

import copy
import functools
import itertools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.weak
from torch import Tensor, nn

__all__ = ["FoldMismatch", "clear", "folded", "fold_pairs", "forget"]


class FoldMismatch(RuntimeError):
    """A folded batch norm did not receive its convolution's output: the pairing was wrong."""


# conv → bn attribute pairs in blocks whose forward applies bn directly (and only) to conv's output.
_KNOWN_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),  # torchvision.models.resnet
    "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),  # timm efficientnet_blocks
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "EdgeResidual": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
    "ResNet": (("conv1", "bn1"),),  # torchvision's stem
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),  # timm efficientnet
    "MobileNetV3": (("conv_stem", "bn1"),),
    "ConvBnAct": (("conv", "bn1"),),
}
_KNOWN_MODULES = ("torchvision.models.resnet", "timm.models")


def _plain_bn(m: nn.Module) -> bool:
    return type(m) is nn.BatchNorm2d and m.track_running_stats and m.running_var is not None


def _bn_act(m: nn.Module) -> bool:  # timm's BatchNormAct2d: batch norm, then drop, then act
    return (
        type(m).__name__ == "BatchNormAct2d"
        and type(m).__module__.startswith("timm.")
        and m.track_running_stats
        and m.running_var is not None
        and hasattr(m, "act")
        and hasattr(m, "drop")
    )


def _conv(m: nn.Module, bn: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.padding_mode == "zeros"
        and m.out_channels == bn.num_features
        and bn.weight is not None
        and bn.bias is not None
    )


def fold_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """Dotted names ``(conv, bn)`` of the pairs :func:`folded` folds in ``net``."""
    pairs = []
    for name, parent in net.named_modules():
        prefix = f"{name}." if name else ""
        if "forward" in vars(parent):  # a forward set on the instance (an ablation): its wiring is not known
            continue
        if type(parent) is nn.Sequential:
            kids = list(parent.named_children())
            candidates = [(a, b) for (a, _), (b, _) in itertools.pairwise(kids)]
        elif type(parent).__name__ in _KNOWN_PAIRS and type(parent).__module__.startswith(_KNOWN_MODULES):
            candidates = list(_KNOWN_PAIRS[type(parent).__name__])
        else:
            continue
        for conv_name, bn_name in candidates:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if isinstance(bn, nn.Module) and (_plain_bn(bn) or _bn_act(bn)) and isinstance(conv, nn.Module):
                if _conv(conv, bn):
                    pairs.append((prefix + conv_name, prefix + bn_name))
    return pairs


_MKLDNN = torch.backends.mkldnn.is_available()
# activations oneDNN applies as a post-op of the convolution, with the same result: (attr, scalars) of the module
_POST_OPS: dict[type[nn.Module], Callable[[nn.Module], tuple[str, list[float]]]] = {
    nn.ReLU: lambda act: ("relu", []),
    nn.ReLU6: lambda act: ("hardtanh", [float(act.min_val), float(act.max_val)]),  # read per call: they can change
}


def _post_op(act: nn.Module | None) -> tuple[str | None, list[float]]:
    """oneDNN's post-op for ``act`` (:data:`_POST_OPS`), ``(None, [])`` for none."""
    make = _POST_OPS.get(type(act))
    return (None, []) if make is None else make(act)


def _fast(conv: nn.Conv2d, x: Tensor) -> bool:
    """A float32 CPU batch without autograd, for a convolution oneDNN runs directly (camlib's fast paths),
    whose output has more than one pixel: torch 2.11's oneDNN (Colab's) fails with "could not create a
    memory" on the fused convolutions for a 1 × 1 output (a small input deep in a net), so those few
    run as a plain convolution."""
    return (
        _MKLDNN
        and x.device.type == "cpu"
        and x.dtype == conv.weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and isinstance(conv.padding, tuple)  # not "same"/"valid"
        and x.dim() == 4
        and _out_pixels(conv, x) > 1
    )


def _out_size(conv: nn.Conv2d, x: Tensor) -> list[int]:
    """The output's height and width of ``conv`` on ``x`` ``(B, C, H, W)`` (numeric padding)."""
    sizes = zip(x.shape[-2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True)
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in sizes]


def _out_pixels(conv: nn.Conv2d, x: Tensor) -> int:
    """The number of output pixels of ``conv`` on ``x`` ``(B, C, H, W)``."""
    h, w = _out_size(conv, x)
    return h * w


@functools.cache
def _mkldnn(name: str) -> object | None:
    """``torch.ops.mkldnn.<name>`` if this build has it: ``_convolution_pointwise`` (a convolution with
    fused post-ops), ``_reorder_convolution_weight`` (oneDNN's weight packing, :func:`_packed`)."""
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return None


def _cudnn_fused(dtype: torch.dtype) -> bool:
    """cuDNN's fused convolution + bias + ReLU can run (``torch.cudnn_convolution_relu``)."""
    return (
        _CUDNN_FUSED
        and dtype in (torch.float32, torch.float16, torch.bfloat16)
        and torch.backends.cudnn.enabled
        and torch.backends.cudnn.is_available()
    )


_CUDNN_FUSED = True  # a switch, for an A/B on a GPU


class _FoldedConv(nn.Module):
    """``conv`` then ``bn`` (eval mode) as one convolution; scale and shift computed per call from the shared tensors.

    ``act`` (a ReLU or ReLU6 that follows the batch norm) is applied here, as oneDNN's post-op on
    the CPU; ``other`` (a ResNet block's identity) is added before it.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn
        self.act: nn.Module | None = None
        self.tracked = True  # remember the output for the batch norm's wiring check
        self.last: Tensor | None = None
        # ((eps, the values the scale and shift come from), (scale, shift, shift / scale)), see _affine
        self._kept: tuple[tuple[float, Tensor], tuple[Tensor, Tensor, Tensor | None]] | None = None

    def forward(self, x: Tensor, other: Tensor | None = None) -> Tensor:
        return self._seen(self._compute(x, other))

    def _affine(self) -> tuple[Tensor, Tensor, Tensor | None]:
        r"""``(s, shift, shift / s)`` of the folded pair; the last is ``None`` where it is not finite or off the CPU.

        On the CPU without autograd they are kept between calls (a few per-channel vectors) with a
        copy of the values they come from (:math:`\gamma, \beta, \mu, \sigma^2`, the convolution's
        bias, :math:`\epsilon`), compared on each call: any change is seen, also one that moves no
        version counter (a write through ``.data``, a fused optimizer's step, a training-mode forward's
        statistics). On CUDA they are computed on each call (a comparison would wait for the GPU).
        """
        conv, bn = self.conv, self.bn
        reuse = bn.weight.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        sources = (bn.weight, bn.bias, bn.running_mean, bn.running_var, conv.bias)
        values = torch.cat([t.reshape(-1) for t in sources if t is not None]) if reuse else None
        kept = self._kept
        if values is not None and kept is not None and kept[0][0] == bn.eps and torch.equal(kept[0][1], values):
            return kept[1]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        ratio = shift / scale if scale.device.type == "cpu" else None  # for oneDNN's post-op only (no GPU sync)
        affine = (scale, shift, ratio if ratio is not None and bool(ratio.isfinite().all()) else None)
        self._kept = None if values is None else ((bn.eps, values), affine)
        return affine

    def _compute(self, x: Tensor, other: Tensor | None) -> Tensor:
        conv = self.conv
        self._check(x, other)
        scale, shift, ratio = self._affine()
        fast = _fast(conv, x)
        args = (conv.padding, conv.stride, conv.dilation, conv.groups)
        attr, scalars = _post_op(self.act)
        fused = _mkldnn("_convolution_pointwise") if fast and (other is None or other.dtype == x.dtype) else None
        if fused is not None and other is None and attr in (None, "relu"):  # oneDNN fuses binary + these only
            # s ⊙ (W * x + shift / s): the scale as oneDNN's per-channel post-op, no scaled copy of the weights
            if ratio is not None:
                per_channel = scale.reshape(1, -1, 1, 1)
                w = _packed(self, x, scaled=False)
                w = conv.weight if w is None else w
                return fused.binary(x, per_channel, w, ratio, *args, "mul", None, attr, scalars, None)
        if x.is_cuda and not torch.is_grad_enabled() and isinstance(conv.padding, tuple) and x.dim() == 4:
            return self._cuda(x, other, scale, shift)
        scale = scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
        w = _packed(self, x, scaled=True) if fused is not None and (other is not None or attr is not None) else None
        if w is None and fast and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # the scaled weights written in the input's layout: oneDNN would copy them into it otherwise
            w = torch.mul(conv.weight, scale, out=torch.empty_like(conv.weight, memory_format=torch.channels_last))
        elif w is None:
            w = conv.weight * scale
        if fused is not None and other is not None:  # a ResNet block's ReLU(conv(x) + identity)
            return fused.binary(x, other, w, shift, *args, "add", None, attr, scalars, None)
        if fused is not None and attr is not None:
            return fused(x, w, shift, *args, attr, scalars, "")
        if fast:
            # oneDNN with the bias fused (PyTorch sends 1×1 convolutions to a GEMM that adds a bias in an
            # extra pass over the output, which is what folding saves)
            out = torch.mkldnn_convolution(x, w, shift, *args)
        else:
            out = F.conv2d(x, w, shift.to(w.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
        if other is not None:
            out = out + other
        return self.act(out) if self.act is not None else out

    def _check(self, x: Tensor, other: Tensor | None) -> None:
        """Raise :class:`FoldMismatch` (camlib then runs the model, which gives its own error or result)
        where the folded path cannot stand in for the model: an input the convolution would refuse
        (channels, dtype), a padding mode set after the twin was made, or a residual that does not
        match the output (the fused sum does not check it)."""
        conv = self.conv
        mixed = x.dtype != conv.weight.dtype and not torch.is_autocast_enabled(x.device.type)
        if x.dim() != 4 or x.shape[1] != conv.in_channels or mixed or conv.padding_mode != "zeros":
            raise FoldMismatch(f"the folded convolution cannot take this input ({tuple(x.shape)}, {x.dtype})")
        if other is not None and isinstance(conv.padding, tuple):
            if tuple(other.shape) != (x.shape[0], conv.out_channels, *_out_size(conv, x)):
                raise FoldMismatch(f"a residual {tuple(other.shape)} does not match the convolution's output")

    def _cuda(self, x: Tensor, other: Tensor | None, scale: Tensor, shift: Tensor) -> Tensor:
        """On CUDA without autograd. Before a ReLU: the scaled weights written once per call in the
        input's dtype and layout (autocast's under autocast), then cuDNN's fused convolution + bias
        (+ residual) + ReLU, one kernel instead of three or four. Elsewhere the pair runs unfolded, as
        the model's own kernels (a bias add costs what the batch norm costs there)."""
        conv, bn = self.conv, self.bn
        amp = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda") if amp else x.dtype
        args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        if type(self.act) is not nn.ReLU or not _cudnn_fused(dtype):
            out = F.conv2d(x, conv.weight, conv.bias, *args)
            out = F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            if other is not None:
                out += other
            return self.act(out) if self.act is not None else out
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        w = torch.empty_like(conv.weight, dtype=dtype, memory_format=layout)
        torch.mul(conv.weight, scale.reshape(-1, 1, 1, 1), out=w)
        x, bias = x.to(dtype), shift.to(dtype)
        if other is None:
            return torch.cudnn_convolution_relu(x, w, bias, *args)
        return torch.cudnn_convolution_add_relu(x, w, other.to(dtype), 1.0, bias, *args)

    def _seen(self, out: Tensor) -> Tensor:
        if self.tracked:
            self.last = out
        return out


# a convolution weight -> {scaled: (key, the scale it was made with or None, the packed copy)}; weak on the weight
_PACKED: torch.utils.weak.WeakIdKeyDictionary = torch.utils.weak.WeakIdKeyDictionary()


def _packed(fc: _FoldedConv, x: Tensor, scaled: bool) -> Tensor | None:
    """The weights of ``fc``'s convolution (times the folded scale :math:`s` if ``scaled``) in oneDNN's
    blocked layout for a batch shaped like ``x``, made once and kept until they would differ.

    Otherwise PyTorch copies the weights into the input's layout and oneDNN reorders them into its
    own, on every call. Grad-CAM with them kept, against without (2-core AVX2 CPU, same process):
    ResNet-50 batch 8 0.92× the time, batch 1 0.78×; EfficientNet-Lite0 batch 16 0.99×, batch 1
    0.86× (again on 2026-11-27, 15–21 alternating rounds: 0.87×, 0.69×, 0.96×, 0.88×). The layout
    depends on the batch's shape: a 3×3 512 → 512 convolution packed for another shape took 7–60× as
    long. Kept like the scale and shift (without autograd, outside inference mode), one copy per
    weight tensor however many twins share it, dropped with the weight or by :func:`forget`, and
    made again when the scale (:meth:`_FoldedConv._affine`), the batch's shape or layout, or the
    convolution's stride, padding, dilation or groups change, and when the weight does: it is
    replaced, its version counter moves, or the sum of its values changes. The sum (one read of the
    weights per call: 5–8 ms for ResNet-50's 23 M on the 2-core CPU, ~10 % of a batch-1 call) sees
    the edits that move no counter, a fused optimizer's step or a write through ``.data`` (pruning:
    ``w.data *= mask``); an edit that keeps the sum to the last bit (two weights swapped in place
    through ``.data``) is not seen: call :func:`forget` after one. ``None`` where it cannot be kept
    (the caller then passes the weights as before).
    """
    conv, weight = fc.conv, fc.conv.weight
    reorder = _mkldnn("_reorder_convolution_weight")
    if reorder is None or torch.is_grad_enabled() or torch.is_inference_mode_enabled() or (scaled and fc._kept is None):
        return None
    scale = fc._kept[1][0] if scaled else None
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    geometry = (conv.padding, conv.stride, conv.dilation, conv.groups)
    key = (weight._version, weight.data_ptr(), float(weight.sum()), tuple(x.shape), channels_last, geometry)
    kept = _PACKED.setdefault(weight, {})
    old = kept.get(scaled)
    if old is None or old[0] != key or (scale is not None and not torch.equal(old[1], scale)):
        w = weight * scale.reshape(-1, 1, 1, 1) if scale is not None else weight
        kept[scaled] = (key, scale, reorder(w, conv.padding, conv.stride, conv.dilation, conv.groups, list(x.shape)))
    return kept[scaled][2]


class _FoldedBN(nn.Module):
    """What is left of a folded batch norm: nothing (``BatchNorm2d``) or timm's drop + activation."""

    def __init__(self, conv: _FoldedConv, bn: nn.Module) -> None:
        super().__init__()
        self.source = [conv]  # a list, so the conv is not registered twice
        self.drop = getattr(bn, "drop", None)
        self.act = getattr(bn, "act", None)

    def forward(self, x: Tensor) -> Tensor:
        conv = self.source[0]
        if conv.last is not x:
            conv.last = None
            raise FoldMismatch("a folded batch norm was not fed by its convolution")
        conv.last = None
        if self.drop is not None:
            x = self.drop(x)
        if self.act is not None:
            x = self.act(x)
        return x


def _state(net: nn.Module) -> tuple | None:
    """What a twin depends on, in one walk over the modules: their identities, a ``forward`` set on an
    instance, and the identities of their parameters and buffers (not their values); ``None`` when a
    module is in training mode or carries a hook (a twin cannot be used then)."""
    from .hooks import modules

    state: list[int] = []
    for m in modules(net):
        if m.training or m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return None
        state.append(id(m))
        state.append(id(m.__dict__.get("forward")))  # a forward set on the instance: the wiring changed
        state.extend(map(id, m._parameters.values()))  # None (no bias) counts as one more id
        state.extend(map(id, m._buffers.values()))
    return tuple(state)


_PLAIN = (int, float, bool, str, type(None))


def _settings(modules: list[nn.Module]) -> tuple:
    """The plain attributes (numbers, strings, flags, tuples of them) of ``modules``, e.g. a block's
    ``has_skip``: what a copied module would not see change in the original."""
    return tuple(
        tuple(
            (k, v)
            for k, v in vars(m).items()
            if k[0] != "_" and (isinstance(v, _PLAIN) or (type(v) is tuple and all(isinstance(e, _PLAIN) for e in v)))
        )
        for m in modules
    )


# net -> {keep: (_state(net), twin or None, net's modules the twin copies (weakly: the value must not keep net alive),
# their _settings)}
_TWINS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], tuple[tuple, nn.Module | None, list, tuple]]] = (
    weakref.WeakKeyDictionary()
)


def folded(net: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    """An eval-mode copy of ``net``'s module tree with its conv → batch-norm pairs folded.

    Parameters and buffers are shared with ``net``, not copied; the folding follows them as they
    change. The pairs whose convolution is named in ``keep`` (a layer whose own output
    is wanted) stay as they are; a folded batch norm keeps its name, so a hook on it sees the same
    values as on the original (to float rounding). Returns ``net`` itself when there is nothing to
    fold, when any submodule is in training mode, or when ``net`` carries hooks (they would not see
    the folded modules). Only the modules that contain a folded pair are copied (the model and its
    blocks); every other module is ``net``'s own, and a folded pair reads its convolution's and batch
    norm's settings (stride, ``eps``, ...) from ``net``'s, so an attribute changed on any of them is
    seen at once. The copy of the tree is kept (weakly, keyed on ``net``) and rebuilt when a module or
    a parameter/buffer object of ``net`` is replaced, or a plain attribute of a copied module changes
    (:func:`_settings`). It holds each folded pair's per-channel scale and shift
    (:class:`_FoldedConv`); the weights in oneDNN's layout are kept once per weight tensor, shared by
    the twins (:func:`_packed`).
    """
    sig = _state(net)
    if sig is None:
        return net
    keep = tuple(keep)
    twins = _TWINS.setdefault(net, {})
    hit = twins.get(keep)
    if hit is not None and hit[0] == sig and _settings([ref() for ref in hit[2]]) == hit[3]:
        return net if hit[1] is None else hit[1]
    pairs = [(c, b) for c, b in fold_pairs(net) if c not in keep]
    twin, copied = None, []  # nothing to fold (a reference to net itself here would keep it alive)
    if pairs:
        names = sorted({".".join(n.split(".")[:i]) for pair in pairs for n in pair for i in range(n.count(".") + 1)})
        copied = [net.get_submodule(a) for a in names]
        copied_ids = {id(m) for m in copied}
        shared = {id(t): t for t in itertools.chain(net.parameters(), net.buffers())}
        shared.update((id(m), m) for m in net.modules() if id(m) not in copied_ids)
        twin = copy.deepcopy(net, memo=shared)
        for conv_name, bn_name in pairs:
            conv, bn = twin.get_submodule(conv_name), twin.get_submodule(bn_name)
            new_conv = _FoldedConv(conv, bn)
            _set(twin, conv_name, new_conv)
            _set(twin, bn_name, _FoldedBN(new_conv, bn))
        _fuse_activations(twin, keep)
        twin._folded_convs = [m for m in twin.modules() if isinstance(m, _FoldedConv)]  # for clear()
    if len(twins) >= 8:  # a few layers' twins per net (the explorer moves between layers)
        twins.clear()
    twins[keep] = (sig, twin, [weakref.ref(m) for m in copied], _settings(copied))
    return net if twin is None else twin


_RES_BLOCKS = {"BasicBlock": 2, "Bottleneck": 3}  # torchvision.models.resnet: number of conv → bn → relu


def _fuse_activations(twin: nn.Module, keep: tuple[str, ...]) -> None:
    """Move the ReLU/ReLU6 after each folded pair into its convolution where the wiring is known.

    Nothing named in ``keep`` (a layer whose own output is wanted) loses its computation: a kept
    plain batch norm, a kept activation, or a ResNet block with a kept module inside stays as it is.
    """
    for bn in twin.modules():
        if isinstance(bn, _FoldedBN) and type(bn.act) in _POST_OPS and isinstance(bn.drop, (nn.Identity, type(None))):
            bn.source[0].act, bn.act, bn.drop = bn.act, None, None  # timm's BatchNormAct2d
    for name, parent in list(twin.named_modules()):
        prefix = f"{name}." if name else ""
        if type(parent) is nn.Sequential and "forward" not in vars(parent):
            kids = list(parent.named_children())
            for (_, conv), (bn_name, bn), (act_name, act) in zip(kids, kids[1:], kids[2:], strict=False):
                if (
                    isinstance(conv, _FoldedConv)
                    and isinstance(bn, _FoldedBN)
                    and bn.source[0] is conv
                    and conv.act is None
                    and type(act) in _POST_OPS
                    and prefix + bn_name not in keep
                    and prefix + act_name not in keep
                ):
                    conv.act = act
                    setattr(parent, act_name, nn.Identity())
        elif (
            type(parent).__name__ in _RES_BLOCKS
            and type(parent).__module__ == "torchvision.models.resnet"
            and "forward" not in vars(parent)
        ):
            n = _RES_BLOCKS[type(parent).__name__]
            convs = [getattr(parent, f"conv{i}", None) for i in range(1, n + 1)]
            known = (
                name != ""  # the model itself is a block: left as is
                and not any(k.startswith(prefix) for k in keep)  # nothing inside the block is wanted on its own
                and type(getattr(parent, "relu", None)) is nn.ReLU
                and all(isinstance(c, _FoldedConv) for c in convs)  # each folded with its own bn{i}
            )
            if known:
                _set(twin, name, _FusedResBlock(parent, convs))


class _FusedResBlock(nn.Module):
    """torchvision's ``BasicBlock``/``Bottleneck`` with folded convolutions and the ReLUs and the
    residual sum inside them: ``ReLU(conv_n(... ReLU(conv_1(x))) + identity)``. Its children keep
    their names (``conv1``, ``bn1``, ..., ``downsample``); the folded batch norms are not called."""

    def __init__(self, block: nn.Module, convs: list[_FoldedConv]) -> None:
        super().__init__()
        for child_name, child in block.named_children():
            self.add_module(child_name, child)
        self.convs = convs  # a plain list: already registered under their own names
        self.shortcut = [block.downsample]  # None or the downsample module (a list: registered above)
        for conv in convs:
            conv.act, conv.tracked = block.relu, False

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for conv in self.convs[:-1]:
            out = conv(out)
        shortcut = self.shortcut[0]
        identity = shortcut(x) if shortcut is not None else x
        return self.convs[-1](out, other=identity)


def fused_relu(twin: nn.Module) -> bool:
    """The twin has a folded convolution followed by a ReLU (what cuDNN runs as one kernel)."""
    return any(type(m.act) is nn.ReLU for m in getattr(twin, "_folded_convs", ()))


def clear(twin: nn.Module) -> None:
    """Drop what a folded twin's convolutions remember of the last call (after an exception)."""
    for m in getattr(twin, "_folded_convs", ()):
        m.last = None


def forget(net: nn.Module | None = None) -> None:
    """Drop what camlib keeps for ``net`` between calls (every model's if ``None``): its folded twins
    and the packed copies of its convolution weights (:func:`_packed`, about the size of the weights).

    Both are dropped with the model anyway and made again by the next call; this is for a tight
    memory budget while the model lives on. The model itself is not touched.
    """
    if net is None:
        _TWINS.clear()
        _PACKED.clear()
        return
    _TWINS.pop(net, None)
    for p in net.parameters():
        _PACKED.pop(p, None)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
