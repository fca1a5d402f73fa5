r"""Token sequences as feature maps: what Grad-CAM needs from a Vision Transformer's layer.

A transformer block outputs tokens ``(B, N, C)``: ``p`` prefix tokens (the class token,
register tokens) and ``h * w`` patch tokens, one per image patch, in row-major order. Drop
the prefix and fold the patches back into their grid and the tokens are a feature map
``(B, C, h, w)`` like a CNN's:

.. math:: A^k_{ij} = T_{p + i w + j,\, k}

:func:`token_grid` finds ``p`` and ``(h, w)``: from ``reshape=`` if given (a grid size, or a
callable ``tokens -> (B, C, h, w)``, the ``reshape_transform`` of pytorch-grad-cam), else from
the model (timm: ``patch_embed.patch_size`` / ``grid_size``, ``num_prefix_tokens``), else from
``N`` itself when it is a perfect square (no prefix).

:func:`camlib.hooks.forward_with_grad_at` uses it: the grid ``A`` is the leaf the gradients are
taken at, and the tokens the rest of the forward sees are rebuilt from ``A`` (:func:`from_grid`),
so ``torch.autograd.grad(score, A)`` is :math:`\partial y^c / \partial A` directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Reshape", "TokenGrid", "to_grid", "from_grid", "token_grid", "qkv_like"]

Reshape = int | tuple[int, int] | Callable[[Tensor], Tensor] | None


class _Error(ValueError):
    """Replaced by :class:`camlib.hooks.LayerError` at the call site (no import cycle)."""


@dataclass(frozen=True)
class TokenGrid:
    """``prefix`` tokens first, then an ``h × w`` grid of patch tokens, row by row."""

    prefix: int
    h: int
    w: int

    def __call__(self, tokens: Tensor) -> Tensor:
        return to_grid(tokens, self)


def to_grid(tokens: Tensor, grid: TokenGrid) -> Tensor:
    """Patch tokens ``(B, N, C)`` → ``(B, C, h, w)``: drop the ``grid.prefix`` first tokens, fold the rest."""
    b, n, c = tokens.shape
    if n != grid.prefix + grid.h * grid.w:
        raise _Error(f"its {n} tokens are not {grid.prefix} prefix tokens + a {grid.h}×{grid.w} grid.")
    return tokens[:, grid.prefix :].reshape(b, grid.h, grid.w, c).permute(0, 3, 1, 2)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _model_grids(net: nn.Module, x: Tensor) -> list[TokenGrid]:
    """The grids a timm-style model declares: from its patch size and ``x``'s size, and its ``grid_size``."""
    p = getattr(net, "num_prefix_tokens", None)
    embed = getattr(net, "patch_embed", None)
    grids = []
    if p is not None and embed is not None:
        size = getattr(embed, "patch_size", None)
        if size is not None:
            ph, pw = (size, size) if isinstance(size, int) else tuple(size)
            grids.append(TokenGrid(int(p), x.shape[-2] // ph, x.shape[-1] // pw))
        size = getattr(embed, "grid_size", None)
        if size is not None:
            grids.append(TokenGrid(int(p), *(int(s) for s in size)))
    return grids


def token_grid(net: nn.Module, tokens: Tensor, x: Tensor, reshape: Reshape = None) -> TokenGrid:
    """How ``tokens`` ``(B, N, C)`` of ``net`` on input ``x`` fold into a grid.

    ``reshape``: ``(h, w)`` or ``h`` (a square grid; the first ``N - h w`` tokens are the
    prefix); ``None``: the model's own grid (timm), else a perfect-square ``N`` (minus the
    model's ``num_prefix_tokens`` if it has that attribute) with no prefix.

    Raises:
        ValueError: no grid fits; the message says what to pass.
    """
    n = tokens.shape[1]
    if reshape is not None:
        h, w = (reshape, reshape) if isinstance(reshape, int) else tuple(int(s) for s in reshape)
        if h * w > n or h < 1 or w < 1:
            raise _Error(f"reshape={reshape!r} asks for a {h}×{w} grid, but the layer outputs {n} tokens.")
        return TokenGrid(n - h * w, h, w)
    for grid in _model_grids(net, x):
        if grid.prefix + grid.h * grid.w == n:
            return grid
    p = int(getattr(net, "num_prefix_tokens", 0) or 0)
    if _is_square(n - p):
        return TokenGrid(p, math.isqrt(n - p), math.isqrt(n - p))
    raise _Error(
        f"it outputs {n} tokens {tuple(tokens.shape)}, and camlib cannot tell which of them are patches on "
        "which grid (no timm patch_embed / num_prefix_tokens, and the count is not a perfect square). "
        "Pass reshape=(h, w) (the patch grid; the first N - h*w tokens are dropped as class/register "
        "tokens) or reshape=callable mapping (B, N, C) tokens to a (B, C, h, w) map."
    )


def qkv_like(module: nn.Module, name: str, tokens: Tensor, net: nn.Module) -> str | None:
    """Why ``tokens`` is not the token stream (an attention's q/k/v projection, an MLP's hidden layer), or None."""
    width = getattr(net, "embed_dim", None)
    c = tokens.shape[-1]
    linear = isinstance(module, nn.Linear)
    block = name.rsplit(".", 2)[0] if name.count(".") >= 2 else name
    if name.endswith("qkv") or (linear and module.out_features == 3 * module.in_features):
        return (
            f"this is an attention's query/key/value projection (width {c} = 3 × {c // 3}: q, k and v side by "
            f"side), not the token stream. Take the block's output, e.g. {block!r}, or its input as the "
            f"attention sees it, {block + '.norm1'!r}."
        )
    if isinstance(width, int) and c != width:
        return (
            f"it outputs tokens of width {c}, but the model's token stream has width {width}: it is a layer "
            f"inside a block (an MLP's hidden layer?). Take a block's output, e.g. {block!r}."
        )
    return None


def from_grid(tokens: Tensor, fold: Callable[[Tensor], Tensor], grid: Tensor) -> Tensor:
    """``tokens`` with the elements ``fold`` picked replaced by ``grid`` (same shape as ``fold(tokens)``).

    ``fold`` must only select and rearrange elements (slicing, ``reshape``, ``permute``,
    ``transpose``), as :func:`to_grid` and every ``reshape_transform`` in pytorch-grad-cam's
    tutorials do. Where each grid element comes from is found by folding the element indices
    themselves; the result is differentiable with respect to ``grid``, so the forward after the
    layer builds its graph from ``grid``.

    Raises:
        ValueError: ``fold`` computes new values (an average, a norm) instead of selecting.
    """
    # the indices on the CPU, in float64 (exact up to 2**53; MPS has no float64)
    index = torch.arange(tokens.numel(), dtype=torch.float64).reshape(tokens.shape)
    where = fold(index)
    if not isinstance(where, Tensor) or where.shape != grid.shape:
        raise _Error(f"reshape= returned {getattr(where, 'shape', type(where).__name__)}, expected {grid.shape}.")
    src = where.reshape(-1).round().long()
    ok = torch.equal(src.double(), where.reshape(-1)) and src.unique().numel() == src.numel()
    src = src.to(tokens.device)
    if not ok or not torch.equal(tokens.reshape(-1)[src].reshape(grid.shape), fold(tokens)):
        raise _Error(
            "reshape= must only select and rearrange tokens (slicing, reshape, permute), so the map's "
            "gradients are the tokens' gradients; it computed new values."
        )
    flat = tokens.reshape(-1).to(grid.dtype).index_put((src,), grid.reshape(-1))
    return flat.reshape(tokens.shape)
