"""A small GAP network for :func:`camlib.synthetic.shapes`, its flatten + FC twin, and training.

``SmallGapNet``: normalisation → four conv blocks (a stride-2 stem and one max-pool:
the 16 × 16 feature map of a 64 × 64 image) →
global average pooling → one linear layer, so CAM is defined at ``"features"``.
``SmallFlatNet``: the same convolutions, but the 16 × 16 feature map is pooled to
4 × 4 and *flattened* into the linear layer, so CAM is not defined (Grad-CAM is).

>>> model = camlib.load_model("small_gap_shapes")            # doctest: +SKIP
>>> images, labels, masks = camlib.synthetic.shapes(4, seed=2)  # doctest: +SKIP
>>> camlib.cam(model, model.preprocess(images)).shape        # doctest: +SKIP
torch.Size([4, 16, 16])
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .data import data_dir
from .device import get_device
from .models import LoadedModel
from .synthetic import CLASSES

__all__ = [
    "SmallGapNet",
    "SmallFlatNet",
    "ShapesModel",
    "TrainingRun",
    "seeded",
    "fit",
    "localization_scores",
    "train_run",
    "save_run",
    "load_run",
    "load_small_gap_shapes",
    "shapes_model",
    "weights_dir",
]

MEAN, STD = 0.5, 0.25  # of shapes() images, applied inside the nets


def weights_dir() -> Path:
    """Where the trained weights are shipped: :func:`camlib.data.data_dir`."""
    return data_dir()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded, restoring the global random state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Normalize(nn.Module):
    """``(x - mean) / std`` with fixed constants, so the net takes images in [0, 1] as they come."""

    def __init__(self, mean: float = MEAN, std: float = STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _features(widths: tuple[int, ...]) -> nn.Sequential:
    """Four conv blocks: stride-2 stem, one max-pool: the output has 1/4 of the input's resolution."""
    a, b, c = widths
    return nn.Sequential(_block(3, a, stride=2), _block(a, b), nn.MaxPool2d(2), _block(b, c), _block(c, c))


class SmallGapNet(nn.Module):
    r"""conv blocks → global average pooling → linear: the architecture CAM needs.

    .. math:: y^c = \sum_k w^c_k \frac{1}{Z}\sum_{ij} f_k(i, j) + b^c

    ``features`` outputs ``f`` (``widths[-1]`` channels at 1/4 of the input size),
    ``fc`` holds ``w``. ``seed`` makes the initial weights reproducible without
    touching the global random state (``None``: use it as usual).
    """

    def __init__(self, num_classes: int = len(CLASSES), widths: tuple[int, ...] = (16, 32, 64), seed: int | None = 0):
        super().__init__()
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            self.widths = tuple(widths)
            self.normalize = Normalize()
            self.features = _features(self.widths)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(self.normalize(x))).flatten(1))


class SmallFlatNet(nn.Module):
    """The same convolutions, then max-pool to 4 × 4, flatten and a linear layer: no GAP, so no CAM."""

    def __init__(self, num_classes: int = len(CLASSES), widths: tuple[int, ...] = (16, 32, 64), seed: int | None = 0):
        super().__init__()
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            self.widths = tuple(widths)
            self.normalize = Normalize()
            self.features = _features(self.widths)
            self.pool = nn.AdaptiveMaxPool2d(4)
            self.fc = nn.Linear(widths[-1] * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(self.normalize(x))).flatten(1))


