r"""Batch-norm folding: the same eval-mode network with one pass over the activations fewer per conv.

In eval mode a ``BatchNorm2d`` right after a convolution is an affine map per channel,

.. math:: \mathrm{BN}(W * x + b) = (sW) * x + \big(s(b - \mu) + \beta\big),
          \qquad s = \gamma / \sqrt{\sigma^2 + \epsilon},

so the pair is one convolution with scaled weights (Ioffe & Szegedy 2015, arXiv:1502.03167;
the folding used by every inference engine). On a CPU the batch norm is a separate memory-bound
pass over each feature map; without it ResNet-50 and EfficientNet-Lite0 forward in about 0.75×
the time (2-core AVX2 CPU, channels-last).

:func:`folded` never changes the user's model: it returns a *copy of the module tree* that
shares every parameter and buffer with the original (no weights are copied). Each folded
convolution computes its scaled weights during the call from the shared tensors, so the copy
holds nothing of its own between calls and follows the original's weights if they change.
Only pairs whose wiring is known are folded: a convolution followed by its batch norm inside an
``nn.Sequential``, and the ``conv``/``bn`` pairs of torchvision's ResNet blocks and timm's
EfficientNet/MobileNet blocks (their ``forward`` is read, not guessed). A folded batch norm checks
at run time that its input is its convolution's output; if the model is wired differently the
call raises :class:`FoldMismatch` and camlib runs the original model instead.
"""

from __future__ import annotations

import copy
import itertools
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FoldMismatch", "clear", "folded", "fold_pairs"]


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


class _FoldedConv(nn.Module):
    """``conv`` then ``bn`` (eval mode) as one convolution; weights scaled per call from the shared tensors."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn
        self.last: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        conv, bn = self.conv, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        w = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
        if (
            _MKLDNN
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and (
                isinstance(conv.padding, tuple)  # not "same"/"valid"
            )
        ):
            # oneDNN with the bias fused (PyTorch sends 1×1 convolutions to a GEMM that adds a bias in an
            # extra pass over the output, which is what folding saves)
            out = torch.mkldnn_convolution(x, w, shift, conv.padding, conv.stride, conv.dilation, conv.groups)
        else:
            out = F.conv2d(x, w, shift.to(w.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
        self.last = out
        return out


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


def _has_hooks(net: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
        for m in net.modules()
    )


_TWINS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], tuple[tuple, nn.Module | None]]] = (
    weakref.WeakKeyDictionary()
)


def _signature(net: nn.Module) -> tuple:
    """What a twin depends on: the module objects and the tensors' identities (not their values)."""
    mods = tuple(id(m) for m in net.modules())
    tensors = tuple(id(t) for t in itertools.chain(net.parameters(), net.buffers()))
    return mods, tensors


def folded(net: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    """An eval-mode copy of ``net``'s module tree with its conv → batch-norm pairs folded.

    Parameters and buffers are shared with ``net``, not copied; the folded weights are computed
    during each call. The pairs whose convolution is named in ``keep`` (a layer whose own output
    is wanted) stay as they are; a folded batch norm keeps its name, so a hook on it sees the same
    values as on the original (to float rounding). Returns ``net`` itself when there is nothing to
    fold, when any submodule is in training mode, or when ``net`` carries hooks (they would not see
    the folded modules). The copy of the tree is kept (weakly, keyed on ``net``) and rebuilt when a
    module or a parameter/buffer object of ``net`` is replaced; it holds no tensors of its own.
    """
    if any(m.training for m in net.modules()) or _has_hooks(net):
        return net
    keep, sig = tuple(keep), _signature(net)
    twins = _TWINS.setdefault(net, {})
    hit = twins.get(keep)
    if hit is not None and hit[0] == sig:
        return net if hit[1] is None else hit[1]
    pairs = [(c, b) for c, b in fold_pairs(net) if c not in keep]
    twin = None  # nothing to fold (a reference to net itself here would keep it alive)
    if pairs:
        shared = {id(t): t for t in itertools.chain(net.parameters(), net.buffers())}
        twin = copy.deepcopy(net, memo=shared)
        for conv_name, bn_name in pairs:
            conv, bn = twin.get_submodule(conv_name), twin.get_submodule(bn_name)
            new_conv = _FoldedConv(conv, bn)
            _set(twin, conv_name, new_conv)
            _set(twin, bn_name, _FoldedBN(new_conv, bn))
    if len(twins) >= 8:  # a few layers' twins per net (the explorer moves between layers)
        twins.clear()
    twins[keep] = (sig, twin)
    return net if twin is None else twin


def clear(twin: nn.Module) -> None:
    """Drop what a folded twin's convolutions remember of the last call (after an exception)."""
    for m in twin.modules():
        if isinstance(m, _FoldedConv):
            m.last = None


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
