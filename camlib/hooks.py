"""Forward hooks as context managers: capture a layer's output, safely.

Every context manager here removes its hooks and restores each submodule's
``training`` flag in a ``finally`` block, so an exception never leaves a model
changed. Gradients are taken with :func:`torch.autograd.grad` with respect to the
captured activation, never with module backward hooks (which break with in-place
ReLU, pytorch issue 61519) and never with ``loss.backward()`` (which fills every
parameter's ``.grad``).
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .tokens import Reshape

__all__ = [
    "LayerError",
    "resolve_layer",
    "eval_mode",
    "capture",
    "Capture",
    "layer_names",
    "logits_of",
    "forward_with_grad_at",
    "as_module",
    "check_batch",
    "fast_layout",
    "forward_fast",
    "forward_hooked",
    "hooked_modules",
    "captured",
    "logits_fast",
    "cpu_twin",
]

Layer = str | nn.Module
Output = Callable[[Any], Tensor] | None  # picks the logits from a tuple or dict output (see logits_of)


class LayerError(ValueError):
    """A layer name or module that is unknown, or whose output is not a feature map."""


def check_batch(x: Any) -> None:
    """Refuse what is not a batch of images ``(B, C, H, W)``, saying how to make one of a single image.

    Also an empty batch, integer pixels (a ``uint8`` image not yet preprocessed) and, on the CPU, NaN
    or infinite values: a map of them means nothing, and camlib's folded twin would not even give the
    model's NaN (oneDNN's fused ReLU turns NaN into 0). On a GPU the values are not checked, which
    would make every call wait for it.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a batch of images (B, C, H, W), got {got}; for one image use x[None].")
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch {tuple(x.shape)}: give at least one image.")
    if not x.is_floating_point():
        raise TypeError(
            f"x holds {x.dtype} values: the model takes a float batch, normalised as in training. "
            "Build it with model.preprocess(image) (camlib.load_model), or x.float() / 255 and your normalisation."
        )
    if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"x has NaN or infinite values (image {bad[0]} of {x.shape[0]}, {len(bad)} in all).")


def as_module(model: Any) -> nn.Module:
    """The ``nn.Module`` of ``model``: the module itself, or ``model.net`` for a :class:`camlib.LoadedModel`.

    Raises:
        TypeError: neither, with what was given.
    """
    if isinstance(model, nn.Module):
        return model
    net = getattr(model, "net", None)
    if isinstance(net, nn.Module):
        return net
    raise TypeError(
        f"Expected a network (torch.nn.Module) or what camlib.load_model returns, got {type(model).__name__}."
    )


def resolve_layer(net: nn.Module, layer: Layer) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a layer given by dotted name or module.

    Raises:
        LayerError: unknown name (the message lists the nearest names) or a module
            that is not part of ``net``.
        TypeError: neither a name nor a module.
    """
    net = as_module(net)
    if not isinstance(layer, str | nn.Module):
        raise TypeError(f"layer must be a dotted name such as 'layer4' or a module of the net, got {layer!r}.")
    if isinstance(layer, str):
        try:  # the common case, without walking the whole net
            return layer, net.get_submodule(layer)
        except AttributeError:
            pass
    modules = dict(net.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name, module
        raise LayerError(f"{type(layer).__name__} is not a submodule of {type(net).__name__}.")
    if layer in modules:
        return layer, modules[layer]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(str(layer), names, n=5, cutoff=0.4)
    if not near:
        near = [n for n in names if n.startswith(str(layer).split(".")[0])][:5]
    hint = f" Nearest names: {', '.join(near)}." if near else ""
    raise LayerError(
        f"No layer named {layer!r} in {type(net).__name__}.{hint} "
        "camlib.layer_names(net) lists the layers that output a feature map."
    )


def modules(net: nn.Module) -> list[nn.Module]:
    """Every module of ``net`` once, ``net`` first, level by level: the modules of ``net.modules()``
    in 0.4× its time (no generator per level). Every camlib call walks the model; at batch 1 on a GPU
    the forward waits for that walk."""
    out, seen, i = [net], {id(net)}, 0
    while i < len(out):
        for child in out[i]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                out.append(child)
        i += 1
    return out


@contextlib.contextmanager
def eval_mode(net: nn.Module, eval: bool = True) -> Iterator[nn.Module]:
    """Put ``net`` in eval mode (if ``eval``) and restore every submodule's flag after.

    A net already in eval mode is left alone, and only flags that differ are written back, so
    the usual call costs one walk over the modules.
    """
    net = as_module(net)
    flags = [(m, m.training) for m in modules(net)]
    try:
        if eval and any(flag for _, flag in flags):
            net.eval()
        yield net
    finally:
        for module, flag in flags:
            if module.training != flag:
                module.training = flag


class Capture:
    """What :func:`capture` records: ``.activation`` after a forward (a detached copy)."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module
        self.activation: Tensor | None = None

    def __repr__(self) -> str:
        shape = None if self.activation is None else tuple(self.activation.shape)
        return f"Capture(layer={self.name!r}, activation={shape})"


