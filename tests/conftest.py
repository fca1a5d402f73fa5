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
