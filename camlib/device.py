"""Pick the compute device: CUDA, else Apple MPS, else CPU."""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["get_device", "setup", "full_fp32", "exact", "amp_dtype"]

F = TypeVar("F", bound=Callable[..., Any])


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


def _precision_knobs() -> list[Any]:
    """The backends whose ``fp32_precision`` decides TF32 on CUDA (torch >= 2.9), else ``[]``."""
    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    knobs = [conv, matmul]
    return knobs if all(hasattr(k, "fp32_precision") for k in knobs) else []


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """Inside, CUDA convolutions and matrix products run in full float32 (no TF32).

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for float32 convolutions by default
    on Ampere and newer GPUs: fast, but maps then differ from the CPU's by percents
    (Grad-CAM 3.5 %, guided Grad-CAM 19 %, measured on an H100). camlib's methods (the
    functions that make a map, attention rollout included) run inside this context, so CPU
    and CUDA agree to ~1e-6; the metrics' many forwards do not (``camlib.setup()`` switches
    TF32 off for a whole session; ``amp=True`` is their fast path). The user's settings are
    restored on exit, even after an exception. No effect on CPU or MPS.
    """
    knobs = _precision_knobs()
    if knobs:  # torch >= 2.9: the fp32_precision API (never mixed with the legacy flags)
        saved = [k.fp32_precision for k in knobs]
        try:
            for k in knobs:
                k.fp32_precision = "ieee"
            yield
        finally:
            for k, value in zip(knobs, saved, strict=True):
                k.fp32_precision = value
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def exact(fn: F) -> F:
    """Decorator: run ``fn`` inside :func:`full_fp32`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with full_fp32():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def amp_dtype(device: torch.device, amp: bool | torch.dtype) -> torch.dtype | None:
    """The reduced precision for ``amp``: ``None`` for ``False`` (float32), the dtype itself, or for
    ``True`` bfloat16 where the device computes it natively (CUDA from Ampere on, the CPU),
    else float16 (older GPUs such as Colab's T4, Apple's MPS).

    Raises:
        ValueError: ``amp`` is neither a bool nor ``torch.bfloat16`` / ``torch.float16``.
    """
    if amp is False or amp is None:
        return None
    if amp is True:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.bfloat16
    if amp in (torch.bfloat16, torch.float16):
        return amp
    raise ValueError(f"amp must be True, False, torch.bfloat16 or torch.float16, not {amp!r}.")


def setup(seed: int = 0) -> torch.device:
    """Start a notebook reproducibly: seed Python's, NumPy's and torch's generators,
    switch TF32 off for the session (CUDA convolutions and matrix products in full
    float32, so every forward, not only camlib's, gives the CPU's numbers to ~1e-6;
    see :func:`full_fp32`), print and return the device (:func:`get_device`)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for knob in _precision_knobs():
        knob.fp32_precision = "ieee"
    if not _precision_knobs():
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    device = get_device()
    print(f"camlib on {device.type}")
    return device
