"""camlib: class activation maps, small and tested.

The core functions are importable from the top level::

    import camlib
    model = camlib.load_model("efficientnet_lite0")
    x = model.preprocess(camlib.load_image("chelsea"))
    maps = camlib.cam(model, x)                      # (1, 7, 7)
    maps = camlib.scorecam(model.net, x, "bn2")      # or hirescam, xgradcam, layercam, ablationcam, eigencam
    maps = camlib.gradcam(vit, x, "blocks.10")      # a Vision Transformer's tokens, on the patch grid
    maps = camlib.attention_rollout(vit, x)         # (1, 14, 14) for timm's vit_tiny_patch16_224
    camlib.overlay(camlib.load_image("chelsea"), maps[0])

Submodules ``camlib.widgets``, ``camlib.synthetic`` and ``camlib.metrics`` load on
first use. Importing camlib does no work beyond importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .data import load_image, sample_names
from .device import get_device, setup
from .family import ablationcam, eigencam, fuse_layers, hirescam, layercam, scorecam, xgradcam
from .hooks import LayerError, capture, eval_mode, layer_names, resolve_layer
from .methods import CamError, cam, gradcam, gradcam_pp, guided_backprop, guided_gradcam, layer_gradients
from .models import LoadedModel, imagenet_classes, load_model, model_names
from .rollout import attention_rollout
from .viz import normalize, overlay, show_maps, upsample

__version__ = "0.1.0"

__all__ = [
    "CamError",
    "ablationcam",
    "attention_rollout",
    "eigencam",
    "fuse_layers",
    "hirescam",
    "layercam",
    "scorecam",
    "xgradcam",
    "LayerError",
    "LoadedModel",
    "cam",
    "capture",
    "eval_mode",
    "get_device",
    "gradcam",
    "gradcam_pp",
    "guided_backprop",
    "guided_gradcam",
    "imagenet_classes",
    "layer_gradients",
    "layer_names",
    "load_image",
    "load_model",
    "model_names",
    "normalize",
    "overlay",
    "resolve_layer",
    "sample_names",
    "setup",
    "show_maps",
    "upsample",
]

_LAZY = {"widgets", "synthetic", "metrics", "smallnet"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'camlib' has no attribute {name!r}")
