"""An interactive explorer of class activation maps: class, layer and method controls that feel instant.

``Explorer(model, image)`` shows one photo with a heat map on top and four controls: the class
(top predictions first, plus a search box over all class names), the layer (a short list of
dotted names from :func:`camlib.layer_names`), the method ("CAM", "Grad-CAM", "Grad-CAM++",
"Counterfactual") and the heat map's opacity. Every control updates the picture synchronously in
its observer, so code (and tests) can set ``ex.class_control.value = 285`` and read
``ex.current_map`` right after; ``current_map`` equals the corresponding camlib call
(:func:`camlib.cam` at the feature layer, :func:`camlib.gradcam`, :func:`camlib.gradcam_pp`,
``gradcam(..., counterfactual=True)``). To feel instant, what does not change when a control moves
is cached: the CAM of every class is one einsum over the feature layer; per layer one forward pass
keeps the activations and the graph above the layer, so a new class costs one backward through the
top of the network, and each (layer, class) gradient is computed once. The picture is an
``ipywidgets.Image`` holding JPEG (or PNG) bytes of :func:`camlib.overlay`'s result (computed
with its colormap table kept, on one thread), so no matplotlib figure is redrawn and nothing
beyond core ipywidgets (7.7 on Colab, 8.x elsewhere) is needed. On a CPU that other processes
keep busy, ``Explorer(..., threads=1)`` makes every move several times faster.

>>> ex = Explorer(camlib.load_model("efficientnet_lite0"), "chelsea")  # doctest: +SKIP
>>> ex  # the last expression of a cell displays the widget            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data import load_image
from .family import hirescam_map, layercam_map, xgradcam_weights
from .hooks import LayerError, eval_mode, forward_with_grad_at, layer_names, resolve_layer
from .methods import cam, gradcam_pp_weights, gradcam_weights, pooled_features, weighted_map
from .targets import is_single

__all__ = ["METHODS", "Explorer", "default_layers", "encode"]

_MIN_SIDE = 256  # px: smaller pictures are shown enlarged
METHODS = ("CAM", "Grad-CAM", "Grad-CAM++", "Counterfactual", "HiResCAM", "XGrad-CAM", "LayerCAM")


def default_layers(model: Any) -> list[str]:
    """A short list of layers for a dropdown: the net's top-level stages plus the feature layer.

    From ``layer_names(net, max_depth=1)`` it drops containers whose numbered children are listed
    (``"blocks"`` when ``"blocks.0"`` ... are) and pieces of a listed layer (``"bn1.act"`` when
    ``"bn1"`` is), then appends ``model.feature_layer`` if missing. EfficientNet-Lite0:
    ``conv_stem, bn1, blocks.0 ... blocks.6, conv_head, bn2``.
    """
    names = layer_names(model, max_depth=1)  # a LoadedModel: at its own input size
    listed = set(names)
    keep = []
    for n in names:
        parent, _, last = n.rpartition(".")
        if any(m.startswith(n + ".") and m[len(n) + 1 :].isdigit() for m in listed):
            continue  # a container of listed numbered stages
        if parent in listed and not last.isdigit():
            continue  # an inner piece of a listed layer
        keep.append(n)
    if model.feature_layer not in keep:
        keep.append(model.feature_layer)
    return keep


def _gap_head(model: Any, x: Tensor) -> tuple[Tensor, Tensor] | str:
    """:func:`camlib.methods.pooled_features` at the model's feature layer, or why the model has no
    global-average-pooling + linear head there (a Vision Transformer's class-token head)."""
    from .methods import CamError

    try:
        return pooled_features(model.net, x, model.feature_layer, model.fc)
    except CamError as err:
        return str(err)


def _logits(net: Any, x: Tensor) -> Tensor:
    """The logits of one forward without gradients, in eval mode (flags restored)."""
    from .hooks import logits_fast

    with eval_mode(net), torch.no_grad():
        return logits_fast(net, x)


def encode(rgb: np.ndarray, fmt: str = "jpeg") -> bytes:
    """An ``(H, W, 3)`` uint8 array as JPEG (quality 90: ~0.5 ms for 360 px) or PNG (fast zlib level) bytes."""
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class Explorer:
    r"""Class / layer / method / opacity controls over one image, with a heat map that follows.

    Args:
        model: what :func:`camlib.load_model` returns (``.net``, ``.classes``, ``.feature_layer``,
            ``.fc``, ``.preprocess``), or a model name for it; a bare ``nn.Module`` is a TypeError
            (wrap it: ``camlib.LoadedModel(name, net, classes, feature_layer, fc)``).
        image: a PIL image, a path or a sample name (``"chelsea"``).
        layers: dotted layer names for the layer control (default: :func:`default_layers`).
            The feature layer is added when "CAM" is among the methods.
        methods: a subset of ``METHODS`` (default: all seven, in that order; HiResCAM, XGrad-CAM
            and LayerCAM reuse the cached activations and gradients, as Grad-CAM does). A model
            without a global-average-pooling + linear head at its feature layer (a Vision
            Transformer with a class-token head, ``"small_vit_shapes"``) has no CAM: the default
            leaves it out, asking for it raises; its token layers (``"blocks.2"``) work with the rest.
        layer, method, target: initial values (default: the feature layer, the first method,
            the top-1 class); ``target`` is a class index (an int).
        alpha: initial opacity of the heat map; ``top``: how many predictions head the class list;
        size: input size for :meth:`model.preprocess`; ``max_side``: longest side of the picture (a
        picture under 256 px is enlarged by a whole factor, each pixel a block, to at least that);
        ``image_format``: "jpeg" (default; encodes in well under a millisecond) or "png" (lossless,
        ~10 ms at 360 px); ``threads``: torch CPU threads while a move is computed, restored after
        (default ``None``: torch's setting, so ``current_map`` equals the camlib call bit for bit, unless
        a hook was on the model during one of the two forwards: a hooked model runs without batch-norm
        folding (:mod:`camlib.fold`) and agrees to float rounding;
        ``threads=1`` is several times faster when other processes keep the cores busy, because
        the work per move is small and a second thread mostly waits for a busy core, but sums
        then run in another order, so maps equal the camlib call to rounding, not bit for bit:
        measured on AVX2 and SSE4.1, CAM and Grad-CAM within 4e-6 of the map's maximum at
        ``bn2`` and ``blocks.4`` (up to 4e-3 at ``blocks.2`` and ``conv_stem``, where float32
        gradients are only good to ~1% anyway), Grad-CAM++ within 3e-3 at ``blocks.4`` (0.9%
        on AVX-512) and up to 27% at ``conv_stem``, because its weights divide by
        :math:`2g^2 + \sum A\,g^3`, which can be near 0; see ``tests/test_widgets.py``);
        ``max_bytes``: a bound on what the caches hold (gradients, activations and the graph
        above the current layer), default 256 MiB; the least recently used is dropped first,
        and a graph larger than half of it is not kept (a class move then costs a forward).

    Creating an Explorer over the same net and the same image as a live one (re-running a
    notebook cell) closes the older one: its widgets, observers and caches are freed
    (``replace=False`` keeps both). Call :meth:`close` to free one yourself.

    Attributes:
        class_control, layer_control, method_control, opacity_control: the widgets;
        search_control: a combobox over all class names that sets ``class_control``;
        image_widget: the ``ipywidgets.Image`` with the picture shown; current_map: the raw
        ``(h, w)`` map shown (``None`` when nothing is, e.g. "CAM" at another layer);
        message: the status line; widget: the container to display; cache_bytes: what the
        caches hold now (at most ``max_bytes``); closed: whether :meth:`close` ran.
    """

    _live: ClassVar[weakref.WeakValueDictionary[Hashable, Explorer]] = weakref.WeakValueDictionary()

    def __init__(
        self,
        model: Any,
        image: Any,
        layers: Sequence[str] | None = None,
        methods: Sequence[str] | None = None,
        *,
        layer: str | None = None,
        method: str | None = None,
        target: int | None = None,
        alpha: float = 0.5,
        top: int = 5,
        size: int | tuple[int, int] | None = None,
        max_side: int = 360,
        cmap: str = "jet",
        image_format: str = "jpeg",
        threads: int | None = None,
        max_bytes: int = 256 * 2**20,
        replace: bool = True,
    ) -> None:
        import ipywidgets as w

        _check_numbers(alpha=alpha, top=top, max_side=max_side, threads=threads, max_bytes=max_bytes)
        target = _class_index(target)
        if isinstance(model, torch.nn.Module):
            raise TypeError(
                f"Explorer needs a model with its class names and head, not a bare {type(model).__name__}: pass "
                "camlib.load_model(...) (or a model name), or build one with camlib.LoadedModel(name, net, classes, "
                "feature_layer, fc) (fc: the nn.Linear after global average pooling)."
            )
        model_key = model if isinstance(model, str) else None
        if isinstance(model, str):
            from .models import load_model

            model = load_model(model)
        self.model = model
        self.net = model.net
        self.threads = threads
        self.max_bytes = max_bytes
        self.closed = False
        self.cmap = cmap
        self.image = load_image(image)
        self.x = model.preprocess(self.image, size)
        picture = self.image.copy()
        picture.thumbnail((max_side, max_side), Image.BILINEAR)
        if max(picture.size) < _MIN_SIDE:  # a 64-px shapes image: enlarged pixel by pixel, not a stamp
            k = math.ceil(_MIN_SIDE / max(picture.size))
            picture = picture.resize((picture.width * k, picture.height * k), Image.NEAREST)
        self.picture = picture
        self._picture_rgb = np.asarray(picture.convert("RGB"))
        self._painter = _Painter(self._picture_rgb, cmap)
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', not {image_format!r}.")
        self.image_format = image_format

        asked = methods is not None
        methods = list(METHODS if methods is None else methods)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"Unknown method(s) {bad}; choose among {list(METHODS)}.")
        layers = list(default_layers(model) if layers is None else layers)
        if "CAM" in methods and model.feature_layer not in layers:
            layers.append(model.feature_layer)
        self._check_layers(layers)
        head = _gap_head(model, self.x)  # a str: no GAP + linear head (a ViT's class-token head), so no CAM
        if isinstance(head, str) and "CAM" in methods:
            if asked:
                raise ValueError(
                    f"CAM is not available for this model and input: {head} Leave 'CAM' out of methods= "
                    "(the gradient methods work at any layer, a Vision Transformer's blocks too)."
                )
            methods.remove("CAM")
        _check_choice("layer", layer, layers)
        _check_choice("method", method, methods)

        # One forward at the feature layer: the logits and the CAM of every class (one einsum).
        feats, self.logits = (None, _logits(self.net, self.x)) if isinstance(head, str) else head
        self.probs = self.logits.softmax(dim=1)[0]
        if target is not None and not 0 <= target < self.probs.numel():
            raise ValueError(f"target must be a class index in 0..{self.probs.numel() - 1}, got {target!r}.")
        self._all_cams: Tensor | None = None
        if feats is not None:
            with torch.no_grad():
                self._all_cams = torch.einsum("ck,khw->chw", model.fc.weight.to(feats.dtype), feats[0])
        self._key = (model_key or id(self.net), self.image.size, hashlib.sha1(self.image.tobytes()).hexdigest())
        older = Explorer._live.get(self._key)
        if older is not None and replace:
            older.close()  # the same net and image: a re-run cell; free the old one
        Explorer._live[self._key] = self
        self._graph: tuple[str, Tensor, Tensor] | None = None  # (layer, A, logits) of the current layer
        self._graph_bytes = 0
        self._cache = _ByteCache()  # ("acts", layer) -> A, ("grad", layer, class) -> dy/dA; LRU
        self.current_map: Tensor | None = None

        classes = list(model.classes)
        labels = _unique_labels(classes)
        order = self.probs.argsort(descending=True).tolist()
        top_idx = order[:top]
        options = [(f"{labels[i]}  ({self.probs[i].item():.1%})", i) for i in top_idx]
        options += [(labels[i], i) for i in order[top:]]
        self._label_to_class = {lab: i for i, lab in enumerate(labels)}

        style = {"description_width": "initial"}
        self.class_control = w.Dropdown(
            options=options, value=top_idx[0] if target is None else target, description="class", style=style
        )
        self.search_control = w.Combobox(
            options=labels, placeholder="search all classes", ensure_option=True, description="", style=style
        )
        self.layer_control = w.Dropdown(
            options=layers,
            value=layer or (model.feature_layer if model.feature_layer in layers else layers[-1]),
            description="layer",
            style=style,
        )
        self.method_control = w.ToggleButtons(options=methods, value=method or methods[0], style=style)
        self.opacity_control = w.FloatSlider(
            value=alpha, min=0.0, max=1.0, step=0.05, description="opacity", readout_format=".2f", style=style
        )
        self.image_widget = w.Image(format=image_format, layout=w.Layout(width=f"{picture.width}px"))
        self.message = w.HTML()
        self.widget = w.VBox(
            [
                w.HBox([self.class_control, self.search_control]),
                w.HBox([self.layer_control, self.opacity_control]),
                self.method_control,
                self.image_widget,
                self.message,
            ]
        )
        self._observers = [(c, self._on_change) for c in (self.class_control, self.layer_control, self.method_control)]
        self._observers += [(self.opacity_control, self._on_opacity), (self.search_control, self._on_search)]
        for control, handler in self._observers:
            control.observe(handler, names="value")
        self.update()

    def _check_layers(self, layers: list[str]) -> None:
        """Every layer must output one spatial map at this input size (a wrong name lists the nearest)."""
        for name in layers:
            resolve_layer(self.net, name)
        valid = set(layer_names(self.net, x=self.x))
        bad = [name for name in layers if name not in valid]
        if bad:
            h, w = self.x.shape[-2:]
            raise LayerError(
                f"Layer(s) {bad} give no spatial feature map for this {h}×{w} input (a vector, a 1×1 map, or "
                "a module called more than once). camlib.layer_names(model.net, x=x), with x the image as the explorer "
                "feeds it, lists the layers that do; a larger size= may help."
            )

    def close(self) -> None:
        """Free the explorer: unregister its observers, close its widgets and empty its caches."""
        for control, handler in self._observers:
            control.unobserve(handler, names="value")
        for widget in _tree(self.widget):
            widget.close()
        self._cache.clear()
        self._graph, self._graph_bytes, self._all_cams, self.current_map = None, 0, None, None
        self.closed = True
        if Explorer._live.get(self._key) is self:
            del Explorer._live[self._key]

    @property
    def cache_bytes(self) -> int:
        """Bytes the caches hold: gradients, activations and the kept graph above the current layer."""
        return self._cache.nbytes + self._graph_bytes

    # ----------------------------------------------------------------- computing
    def _layer_graph(self, layer: str) -> tuple[Tensor, Tensor]:
        """Activations ``A`` of ``layer`` (a leaf that requires grad) and logits with a graph from A.

        One forward per layer change; the graph is kept (for the current layer only, if it
        takes at most half of ``max_bytes``) so a new class costs one backward through the
        part of the net above the layer.
        """
        if self._graph is not None and self._graph[0] == layer:
            return self._graph[1], self._graph[2]
        self._graph, self._graph_bytes = None, 0  # free the previous layer's graph first
        owned = {t.untyped_storage().data_ptr() for t in (*self.net.parameters(), *self.net.buffers())}
        saved: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in owned:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with eval_mode(self.net), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            acts, logits = forward_with_grad_at(self.net, self.x, layer)
        self._cache.put(("acts", layer), acts.detach())
        if sum(saved.values()) <= self.max_bytes // 2:
            self._graph, self._graph_bytes = (layer, acts, logits), sum(saved.values())
        return acts, logits

    def gradients(self, layer: str, target: int) -> tuple[Tensor, Tensor]:
        """``(A, dy_target/dA)`` at ``layer``, both ``(1, K, h, w)``; cached per (layer, class) within ``max_bytes``."""
        key, acts_key = ("grad", layer, target), ("acts", layer)
        g = self._cache.get(key)
        if g is None:
            acts, logits = self._layer_graph(layer)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(logits[0, target], acts, retain_graph=self._graph is not None)
            self._cache.put(key, g)
        if self._cache.get(acts_key) is None:
            self._layer_graph(layer)
        self._cache.trim(self.max_bytes - self._graph_bytes, keep={key, acts_key})
        return self._cache.get(acts_key), g

    def compute(self, method: str, layer: str, target: int) -> Tensor | None:
        """The raw ``(h, w)`` map for these control values (``None``: CAM away from the feature layer)."""
        if method == "CAM":
            if layer != self.model.feature_layer or self._all_cams is None:
                return None
            return self._all_cams[target]
        acts, g = self.gradients(layer, target)  # cached: every gradient method below reuses them
        if method == "HiResCAM":
            return torch.relu(hirescam_map(acts, g))[0]
        if method == "LayerCAM":
            return layercam_map(acts, g)[0]
        if method == "Grad-CAM++":
            weights = gradcam_pp_weights(acts, g)
        elif method == "XGrad-CAM":
            weights = xgradcam_weights(acts, g)
        else:
            weights = gradcam_weights(g, counterfactual=method == "Counterfactual")
        return weighted_map(weights, acts)[0]

    def reference(self) -> Tensor:
        """The same map as ``current_map`` computed from scratch by the camlib function (slow; for checks)."""
        from .methods import gradcam, gradcam_pp

        method, layer, c = self.method_control.value, self.layer_control.value, self.class_control.value
        if method == "CAM":
            return cam(self.model, self.x, c)[0]
        if method == "Grad-CAM++":
            return gradcam_pp(self.net, self.x, layer, c)[0]
        return gradcam(self.net, self.x, layer, c, counterfactual=method == "Counterfactual")[0]

    # ----------------------------------------------------------------- drawing
    def update(self) -> None:
        """Recompute ``current_map`` from the controls and redraw."""
        method, layer, c = self.method_control.value, self.layer_control.value, self.class_control.value
        self.current_map = self.compute(method, layer, c)
        name = self.model.classes[c]
        if self.current_map is None:
            self.message.value = (
                f"<b>CAM</b> exists only at the feature layer <code>{self.model.feature_layer}</code> "
                "(the one global average pooling reduces): pick that layer, or a gradient method "
                f"(Grad-CAM works at <code>{layer}</code>)."
            )
        else:
            h, w = self.current_map.shape
            self.message.value = (
                f"<b>{method}</b> for <b>{name}</b> (p = {self.probs[c].item():.3f}) "
                f"at <code>{layer}</code>, {h}×{w} map"
            )
            if not bool(self.current_map.any()):
                self.message.value += (
                    ": <b>zero everywhere</b>, nothing to show (no position at this layer has positive "
                    "evidence for the class; at a class-token ViT's last block none can: pick another layer)"
                )
        self.redraw()

    def redraw(self) -> None:
        """Encode the overlay (or the plain picture when there is no map) into the image widget."""
        if self.current_map is None:
            rgb = self._picture_rgb
        else:
            with _torch_threads(1):  # small per-pixel ops, same bits on any thread count, no waiting
                rgb = self._painter(self.current_map, self.opacity_control.value)
        self.image_widget.value = encode(rgb, self.image_format)

    def _on_change(self, _change: dict) -> None:
        with _torch_threads(self.threads):
            self.update()

    def _on_opacity(self, _change: dict) -> None:
        self.redraw()

    def _on_search(self, change: dict) -> None:
        c = self._label_to_class.get(change["new"])
        if c is not None:
            self.class_control.value = c

    # ----------------------------------------------------------------- display
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        repr_bundle = getattr(self.widget, "_repr_mimebundle_", None)
        return repr_bundle(**kwargs) if repr_bundle is not None else None

    def __repr__(self) -> str:
        return (
            f"Explorer(class={self.class_control.value}, layer={self.layer_control.value!r}, "
            f"method={self.method_control.value!r})"
        )


