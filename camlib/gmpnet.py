"""The global-max-pooling twin of :class:`camlib.smallnet.SmallGapNet` (notebook 08, GAP vs GMP).

``SmallGmpNet`` has the same convolutions and linear layer as ``SmallGapNet``; only the
pooling differs: the score of class :math:`c` is :math:`y^c = \\sum_k w^c_k \\max_{ij} A^k_{ij} + b^c`.
Its class map :math:`M^c = \\sum_k w^c_k A^k` is built exactly as CAM's, but the score is no
longer the map's mean: :func:`camlib.cam` finds no spatial map whose mean feeds the linear layer and raises
:class:`camlib.CamError`, naming the max pooling; :func:`class_maps` computes the 16 × 16 map.
Weights trained with :func:`camlib.smallnet.train_run` ship as ``data/small_gmp_shapes.pt``.

>>> run = load_small_gmp_shapes()                                    # doctest: +SKIP
>>> images, labels, masks = camlib.synthetic.shapes(4, seed=2)      # doctest: +SKIP
>>> class_maps(run.net, images, labels).shape                       # doctest: +SKIP
torch.Size([4, 16, 16])
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .hooks import captured
from .smallnet import Normalize, TrainingRun, _features, seeded, weights_dir
from .synthetic import CLASSES

__all__ = ["SmallGmpNet", "class_maps", "load_small_gmp_shapes"]


class SmallGmpNet(nn.Module):
    """conv blocks → global *max* pooling → linear (the same layers as ``SmallGapNet`` otherwise)."""

    def __init__(self, num_classes: int = len(CLASSES), widths: tuple[int, ...] = (16, 32, 64), seed: int | None = 0):
        super().__init__()
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            self.widths = tuple(widths)
            self.normalize = Normalize()
            self.features = _features(self.widths)
            self.pool = nn.AdaptiveMaxPool2d(1)
            self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(self.normalize(x))).flatten(1))


def class_maps(net: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    r"""Class maps :math:`M^c(i, j) = \sum_k w^c_k A^k_{ij}` at ``net.features``, ``(B, h, w)``.

    Image ``b`` gets the map of class ``targets[b]``.

    For a GAP net this is :func:`camlib.cam`; for ``SmallGmpNet`` it is the same formula.
    """
    cap, _ = captured(net, x, "features")  # as camlib.cam runs it (the CPU's folded twin): bit for bit the same
    weights = net.fc.weight[torch.as_tensor(targets, device=x.device)]
    return torch.einsum("bk,bkhw->bhw", weights, cap.activation)


def load_small_gmp_shapes(folder: str | os.PathLike | None = None) -> TrainingRun:
    """The shipped ``SmallGmpNet`` (``data/small_gmp_shapes.pt``) with its per-epoch history."""
    folder = Path(folder) if folder is not None else weights_dir()
    blob = torch.load(folder / "small_gmp_shapes.pt", map_location="cpu", weights_only=True)
    net = SmallGmpNet(num_classes=len(blob["classes"]), widths=tuple(blob["config"]["widths"]), seed=None)
    net.load_state_dict(blob["state_dict"])
    history_path = folder / "small_gmp_shapes_history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    return TrainingRun(net.eval(), history, {}, blob["config"])