def fit(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 4e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    on_epoch_end: Callable[[int, nn.Module], dict[str, float]] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``net`` in place with Adam, a one-cycle learning rate and cross-entropy.

    The learning rate rises to ``lr`` over the first quarter of the steps, then falls
    to almost 0 along a half cosine (``torch.optim.lr_scheduler.OneCycleLR``).

    Seeded and deterministic: the batch order comes from a private generator, and
    nothing else is random, so the same call on the same device with the same number
    of threads gives the same weights (other thread counts round differently).
    Shows a tqdm progress bar (a widget in Jupyter).
    After each epoch ``on_epoch_end(epoch, net)`` may return extra numbers to record
    (the net is in train mode; evaluate under ``torch.no_grad()`` / eval mode).

    Returns the history: one dict per epoch with ``epoch``, ``loss`` (mean over the
    epoch's batches) and ``train_acc``, plus what ``on_epoch_end`` returned.
    """
    from tqdm.auto import tqdm

    device = get_device() if device is None else torch.device(device)
    net.to(device).train()
    g = torch.Generator().manual_seed(seed)
    steps = (len(images) + batch_size - 1) // batch_size
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    total_steps = epochs * steps
    warm = min(0.9, max(0.25, 1.5 / total_steps))  # a quarter of the steps, at least 2 for very short runs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=warm)
    history = []
    bar = tqdm(total=epochs * steps, disable=not progress, desc="training", leave=True)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(images), generator=g)
        total, correct = 0.0, 0
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x, y = images[idx].to(device), labels[idx].to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            bar.update(1)
        row = {"epoch": epoch, "loss": total / len(images), "train_acc": correct / len(images)}
        if on_epoch_end is not None:
            row.update(on_epoch_end(epoch, net))
            net.train()
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_acc']:.3f}")
        history.append(row)
    bar.close()
    net.eval()
    return history


Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]


def localization_scores(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    masks: Tensor,
    explain: Explain | None = None,
    batch_size: int = 500,
) -> dict[str, float]:
    """Held-out accuracy, and how well the net's maps for the true class localize the object.

    ``explain(net, x, y)`` returns raw maps ``(B, h, w)``; default :func:`camlib.cam`
    (GAP nets only); e.g. ``lambda net, x, y: camlib.gradcam(net, x, "features", y)``
    for any CNN. Returns ``acc``, ``pointing`` (:func:`~camlib.metrics.pointing_game`),
    ``iou`` (:func:`~camlib.metrics.mask_iou` at 0.5) and ``energy``
    (:func:`~camlib.metrics.energy_pointing_game`), each the mean over the images.
    """
    from .hooks import eval_mode
    from .methods import cam
    from .metrics.localization import energy_pointing_game, mask_iou, pointing_game

    explain = explain or cam
    device = next(net.parameters()).device
    sums = {"acc": 0.0, "pointing": 0.0, "iou": 0.0, "energy": 0.0}
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        y, m = labels[start : start + batch_size].to(device), masks[start : start + batch_size].to(device)
        with eval_mode(net), torch.no_grad():
            sums["acc"] += float((net(x).argmax(1) == y).sum())
        maps = explain(net, x, y)
        sums["pointing"] += float(pointing_game(maps, m).sum())
        sums["iou"] += float(mask_iou(maps, m).sum())
        sums["energy"] += float(energy_pointing_game(maps, m).sum())
    return {k: v / len(images) for k, v in sums.items()}


@dataclass
class TrainingRun:
    """A trained net, its per-epoch history and the state dicts kept at some epochs."""

    net: nn.Module
    history: list[dict[str, float]]
    checkpoints: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def at_epoch(self, epoch: int) -> nn.Module:
        """A copy of the net with the weights it had after ``epoch`` (in eval mode)."""
        if epoch not in self.checkpoints:
            raise KeyError(f"No checkpoint for epoch {epoch}; kept: {sorted(self.checkpoints)}.")
        net = copy.deepcopy(self.net)
        net.load_state_dict(self.checkpoints[epoch])
        return net.eval()


def train_run(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    eval_data: tuple[Tensor, Tensor, Tensor] | None = None,
    keep: tuple[int, ...] = (),
    explain: Explain | None = None,
    **fit_kwargs: Any,
) -> TrainingRun:
    """:func:`fit` ``net``, scoring it on ``eval_data = (images, labels, masks)`` after every
    epoch (:func:`localization_scores` with ``explain``, default CAM) and keeping the
    weights after the epochs in ``keep``. ``fit_kwargs`` go to :func:`fit` (``epochs``, ``lr``, ...)."""
    checkpoints: dict[int, dict[str, Tensor]] = {}

    def on_epoch_end(epoch: int, model: nn.Module) -> dict[str, float]:
        if epoch in keep:
            checkpoints[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return {} if eval_data is None else localization_scores(model, *eval_data, explain=explain)

    history = fit(net, images, labels, on_epoch_end=on_epoch_end, **fit_kwargs)
    config = {"arch": type(net).__name__, "widths": list(net.widths), "epochs": len(history), "n_train": len(images)}
    if getattr(net, "kwargs", None):  # e.g. SmallViT's global_pool and patch_size
        config["kwargs"] = dict(net.kwargs)
    return TrainingRun(net, history, checkpoints, config)


def save_run(run: TrainingRun, name: str, folder: str | os.PathLike | None = None) -> Path:
    """Save ``<name>.pt`` (final weights and config), ``<name>_checkpoints.pt`` (the kept
    epochs' weights, if any) and ``<name>_history.json`` (the per-epoch scores)."""
    folder = Path(folder) if folder is not None else weights_dir()
    state = {k: v.detach().cpu() for k, v in run.net.state_dict().items()}
    path = folder / f"{name}.pt"
    torch.save({"state_dict": state, "config": run.config, "classes": list(CLASSES)}, path)
    if run.checkpoints:
        torch.save(run.checkpoints, folder / f"{name}_checkpoints.pt")
    (folder / f"{name}_history.json").write_text(json.dumps(_rounded(run.history), indent=1) + "\n")
    return path


def _rounded(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v if isinstance(v, int) else round(float(v), 6) for k, v in row.items()} for row in history]


_ARCHS: dict[str, type[nn.Module]] = {"SmallGapNet": SmallGapNet, "SmallFlatNet": SmallFlatNet}


def load_run(name: str = "small_gap_shapes", folder: str | os.PathLike | None = None) -> TrainingRun:
    """Load what :func:`save_run` wrote (the shipped runs: ``"small_gap_shapes"``, ``"small_flat_shapes"``,
    ``"small_vit_shapes"``)."""
    folder = Path(folder) if folder is not None else weights_dir()
    path = folder / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"No trained weights at {path}; train them with camlib.smallnet.train_run.")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = blob["config"]
    if config["arch"] == "SmallViT":  # timm is imported only for it
        from .vitnet import SmallViT

        _ARCHS["SmallViT"] = SmallViT
    arch = _ARCHS[config["arch"]]
    net = arch(num_classes=len(blob["classes"]), widths=tuple(config["widths"]), seed=None, **config.get("kwargs", {}))
    net.load_state_dict(blob["state_dict"])
    history_path, kept_path = folder / f"{name}_history.json", folder / f"{name}_checkpoints.pt"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    kept = torch.load(kept_path, map_location="cpu", weights_only=True) if kept_path.is_file() else {}
    return TrainingRun(net.eval(), history, dict(kept), config)


class ShapesModel(LoadedModel):
    """A :class:`~camlib.models.LoadedModel` whose ``preprocess`` also takes ``shapes()`` tensors."""

    def preprocess(
        self, image: Image.Image | Tensor | str | os.PathLike, size: int | tuple[int, int] | None = None
    ) -> Tensor:
        """A ``shapes()`` image ``(3, H, W)`` or batch ``(N, 3, H, W)`` in [0, 1], or a PIL image / path
        (resized to 64 × 64 unless ``size``), → float ``(N, 3, H, W)`` on the model's device.

        No normalisation here: the net normalises inside.
        """
        if not isinstance(image, Tensor):
            return super().preprocess(image, size)
        x = image[None] if image.dim() == 3 else image
        x = x.to(self.device, torch.float32)
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
        return x


def shapes_model(net: nn.Module, name: str = "small_gap_shapes") -> ShapesModel:
    """Wrap a trained :class:`SmallGapNet` with the :func:`camlib.load_model` interface."""
    return ShapesModel(name, net.eval(), list(CLASSES), "features", net.fc, mean=None, std=None, input_size=64)


def load_small_gap_shapes() -> LoadedModel:
    """The shipped :class:`SmallGapNet` trained on ``shapes()`` (notebook 08), as a :class:`LoadedModel`.

    ``.extra`` holds the training ``config`` and the per-epoch ``history``.
    """
    run = load_run("small_gap_shapes")
    model = shapes_model(run.net)
    model.extra.update(history=run.history, config=run.config)
    return model