def _check_numbers(alpha: float, top: int, max_side: int, threads: int | None, max_bytes: int) -> None:
    """The numeric arguments of :class:`Explorer`, checked before any work."""
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha (the heat map's opacity) must be a number in [0, 1], got {alpha!r}.")
    for name, value, low in (("top", top, 1), ("max_side", max_side, 16), ("max_bytes", max_bytes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None (torch's setting) or a positive int, got {threads!r}.")


def _class_index(target: Any) -> int | None:
    """``target`` as a plain int (a numpy or 0-d tensor integer too), or ``None``; anything else is a TypeError."""
    if target is None:
        return None
    if not is_single(target):
        raise TypeError(f"target must be a class index (an int) or None (the top-1 class), got {target!r}.")
    return int(target)


def _check_choice(what: str, value: str | None, options: Sequence[str]) -> None:
    if value is not None and value not in options:
        raise ValueError(f"{what}={value!r} is not among the {what}s offered: {list(options)}.")


def _tree(widget: Any) -> Iterator[Any]:
    """``widget`` and every widget inside it (``children``), depth first."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _tree(child)


class _ByteCache:
    """Tensors by key, least recently used first out, their bytes counted."""

    def __init__(self) -> None:
        self.items: OrderedDict[Hashable, Tensor] = OrderedDict()
        self.nbytes = 0

    def get(self, key: Hashable) -> Tensor | None:
        t = self.items.get(key)
        if t is not None:
            self.items.move_to_end(key)
        return t

    def put(self, key: Hashable, t: Tensor) -> None:
        self.pop(key)
        self.items[key] = t
        self.nbytes += t.numel() * t.element_size()

    def pop(self, key: Hashable) -> None:
        t = self.items.pop(key, None)
        if t is not None:
            self.nbytes -= t.numel() * t.element_size()

    def trim(self, budget: int, keep: set[Hashable]) -> None:
        """Drop the least recently used entries, except those in ``keep``, until at most ``budget`` bytes."""
        for key in [k for k in self.items if k not in keep]:
            if self.nbytes <= budget:
                return
            self.pop(key)

    def clear(self) -> None:
        self.items.clear()
        self.nbytes = 0


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (``None``: as set), restoring the setting after."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Painter:
    """:func:`camlib.overlay` for one picture, bit for bit, with what does not change kept.

    ``overlay`` looks the colormap up and blends in float64 on every call; here the colormap's
    table and ``(1 - alpha) * image / 255`` (per opacity) are computed once, and the map is turned
    into table indices exactly as matplotlib does (``floor(x * N)``, clipped), so the result is
    identical to ``overlay(image, map, alpha, cmap)``.
    """

    def __init__(self, rgb: np.ndarray, cmap: str) -> None:
        import matplotlib

        if cmap not in matplotlib.colormaps:
            raise ValueError(f"Unknown colormap {cmap!r}; e.g. 'jet', 'viridis', 'inferno' (matplotlib.colormaps).")
        colormap = matplotlib.colormaps[cmap]
        self.n = colormap.N
        self.table = colormap(np.arange(self.n))[:, :3]
        self.rgb = rgb
        self._base: tuple[float, np.ndarray] | None = None

    def __call__(self, the_map: Tensor, alpha: float) -> np.ndarray:
        from .viz import normalize, upsample

        heat = normalize(upsample(the_map.detach().float(), self.rgb.shape[:2])).cpu().numpy()
        idx = np.clip((heat * self.n).astype(int), 0, self.n - 1)
        if self._base is None or self._base[0] != alpha:
            self._base = (alpha, (1 - alpha) * self.rgb / 255.0)
        mixed = self._base[1] + alpha * self.table[idx]
        return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def _unique_labels(classes: Sequence[str]) -> list[str]:
    """Class names, with ``" #index"`` appended where a name occurs more than once (ImageNet's two "crane")."""
    counts: dict[str, int] = {}
    for name in classes:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} #{i}" for i, name in enumerate(classes)]
