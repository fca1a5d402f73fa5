"""A small Vision Transformer for :func:`camlib.synthetic.shapes` (notebook 13).

``SmallViT`` is timm's ``VisionTransformer``: a 64 × 64 image cut into 8 × 8 patches (an
8 × 8 grid of 64 patch tokens), a class token, four blocks of width 64 with four heads, and
a linear head on the class token (``global_pool="token"``) or on the mean of the patch
tokens (``global_pool="avg"``). ``stem="conv"`` embeds the patches with three stride-2 3 × 3
convolutions instead of one linear 8 × 8 projection (Xiao et al. 2021, arXiv:2106.14881); the
shipped ``small_vit_shapes`` has it: with the plain projection the ViT barely learned the
shapes in the CNN's training budget (``tools/train_small_vit.py``). The images are normalised inside, as in
:class:`camlib.smallnet.SmallGapNet`, so it takes ``shapes()`` images in [0, 1] as they come.
Being timm's class, camlib finds its token grid by itself (``patch_embed.grid_size``,
``num_prefix_tokens``): ``camlib.gradcam(net, x, "blocks.2")`` is ``(B, 8, 8)`` (at the last block,
``blocks.3``, all zero under the class-token head).

>>> model = camlib.load_model("small_vit_shapes")               # doctest: +SKIP
>>> images, labels, masks = camlib.synthetic.shapes(4, seed=2)  # doctest: +SKIP
>>> camlib.gradcam(model.net, images, "blocks.2").shape         # doctest: +SKIP
torch.Size([4, 8, 8])
"""

from __future__ import annotations

import contextlib
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .models import LoadedModel
from .smallnet import Normalize, seeded
from .synthetic import CLASSES

__all__ = ["SmallViT", "load_small_vit_shapes"]


class SmallViT(VisionTransformer):
    """timm's ``VisionTransformer`` sized for 64 × 64 ``shapes()``, with the normalisation inside.

    ``widths = (embed_dim, depth, num_heads)``; ``global_pool`` ``"token"`` (the head reads the
    class token) or ``"avg"`` (the mean of the patch tokens). ``seed`` makes the initial weights
    reproducible without touching the global random state.
    """

    def __init__(
        self,
        num_classes: int = len(CLASSES),
        widths: tuple[int, ...] = (64, 4, 4),
        seed: int | None = 0,
        global_pool: str = "token",
        patch_size: int = 8,
        stem: str = "patch",
    ) -> None:
        dim, depth, heads = widths
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            super().__init__(
                img_size=64,
                patch_size=patch_size,
                embed_dim=dim,
                depth=depth,
                num_heads=heads,
                mlp_ratio=2.0,
                num_classes=num_classes,
                global_pool=global_pool,
                class_token=True,
            )
            if stem == "conv":  # Xiao et al. 2021: three stride-2 3 × 3 convolutions instead of one 8 × 8 patch
                self.patch_embed.proj = _conv_stem(dim, patch_size)
            elif stem != "patch":
                raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}.")
        self.widths = tuple(widths)
        self.kwargs: dict[str, Any] = {"global_pool": global_pool, "patch_size": patch_size, "stem": stem}
        self.normalize = Normalize()

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.normalize(x))


def _conv_stem(dim: int, patch_size: int) -> nn.Sequential:
    """Stride-2 3 × 3 conv + BN + ReLU blocks down to the patch grid, then a 1 × 1 conv to the token width."""
    layers: list[nn.Module] = []
    cin, cout, size = 3, 16, 1
    while size < patch_size:
        layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin, cout, size = cout, cout * 2, size * 2
    return nn.Sequential(*layers, nn.Conv2d(cin, dim, 1))


def load_small_vit_shapes(name: str = "small_vit_shapes") -> LoadedModel:
    """A shipped :class:`SmallViT` trained on ``shapes()`` as a :class:`~camlib.models.LoadedModel`:
    ``"small_vit_shapes"`` (class-token head) or ``"small_vit_avg_shapes"`` (mean of the patch tokens).

    ``fc`` is the head; ``feature_layer``, the layer the explorer and the CLI explain by default, is the
    last block for the mean-pooled head and the block before it for the class-token head (whose last
    block's Grad-CAM is zero by construction: its patch tokens never reach the logits). ``.extra``
    holds the training ``config`` and the per-epoch ``history``.
    """
    from .smallnet import ShapesModel, load_run

    run = load_run(name)
    net = run.net
    last = len(net.blocks) - 1 if net.global_pool == "avg" else len(net.blocks) - 2
    model = ShapesModel(name, net, list(CLASSES), f"blocks.{last}", net.head, None, None, 64)
    model.extra.update(history=run.history, config=run.config)
    return model
