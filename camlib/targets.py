"""Turn a ``targets`` argument into one class score per image."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Targets", "check_kind", "class_indices", "is_many", "is_single", "scores"]

Targets = None | int | Sequence[int] | Tensor | Callable[[Tensor], Tensor]


def class_indices(logits: Tensor, targets: Targets) -> Tensor:
    """One class index per image as a ``(B,)`` long tensor on the logits' device.

    ``None``: each image's top-1; an ``int`` (also a NumPy integer or a 0-d tensor):
    that class for every image; a sequence or 1-d tensor: one class per image (its
    length must be the batch size).

    Raises:
        ValueError: a sequence whose length is not the batch size.
        IndexError: a class index outside ``0 .. num_classes - 1``.
        TypeError: a callable, a bool or non-integer indices.
    """
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    if isinstance(targets, bool) or (callable(targets) and not isinstance(targets, Tensor)):
        raise TypeError(
            "targets must be None, an int, or a sequence of ints here (a callable target only works "
            "with the gradient methods: gradcam, gradcam_pp, layer_gradients, hirescam, xgradcam, layercam, "
            "guided_backprop, guided_gradcam)."
        )
    check_kind(targets)
    # Range checks run where the indices are (the CPU for ints and lists): no wait for the GPU.
    if is_single(targets):
        if not 0 <= int(targets) < num_classes:  # before a tensor: 2**63 does not fit one
            _out_of_range(int(targets), num_classes)
        return _to(torch.full((batch,), int(targets), dtype=torch.long), logits.device)
    try:
        idx = torch.as_tensor(targets).reshape(-1)
    except (OverflowError, RuntimeError, ValueError) as err:  # an int beyond int64, a ragged list
        raise ValueError(f"targets must be class indices 0..{num_classes - 1}, one per image: {err}") from None
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"Class indices must be integers, got a {idx.dtype} sequence.")
    idx = idx.long()
    if idx.numel() != batch:
        raise ValueError(
            f"Got {idx.numel()} targets for a batch of {batch} images: give one class per image, "
            "a single int for all of them, or None for each image's top-1."
        )
    _check_range(idx, num_classes)
    return _to(idx, logits.device)


def _to(idx: Tensor, device: torch.device) -> Tensor:
    """``idx`` on ``device``; from the CPU without waiting for the GPU to finish the forward (a copy
    from pageable memory is staged before the call returns, so this is safe), so the work queued
    after it overlaps the GPU's."""
    return idx.to(device, non_blocking=idx.device.type == "cpu")


def _check_range(idx: Tensor, num_classes: int) -> None:
    bad = (idx < 0) | (idx >= num_classes)
    if bad.any():
        _out_of_range(int(idx[bad][0]), num_classes)


def _out_of_range(index: int, num_classes: int) -> None:
    raise IndexError(f"Class index {index} is outside the model's {num_classes} outputs (valid: 0..{num_classes - 1}).")


def check_kind(targets: Targets) -> None:
    """Refuse what cannot be class indices with a message that says what to pass instead."""
    if isinstance(targets, str | bytes):
        raise TypeError(
            f"targets must be class indices, not the text {targets!r}; to find a class by name use "
            "model.classes.index(name)."
        )
    if isinstance(targets, set | frozenset | dict):
        raise TypeError(f"targets must be ordered (one class per image): pass a list, not a {type(targets).__name__}.")
    if not is_single(targets) and np.ndim(targets) == 1 and len(targets) == 0:
        raise ValueError("targets is empty: give one class index per image, one int for all, or None for top-1.")


def is_single(targets: Targets) -> bool:
    """True for one class index meant for every image: a Python/NumPy int, a 0-d integer array or tensor."""
    if isinstance(targets, bool):
        return False
    if isinstance(targets, Tensor | np.ndarray):
        return targets.ndim == 0 and not (
            targets.dtype.is_floating_point if isinstance(targets, Tensor) else np.issubdtype(targets.dtype, np.inexact)
        )
    return isinstance(targets, numbers.Integral)


def is_many(targets: Targets) -> bool:
    """True for a sequence (or 1-d tensor) of class indices, one per image."""
    return (
        targets is not None and not is_single(targets) and not (callable(targets) and not isinstance(targets, Tensor))
    )


def scores(logits: Tensor, targets: Targets) -> Tensor:
    """The ``(B,)`` scores to explain: ``logits[b, c_b]``, or ``targets(logits)`` if callable.

    A callable makes contrastive targets easy: ``lambda z: z[:, a] - z[:, b]``.
    """
    if callable(targets) and not isinstance(targets, Tensor):
        s = targets(logits)
        if not isinstance(s, Tensor) or s.shape != (logits.shape[0],):
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(
                f"A callable target must return one score per image, shape ({logits.shape[0]},); got {got}."
            )
        return s
    idx = class_indices(logits, targets)
    return logits.gather(1, idx[:, None])[:, 0]
