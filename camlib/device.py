"""Pick the compute device: CUDA, else Apple MPS, else CPU."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["get_device", "setup"]


def get_device() -> torch.device:
    """Return the best available device.

    Order: the ``CAMLIB_DEVICE`` environment variable if set (e.g. ``"cpu"``,
    ``"cuda:1"``), else CUDA, else MPS, else CPU.

    >>> get_device().type in {"cpu", "cuda", "mps"}
    True
    """
    forced = os.environ.get("CAMLIB_DEVICE", "").strip()
    if forced:
        try:
            return torch.device(forced)
        except RuntimeError as err:
            raise ValueError(
                f"CAMLIB_DEVICE={forced!r} is not a torch device; use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'."
            ) from err
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup(seed: int = 0) -> torch.device:
    """Start a notebook reproducibly: seed Python's, NumPy's and torch's generators,
    print and return the device (:func:`get_device`)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = get_device()
    print(f"camlib on {device.type}")
    return device