@contextlib.contextmanager
def capture(net: nn.Module, layer: Layer, eval: bool = True) -> Iterator[Capture]:
    """Record a layer's output during forwards inside the ``with`` block.

    >>> with capture(net, "layer4") as cap:   # doctest: +SKIP
    ...     logits = net(x)
    >>> cap.activation.shape                 # doctest: +SKIP
    torch.Size([1, 512, 7, 7])

    The model is put in eval mode (unless ``eval=False``); on exit the hook is
    removed and every submodule's train/eval flag restored, even after an exception.
    """
    net = as_module(net)
    name, module = resolve_layer(net, layer)
    cap = Capture(name, module)

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        # a copy: an in-place op after the layer (ReLU(inplace=True), ``out += identity``
        # in a ResNet block) would otherwise change the recorded activation
        cap.activation = out.detach().clone() if isinstance(out, Tensor) else out

    with eval_mode(net, eval):
        handle = module.register_forward_hook(hook)
        try:
            yield cap
        finally:
            handle.remove()


def _example_input(net: nn.Module, size: int | tuple[int, int]) -> Tensor:
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else 3
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    h, w = (size, size) if isinstance(size, int) else size
    return torch.zeros(1, channels, h, w, device=device)


def layer_names(
    net: nn.Module, size: int | tuple[int, int] | None = None, x: Tensor | None = None, max_depth: int | None = None
) -> list[str]:
    """Dotted names of the layers :func:`camlib.gradcam` can take, in forward order: those whose output
    is a spatial feature map, or tokens that fold into a patch grid.

    A feature map is a 4-D tensor ``(B, C, h, w)`` with ``h * w > 1``; not one inside an attention
    (a module with ``num_heads``), whose 4-D tensors are per head, ``(B, heads, tokens, width)``.
    Tokens ``(B, N, C)`` count where camlib finds their grid by itself (a Vision Transformer's
    blocks, :func:`camlib.tokens.token_grid`) and they are the token stream (not an attention's
    q/k/v projection, nor an MLP's wider hidden layer); a model whose grid camlib cannot tell
    needs ``reshape=`` in :func:`camlib.gradcam`, and its token layers are not listed. One forward
    pass on ``x`` (default: zeros of ``size``: a :class:`camlib.LoadedModel`'s input size, else
    224) finds them; hooks are removed after. A module called more than once per forward (a ReLU
    shared inside a ResNet block, ``layer1.0.relu``) is left out: its output is not one map, and
    :func:`camlib.gradcam` refuses it. ``max_depth`` keeps names with at most that many dots
    (``1``: ``"blocks.3"``, ``"layer4"``), handy for a dropdown.
    """
    if size is None:
        size = getattr(net, "input_size", 224)
    net = as_module(net)
    x = _example_input(net, size) if x is None else x
    calls: dict[str, list[bool]] = {}  # name -> one flag per call: was the output a map Grad-CAM takes?
    handles = []

    def make(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            spatial = isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1
            spatial = spatial and _attention_of(net, name) is None
            calls.setdefault(name, []).append(spatial or _foldable_tokens(net, name, module, out, x))

        return hook

    with eval_mode(net), torch.no_grad():
        try:
            for name, module in net.named_modules():
                if name and (max_depth is None or name.count(".") <= max_depth):
                    handles.append(module.register_forward_hook(make(name, module)))
            net(x)
        finally:
            for h in handles:
                h.remove()
    return [name for name, flags in calls.items() if flags == [True]]


def _attention_of(net: nn.Module, name: str) -> str | None:
    """The name of the attention module (one with ``num_heads``: timm's ``Attention``,
    ``nn.MultiheadAttention``) that layer ``name`` sits inside, or None."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the layer's ancestors, not the layer, not the model
        prefix = ".".join(parts[:i])
        if hasattr(net.get_submodule(prefix), "num_heads"):
            return prefix
    return None


def _foldable_tokens(net: nn.Module, name: str, module: nn.Module, out: Any, x: Tensor) -> bool:
    """``out`` is tokens ``(B, N, C)`` that gradcam folds into a map by itself (:func:`_token_fold`)."""
    from . import tokens

    if not (isinstance(out, Tensor) and out.dim() == 3 and out.shape[1] > 1):  # gradcam's test for tokens
        return False
    try:
        _token_fold(net, name, module, out, x, None)
    except tokens._Error:
        return False
    return True


def logits_of(out: Any, output: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The ``(B, num_classes)`` logits from a model's output.

    ``output`` picks them from a tuple/dict output (e.g. ``lambda o: o["logits"]``).
    """
    if output is not None:
        out = output(out)
    if isinstance(out, Tensor):
        if out.dim() != 2:
            raise ValueError(
                f"The model returned a tensor of shape {tuple(out.shape)}; expected logits (B, num_classes)."
            )
        return out
    kind = type(out).__name__
    raise TypeError(
        f"The model's forward returned a {kind}, not a logits tensor. Pass output=... to pick the "
        "logits, e.g. output=lambda o: o[0] or output=lambda o: o['logits']."
    )


def _shrunk_to_one(module: nn.Module, inp: Any, out: Any) -> bool:
    """True when a layer that is not a pooling took a larger map down to 1×1: the input is too small."""
    first = inp[0] if isinstance(inp, tuple) and inp and isinstance(inp[0], Tensor) else None
    return (
        isinstance(out, Tensor)
        and out.dim() == 4
        and out.shape[-2] * out.shape[-1] == 1
        and first is not None
        and first.dim() == 4
        and first.shape[-2] * first.shape[-1] > 1
        and "Pool" not in type(module).__name__
    )


def fast_layout(x: Tensor) -> Tensor:
    """``x`` with the strides the convolutions are fastest with: channels-last for a 4-D CPU batch, and
    for a CUDA batch under autocast (``amp=True``), there also in autocast's dtype.

    oneDNN's NHWC kernels ran a forward in 0.67–0.75× the time of the same forward on the
    contiguous batch (ResNet-50 batch 8, EfficientNet-Lite0 batch 16, 2-core AVX2 CPU). Under
    bfloat16 autocast on an H100 cuDNN's tensor-core kernels want NHWC too: Grad-CAM at batch 256
    took 0.65× the time on EfficientNet-Lite0 and 0.75× on ResNet-50 (no ``x``-sized float32 copy:
    the first convolution would cast the batch to bfloat16 anyway). The values are the same, only
    the memory layout differs, and the model is not touched (its weights are reordered by the
    convolution, per call). Otherwise (float32 on CUDA, MPS) ``x`` is returned as is.
    """
    if x.dim() != 4:
        return x
    if x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)  # x itself when it already is
    if _CUDA_AMP_CHANNELS_LAST and x.is_cuda and torch.is_autocast_enabled("cuda") and x.dtype == torch.float32:
        return x.to(dtype=torch.get_autocast_dtype("cuda"), memory_format=torch.channels_last)
    return x


