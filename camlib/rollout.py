r"""Attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928): the transformer-native baseline.

Block :math:`l`'s attention :math:`A_l` (``(N, N)`` per head, rows sum to 1) says how much
each token reads from each token. The residual connection carries every token on as it is,
so the block's mixing is modelled as :math:`\tfrac12 (A_l + I)`; the mixing of several blocks
is the product:

.. math:: \tilde A_l = \mathrm{rownorm}\Big(\tfrac12\big(\mathrm{fuse}_h A_{l,h} + I\big)\Big),
          \qquad R = \tilde A_L \tilde A_{L-1} \cdots \tilde A_1

The map is the class token's row of :math:`R` over the patch tokens, folded into the patch
grid: how much of the class token, at the end, "came from" each patch. No class, no
gradient: the same map for every class.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .device import exact
from .hooks import LayerError, as_module, check_batch, eval_mode
from .tokens import TokenGrid, _Error, token_grid

__all__ = ["attention_maps", "attention_rollout", "rollout_matrix"]


def _attention_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm-style attention modules: a fused ``qkv`` linear layer, ``num_heads`` and ``scale``."""
    return [
        (name, m)
        for name, m in net.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads") and hasattr(m, "scale")
    ]


def attention_maps(net: nn.Module, x: Tensor) -> tuple[list[Tensor], TokenGrid]:
    r"""Each block's attention :math:`\mathrm{softmax}(s\, q k^\top)` ``(B, heads, N, N)``, and the grid.

    Computed from each attention's ``qkv`` output (and its ``q_norm`` / ``k_norm``) with a forward
    hook, so it works whether or not timm uses its fused kernel (which never forms the matrix);
    no flag of the model is changed, the hooks are removed and train/eval flags restored after.

    Raises:
        LayerError: no timm-style attention (a ``qkv`` linear layer) in ``net``.
    """
    net = as_module(net)
    mods = _attention_modules(net)
    if not mods:
        raise LayerError(
            f"{type(net).__name__} has no timm-style attention (a module with a qkv linear layer, num_heads "
            "and scale), so attention rollout cannot read its attention matrices."
        )
    maps: list[Tensor] = []
    shapes: list[torch.Size] = []

    def make(attn: nn.Module) -> Any:
        def hook(_m: nn.Module, inp: Any, out: Tensor) -> None:
            b, n, _ = inp[0].shape
            heads = attn.num_heads
            q, k, _v = out.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            q, k = getattr(attn, "q_norm", nn.Identity())(q), getattr(attn, "k_norm", nn.Identity())(k)
            maps.append(((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1))
            shapes.append(inp[0].shape)

        return hook

    handles = [m.qkv.register_forward_hook(make(m)) for _, m in mods]
    try:
        with eval_mode(net), torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    try:
        grid = token_grid(net, torch.empty(shapes[0], device="meta"), x)
    except _Error as err:
        raise LayerError(f"Attention rollout: {err}") from None
    return maps, grid


def rollout_matrix(maps: list[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0, keep: int = 1) -> Tensor:
    r"""The rollout :math:`R = \tilde A_L \cdots \tilde A_1` ``(B, N, N)`` of attention maps ``(B, heads, N, N)``.

    ``head_fusion``: ``"mean"`` (the paper's), ``"max"`` or ``"min"`` over heads.
    ``discard_ratio``: per block and image, that fraction of the smallest fused attention
    weights is set to 0 before adding the identity (jacobgil/vit-explain's variant; 0 = the
    paper's), never those of the first ``keep`` columns (the class token).
    """
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}.")
    b, _, n, _ = maps[0].shape
    eye = torch.eye(n, device=maps[0].device, dtype=maps[0].dtype)
    rollout = eye.expand(b, n, n)
    for a in maps:
        a = fuse[head_fusion](a)
        if discard_ratio > 0:
            flat = a.reshape(b, -1).clone()
            low = flat.topk(int(flat.shape[1] * discard_ratio), dim=1, largest=False).indices
            low = torch.where(low % n < keep, -1, low)  # never the class token's column
            mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, low.clamp_min(0), low >= 0)
            a = flat.masked_fill(mask, 0).reshape(b, n, n)
        a = (a + eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    return rollout


@exact
def attention_rollout(
    net: nn.Module, x: Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0, start_block: int = 0
) -> Tensor:
    r"""Attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928), ``(B, h, w)`` on the patch grid.

    .. math:: \tilde A_l = \mathrm{rownorm}\Big(\tfrac12\big(\mathrm{mean}_h A_{l,h} + I\big)\Big),
              \qquad R = \tilde A_L \cdots \tilde A_{l_0}, \qquad L_{ij} = R_{\mathrm{cls},\, p + i w + j}

    the class token's row of the rollout over the patch tokens (``p`` prefix tokens first). For a
    model whose head reads the mean of the patch tokens (timm ``global_pool="avg"``) or that has no
    class token, the map is instead the mean of the patch tokens' rows,
    :math:`L_{ij} = \frac{1}{hw}\sum_{t} R_{t,\, p + i w + j}` over the patch tokens :math:`t`.
    ``start_block`` skips the first blocks (:math:`l_0`); ``head_fusion`` and ``discard_ratio``
    as in :func:`rollout_matrix`. Works on timm Vision Transformers (ViT, DeiT) and any model with
    timm-style attention modules; no gradient, no class: the same map for every class.

    >>> camlib.attention_rollout(vit, x).shape   # doctest: +SKIP
    torch.Size([1, 14, 14])
    """
    net = as_module(net)
    check_batch(x)
    maps, grid = attention_maps(net, x)
    if not 0 <= start_block < len(maps):
        raise ValueError(f"start_block must be in [0, {len(maps)}), got {start_block!r}.")
    p = grid.prefix
    rollout = rollout_matrix(maps[start_block:], head_fusion, discard_ratio, keep=p)
    cls = getattr(net, "cls_token", None) is not None and getattr(net, "global_pool", "token") == "token"
    rows = rollout[:, 0, p:] if cls and p > 0 else rollout[:, p:, p:].mean(dim=1)
    return rows.reshape(-1, grid.h, grid.w).to(x.dtype if x.is_floating_point() else rows.dtype)
