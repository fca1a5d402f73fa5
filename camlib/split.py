r"""A model cut in two at a layer with :mod:`torch.fx`: the part before it and the part after it.

Ablation-CAM asks one question per channel: what is the score with channel :math:`k` of the
layer's output :math:`A` zeroed? Only the part of the net *after* the layer depends on that, so
:math:`y^c_k = \mathrm{tail}(A_{-k}, \phi)` where :math:`\phi` are the values from before the layer
that the tail also reads (a residual block's identity, when the layer sits inside one). The
head computes :math:`\phi` once per image; the tail runs once per chunk of ablated copies.

:func:`split_at` traces the model symbolically (``torch.fx.Tracer``, the layer and camlib's folded
modules kept whole) and returns ``None`` where that is not possible (Python control flow on
tensor values, the layer called twice or not at all, the output not depending on the layer, a
value written in place and read again): the caller then runs the whole model with a hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

__all__ = ["Split", "split_at"]


class _Tracer(fx.Tracer):
    """PyTorch's standard leaves, plus the layer and camlib's own modules (kept whole)."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.layer or type(m).__module__ == "camlib.fold" or super().is_leaf_module(m, qualname)


@dataclass
class Split:
    """``head(x) -> phi`` (a tuple: what the tail reads from before the layer) and ``tail(a, *phi) -> output``."""

    head: fx.GraphModule
    tail: fx.GraphModule

    def after(self, a: Tensor, phi: tuple[Any, ...]) -> Any:
        """The model's output with the layer's output replaced by ``a`` (n rows); ``phi`` from a one-image head,
        its batch-of-one tensors broadcast (views, no copies) to the n rows."""
        n = a.shape[0]
        rows = [v.expand(n, *v.shape[1:]) if isinstance(v, Tensor) and v.dim() and v.shape[0] == 1 else v for v in phi]
        return self.tail(a, *rows)


def _descendants(node: fx.Node) -> set[fx.Node]:
    seen, todo = set(), [node]
    while todo:
        for user in todo.pop().users:
            if user not in seen:
                seen.add(user)
                todo.append(user)
    return seen


def _writes_shared(node: fx.Node, net: nn.Module) -> bool:
    """Whether ``node`` writes in place into a value that something else reads too.

    The cut follows the graph's data flow, which does not see the order of an in-place write and
    the other reads of the same value (``skip.add_(y)`` then ``skip.mean()``); such a graph is not
    cut. An in-place op on a value nothing else reads (a ResNet's ``ReLU(inplace=True)``) is fine.
    """
    if node.op == "call_module":
        inplace = getattr(net.get_submodule(node.target), "inplace", False) is True
    elif node.op in ("call_method", "call_function"):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        inplace = (
            (name.endswith("_") and not name.endswith("__"))
            or name.startswith("__i")
            or node.kwargs.get("inplace") is True
        )
    else:
        return False
    target = node.args[0] if node.args else None
    return inplace and isinstance(target, fx.Node) and len(target.users) > 1


def split_at(net: nn.Module, layer: str) -> Split | None:
    """``net`` around its submodule ``layer`` (a name from ``named_modules``), or ``None`` where it cannot be cut.

    The head's graph keeps only what the tail needs (dead code eliminated: for a layer right
    before global pooling it computes nothing); the tail's graph starts at the layer's output.
    Nothing of ``net`` is changed or copied: both graphs call its modules.
    """
    try:
        graph = _Tracer(layer).trace(net)
    except Exception:  # noqa: BLE001 (fx raises many kinds for what it cannot trace)
        return None
    sites = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(sites) != 1:
        return None
    site = sites[0]
    if any(_writes_shared(n, net) for n in graph.nodes):
        return None
    after = _descendants(site)
    out = next(n for n in graph.nodes if n.op == "output")
    if out not in after:
        return None
    from_input = set().union(*(_descendants(n) | {n} for n in graph.nodes if n.op == "placeholder"))
    tail_nodes = [n for n in graph.nodes if n in after]
    phi: list[fx.Node] = []
    for n in tail_nodes:
        phi += [p for p in n.all_input_nodes if p not in after and p is not site and p in from_input and p not in phi]

    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        if n.op != "output" and n not in after and n is not site:
            env[n] = head.node_copy(n, env.__getitem__)
    head.output(tuple(env[p] for p in phi))

    tail = fx.Graph()
    env = {site: tail.placeholder("a")}
    env.update({p: tail.placeholder(f"phi{i}") for i, p in enumerate(phi)})
    for n in graph.nodes:  # constants and parameters the tail reads are copied into it, not passed
        if n in after or (n not in from_input and n.op != "placeholder" and n not in env):
            env[n] = tail.node_copy(n, env.__getitem__)
    return Split(_module(net, head), _module(net, tail))


def _module(net: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    gm = fx.GraphModule(net, graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm
