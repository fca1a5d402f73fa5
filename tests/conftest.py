"""Shared fixtures: the real model is loaded once per test session."""

from __future__ import annotations

import pytest
import torch

import camlib


@pytest.fixture(scope="session")
def real_model() -> camlib.LoadedModel:
    return camlib.load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def chelsea_x(real_model: camlib.LoadedModel) -> torch.Tensor:
    return real_model.preprocess(camlib.load_image("chelsea"))


@pytest.fixture
def map_calls():
    """``make(model, x, vit)``: every camlib function that makes a map, as name -> call(), on the small shapes
    net's ``features`` (``model``: the net or what load_model returns; ``vit`` for attention rollout)."""

    def make(model, x, vit) -> dict:
        net, q = camlib.hooks.as_module(model), {"progress": False}
        return {
            "cam": lambda: camlib.cam(model, x),
            "gradcam": lambda: camlib.gradcam(net, x, "features"),
            "gradcam_pp": lambda: camlib.gradcam_pp(net, x, "features"),
            "layer_gradients": lambda: camlib.layer_gradients(net, x, "features"),
            "guided_backprop": lambda: camlib.guided_backprop(net, x),
            "guided_gradcam": lambda: camlib.guided_gradcam(net, x, "features"),
            "hirescam": lambda: camlib.hirescam(net, x, "features"),
            "xgradcam": lambda: camlib.xgradcam(net, x, "features"),
            "layercam": lambda: camlib.layercam(net, x, "features"),
            "scorecam": lambda: camlib.scorecam(net, x, "features", **q),
            "ablationcam": lambda: camlib.ablationcam(net, x, "features", **q),
            "eigencam": lambda: camlib.eigencam(net, x, "features"),
            "attention_rollout": lambda: camlib.attention_rollout(vit, x),
        }

    return make