_CUDA_AMP_CHANNELS_LAST = True  # switches, for an A/B on a GPU
_CUDA_TWIN = True
_CUDA_TWIN_MIN_BATCH = {False: 16, True: 128}  # float32, autocast; crossovers measured, see cpu_twin


def cpu_twin(
    net: nn.Module, x: Tensor, keep: tuple[str, ...] = (), amp: bool | None = None, batch: int | None = None
) -> nn.Module:
    """The model a batch ``x`` runs through: ``net`` with its batch norms folded into the convolutions
    before them (:func:`camlib.fold.folded`, parameters shared, ``keep`` left as is), or ``net`` itself.

    On the CPU always (the batch norm is a memory-bound pass there). On CUDA only where cuDNN fuses
    the folded convolution with its bias and ReLU (ResNets; not the ReLU6 of EfficientNet-Lite0) and
    the batch is large enough for the GPU, not Python, to set the pace: from 16 images in float32,
    from 128 under autocast (``amp``; ``None``: whether autocast is on now); ``batch``: the images per
    forward when they are not ``x``'s (Score-CAM, ROAD: chunks of ``batch_size``). Measured on an H100,
    ResNet-50 at 224 px, Grad-CAM with the twin against without: batch 8 1.39× the time, 16 0.95×,
    64 0.86×, 256 0.78×; under bfloat16 autocast batch 64 1.11×, 256 0.67×. On MPS never.
    """
    if x.device.type == "cpu":
        from .fold import folded

        return folded(net, keep)
    if amp is None:  # the forward will run under CUDA autocast
        amp = x.is_cuda and torch.is_autocast_enabled("cuda")
    batch = x.shape[0] if batch is None else batch
    if not (_CUDA_TWIN and x.is_cuda and x.dim() == 4 and batch >= _CUDA_TWIN_MIN_BATCH[amp]):
        return net
    from .fold import folded, fused_relu

    twin = folded(net, keep)
    return twin if fused_relu(twin) else net


