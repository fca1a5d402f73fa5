"""Turn a ``targets`` argument into one class score per image."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Targets", "class_indices", "scores"]

Targets = None | int | Sequence[int] | Tensor | Callable[[Tensor], Tensor]


def class_indices(logits: Tensor, targets: Targets) -> Tensor:
    """One class index per image as a ``(B,)`` long tensor on the logits' device.

    ``None``: each image's top-1; an ``int``: that class for every image; a sequence
    or tensor: one class per image (its length must be the batch size).
    """
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    if isinstance(targets, bool) or callable(targets):
        raise TypeError("targets must be None, an int, or a sequence of ints here.")
    if isinstance(targets, int):
        idx = torch.full((batch,), targets, dtype=torch.long, device=logits.device)
    else:
        idx = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
        if idx.numel() != batch:
            raise ValueError(
                f"Got {idx.numel()} targets for a batch of {batch} images: give one class per image, "
                "a single int for all of them, or None for each image's top-1."
            )
    bad = (idx < 0) | (idx >= num_classes)
    if bad.any():
        raise IndexError(
            f"Class index {int(idx[bad][0])} is outside the model's {num_classes} outputs "
            f"(valid: 0..{num_classes - 1})."
        )
    return idx


def scores(logits: Tensor, targets: Targets) -> Tensor:
    """The ``(B,)`` scores to explain: ``logits[b, c_b]``, or ``targets(logits)`` if callable.

    A callable makes contrastive targets easy: ``lambda z: z[:, a] - z[:, b]``.
    """
    if callable(targets) and not isinstance(targets, Tensor):
        s = targets(logits)
        if not isinstance(s, Tensor) or s.shape != (logits.shape[0],):
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"A callable target must return one score per image, shape ({logits.shape[0]},); got {got}.")
        return s
    idx = class_indices(logits, targets)
    return logits.gather(1, idx[:, None])[:, 0]