def forward_fast(
    net: nn.Module, x: Tensor, before_retry: Callable[[], None] | None = None, twin: nn.Module | None = None
) -> Any:
    """``net(x)`` on the :func:`fast_layout` of ``x``; a model that cannot take it is run on ``x`` as given.

    A forward that calls ``.view`` on a channels-last feature map fails ("view size is not
    compatible"); it is then run again on ``x`` itself (``before_retry`` resets what hooks stored).
    ``twin`` (from :func:`cpu_twin`) is run instead of ``net`` when given; if its folding turns out
    not to match the model's wiring (:class:`camlib.fold.FoldMismatch`), ``net`` is run.
    """
    from .fold import FoldMismatch, clear

    fast = fast_layout(x)
    inputs = [fast, x] if fast is not x else [x]
    models = [twin, net] if twin is not None and twin is not net else [net]
    first = True
    for model in models:
        for inp in inputs:
            if not first and before_retry is not None:
                before_retry()
            first = False
            try:
                return model(inp)
            except FoldMismatch:
                break
            except RuntimeError as err:
                if "view size is not compatible" not in str(err) or inp is inputs[-1]:
                    raise
            finally:
                if model is not net:
                    clear(model)
    raise AssertionError("unreachable: the last model's errors propagate")


def hooked_modules(net: nn.Module, twin: nn.Module, name: str) -> list[nn.Module]:
    """Layer ``name`` of ``net``, and of its twin (:func:`cpu_twin`) where the twin has a copy of it: a hook
    goes on each, once (the twin shares the modules it does not fold)."""
    own = net.get_submodule(name)
    other = twin.get_submodule(name)
    return [own] if other is own else [own, other]


def forward_hooked(
    net: nn.Module,
    x: Tensor,
    hooks: dict[str, Callable[..., Any]],
    before_retry: Callable[[], None] | None = None,
) -> Any:
    """:func:`forward_fast` through the twin (:func:`cpu_twin`, the hooked layers kept as they are),
    with ``hooks`` (layer name -> forward hook) on those layers of ``net`` and of the twin; the hooks are
    removed after, even after an exception. The twin is looked up before the hooks go on: a hooked
    model is not folded. Under CUDA autocast the twin is the one for autocast (:func:`cpu_twin`).
    """
    twin = cpu_twin(net, x, keep=tuple(hooks))
    handles = []
    try:
        for name, hook in hooks.items():
            handles += [m.register_forward_hook(hook) for m in hooked_modules(net, twin, name)]
        return forward_fast(net, x, before_retry=before_retry, twin=twin)
    finally:
        for handle in handles:
            handle.remove()


def captured(
    net: nn.Module, x: Tensor, layer: Layer, output: Callable[[Any], Tensor] | None = None
) -> tuple[Capture, Tensor]:
    """``(capture, logits)`` of one forward of ``x`` without gradients, in eval mode (flags restored):
    what :func:`capture` records around ``net(x)``, but through :func:`forward_hooked` (on the CPU the
    folded twin, channels-last: the same values to float rounding; Eigen-CAM's call took 0.8× the time of
    a plain forward on EfficientNet-Lite0 and ResNet-50, ``benchmarks/bench_cam.py``).

    Raises:
        LayerError: as :func:`forward_with_grad_at`: the layer's output is neither a feature map
            ``(B, C, h, w)`` with ``h * w > 1`` nor tokens ``(B, N, C)``, or the layer runs twice or never.
    """
    net = as_module(net)
    name, module = resolve_layer(net, layer)
    cap = Capture(name, module)

    def hook(_mod: nn.Module, inp: Any, out: Any) -> None:  # the checks of the gradient methods' hook
        if _shrunk_to_one(module, inp, out):
            raise _too_small(name, x)
        if not (isinstance(out, Tensor) and _is_tokens(out)):
            _check_map(net, name, out)
        if cap.activation is not None:
            raise _twice(name)
        cap.activation = out.detach().clone()  # see capture

    with eval_mode(net), torch.no_grad():
        out = forward_hooked(net, x, {name: hook}, before_retry=lambda: setattr(cap, "activation", None))
    if cap.activation is None:
        raise _not_called(name)
    return cap, logits_of(out, output)


def logits_fast(
    net: nn.Module,
    x: Tensor,
    amp: torch.dtype | None = None,
    output: Callable[[Any], Tensor] | None = None,
    twin: nn.Module | None = None,
) -> Tensor:
    """The logits of a forward of ``x`` without gradients, through :func:`forward_fast` (on the CPU the
    folded twin, :func:`cpu_twin`, unless ``twin`` is given); for the many forwards of Score-CAM,
    the deletion/insertion curves and ROAD.

    ``amp`` (``torch.bfloat16`` or ``torch.float16``) runs the forward under :func:`torch.autocast`
    (on CUDA channels-last in that dtype, :func:`fast_layout`) and returns float32 logits; if any is
    not finite (float16 overflow) the batch is run again in float32, with a warning.
    """
    if amp is None:
        return logits_of(forward_fast(net, x, twin=cpu_twin(net, x, amp=False) if twin is None else twin), output)
    with torch.autocast(x.device.type, dtype=amp):
        model = cpu_twin(net, x, amp=True) if twin is None else twin
        out = logits_of(forward_fast(net, x, twin=model), output).float()
    if bool(out.isfinite().all()):
        return out
    warnings.warn(f"non-finite logits in {amp}; this batch recomputed in float32.", stacklevel=2)
    return logits_of(forward_fast(net, x, twin=cpu_twin(net, x, amp=False)), output)


def forward_with_grad_at(
    net: nn.Module,
    x: Tensor,
    layer: Layer,
    output: Callable[[Any], Tensor] | None = None,
    amp: torch.dtype | None = None,
    reshape: Reshape = None,
) -> tuple[Tensor, Tensor]:
    """Forward ``x`` and return ``(A, logits)`` where ``A`` is the layer's output as a
    leaf that requires grad, so ``torch.autograd.grad(score, A)`` gives ``dscore/dA``.

    Everything upstream of the layer runs under ``no_grad`` (nothing is kept for
    backward there: the memory of a plain inference forward); the graph starts at
    ``A``. A clone of ``A`` flows on, so an in-place op right after the layer (ReLU
    with ``inplace=True``) cannot change the captured activation. Call inside
    :func:`eval_mode`; works inside ``torch.no_grad()`` / ``torch.inference_mode()`` too.
    On the CPU the batch runs channels-last through the batch-norm-folded twin of ``net``
    (:func:`forward_fast`, :func:`cpu_twin`). ``amp`` (``torch.bfloat16``
    or ``torch.float16``) runs the forward under :func:`torch.autocast` with that dtype; ``A``
    and the logits then come in the reduced precision.

    A layer that outputs tokens ``(B, N, C)`` (a Vision Transformer's block) gives ``A`` as the
    patch tokens folded into their grid ``(B, C, h, w)`` (:mod:`camlib.tokens`): the grid from
    ``reshape=`` (``(h, w)``, or a callable ``tokens -> (B, C, h, w)`` that only selects and
    rearranges), else from the model (timm's ``patch_embed`` and ``num_prefix_tokens``). The
    forward goes on with the tokens rebuilt from ``A`` (the class token as it was).

    Raises:
        LayerError: the layer's output is not a spatial feature map ``(B, C, h, w)``
            with ``h * w > 1`` nor tokens whose grid is known, the layer is not called, or it
            is called twice.
        TypeError: the model returns a tuple/dict and no ``output=`` picks the logits.
    """
    net = as_module(net)
    name, module = resolve_layer(net, layer)
    store: dict[str, Tensor] = {}

    def hook(_mod: nn.Module, inp: Any, out: Any) -> Tensor:
        if _shrunk_to_one(module, inp, out):
            raise _too_small(name, x)
        if isinstance(out, Tensor) and (callable(reshape) or _is_tokens(out)):
            return _tokens_leaf(net, name, module, out, x, reshape, store)
        _check_map(net, name, out)
        if "A" in store:
            raise _twice(name)
        store["A"] = out.detach().requires_grad_(True)
        torch.set_grad_enabled(True)  # the rest of the forward builds a graph from A
        return store["A"].clone()

    def reset() -> None:  # before a retry on the contiguous batch: nothing stored, upstream without a graph
        store.clear()
        torch.set_grad_enabled(False)

    if reshape is not None and not callable(reshape) and not isinstance(reshape, (int, tuple, list)):
        raise TypeError(f"reshape must be (h, w), an int or a callable, got {type(reshape).__name__}.")
    autocast = torch.autocast(x.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    with torch.inference_mode(False), torch.no_grad(), autocast:
        out = forward_hooked(net, x, {name: hook}, before_retry=reset)
    if "A" not in store:
        raise _not_called(name)
    return store["A"], logits_of(out, output)


def _is_tokens(out: Tensor) -> bool:
    """A token output ``(B, N, C)`` with more than one token."""
    return out.dim() == 3 and out.shape[1] > 1


def _check_map(net: nn.Module, name: str, out: Any) -> None:
    """Refuse a layer output that is not a spatial feature map ``(B, C, h, w)`` with ``h * w > 1``."""
    attention = _attention_of(net, name) if isinstance(out, Tensor) and out.dim() == 4 else None
    if attention is not None:
        raise LayerError(
            f"Layer {name!r} sits inside the attention {attention!r}: its output {tuple(out.shape)} is per "
            "head (B, heads, tokens, width), not a feature map. Take the block's output or its norm1 "
            f"(tokens), e.g. {attention.rsplit('.', 1)[0]!r}; camlib.layer_names(net, x=x) lists them."
        )
    if not (isinstance(out, Tensor) and out.dim() == 4 and out.shape[-2] * out.shape[-1] > 1):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise LayerError(
            f"Layer {name!r} outputs {shape}, not a spatial feature map (B, C, h, w) with h * w > 1. "
            "Pick a convolutional layer before global pooling; camlib.layer_names(net) lists them."
        )


def _too_small(name: str, x: Tensor) -> LayerError:
    return LayerError(
        f"Layer {name!r} outputs a 1×1 map for this {x.shape[-2]}×{x.shape[-1]} input: the input is "
        "too small for a map at this layer. Give a larger input (e.g. the 224×224 the net was "
        "trained on) or an earlier layer; camlib.layer_names(net, x=x) lists those with a map."
    )


def _twice(name: str) -> LayerError:
    return LayerError(f"Layer {name!r} runs more than once per forward; pick a layer used once.")


def _not_called(name: str) -> LayerError:
    return LayerError(f"Layer {name!r} was not called in the forward pass; pick a layer the model uses.")


def _token_fold(
    net: nn.Module, name: str, module: nn.Module, out: Tensor, x: Tensor, reshape: Reshape
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``(fold, grid)`` for a token output: how it folds into a map and the map ``(B, C, h, w)``, ``h * w > 1``.

    Raises:
        camlib.tokens._Error: why it does not fold (a q/k/v projection, no grid, not a map).
    """
    from . import tokens

    if callable(reshape):
        fold: Callable[[Tensor], Tensor] = reshape
    else:
        why = tokens.qkv_like(module, name, out, net) if out.dim() == 3 else None
        if why is not None:
            raise tokens._Error(why)
        if out.dim() != 3:
            raise tokens._Error(f"it outputs {tuple(out.shape)}; reshape=(h, w) is for tokens (B, N, C).")
        fold = tokens.token_grid(net, out, x, reshape)
    grid = fold(out.detach())
    if not (isinstance(grid, Tensor) and grid.dim() == 4 and grid.shape[-2] * grid.shape[-1] > 1):
        got = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise tokens._Error(f"reshape= folds its output into {got}, not a map (B, C, h, w) with h * w > 1.")
    return fold, grid


def _tokens_leaf(
    net: nn.Module, name: str, module: nn.Module, out: Tensor, x: Tensor, reshape: Reshape, store: dict[str, Tensor]
) -> Tensor:
    """The hook's work for a token output: ``store["A"]`` = the grid as a leaf; returns tokens built from it."""
    from . import tokens

    if "A" in store:
        raise _twice(name)
    try:
        fold, grid = _token_fold(net, name, module, out, x, reshape)
        store["A"] = grid.detach().contiguous().requires_grad_(True)
        torch.set_grad_enabled(True)  # the rest of the forward builds a graph from A
        return tokens.from_grid(out.detach(), fold, store["A"])
    except tokens._Error as err:
        raise LayerError(f"Layer {name!r}: {err}") from None
