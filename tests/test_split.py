"""The cut of a model at a layer (camlib.split) and Ablation-CAM's use of it.

The reference for a cut is the model itself: with the layer's output captured by a hook,
``tail(A, *head(x))`` must be ``net(x)``. Ablation-CAM with the cut must equal Ablation-CAM
without it (``split_at`` patched to give nothing) and must run the part before the layer a
fixed number of times, not once per chunk.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import camlib
from camlib import family, split
from camlib.hooks import cpu_twin
from camlib.smallnet import SmallGapNet


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def rx() -> Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def layer_output(net: nn.Module, layer: str, x: Tensor) -> Tensor:
    with camlib.capture(net, layer) as cap, torch.no_grad():
        net(x)
    return cap.activation


@pytest.mark.parametrize("layer", ["layer4", "layer3.1.conv2", "layer2.0.bn1", "layer1"])
def test_head_and_tail_give_the_model(resnet: nn.Module, rx: Tensor, layer: str) -> None:
    cut = split.split_at(resnet, layer)
    assert cut is not None
    with torch.no_grad():
        phi = cut.head(rx[:1])
        got = cut.after(layer_output(resnet, layer, rx[:1]), phi)
        torch.testing.assert_close(got, resnet(rx[:1]), rtol=1e-5, atol=1e-5)


def test_what_the_tail_reads_from_before_the_layer(resnet: nn.Module) -> None:
    """At layer4 nothing (the head computes nothing); inside a residual block, the block's input."""
    assert split.split_at(resnet, "layer4").head.graph.find_nodes(op="call_module") == []
    cut = split.split_at(resnet, "layer3.1.conv2")
    (out,) = cut.head.graph.find_nodes(op="output")
    assert len(out.args[0]) == 1  # the identity of block layer3.1
    assert "layer3.1.conv2" not in {n.target for n in cut.tail.graph.find_nodes(op="call_module")}


def test_one_image_of_phi_serves_n_rows(resnet: nn.Module, rx: Tensor) -> None:
    layer = "layer3.1.conv2"
    cut = split.split_at(resnet, layer)
    a = layer_output(resnet, layer, rx[:1])
    rows = torch.cat([a, 0.5 * a, torch.zeros_like(a)])
    with torch.no_grad():
        got = cut.after(rows, cut.head(rx[:1]))
        one_by_one = torch.cat([cut.after(r[None], cut.head(rx[:1])) for r in rows])
    torch.testing.assert_close(got, one_by_one, rtol=1e-5, atol=1e-5)


def test_the_folded_twin_is_cut_with_its_modules_whole(resnet: nn.Module, rx: Tensor) -> None:
    twin = cpu_twin(resnet, rx, keep=("layer3",))
    assert twin is not resnet
    cut = split.split_at(twin, "layer3")
    assert cut is not None
    kinds = {type(twin.get_submodule(n.target)).__module__ for n in cut.tail.graph.find_nodes(op="call_module")}
    assert "camlib.fold" in kinds
    with torch.no_grad():
        got = cut.after(layer_output(resnet, "layer3", rx), cut.head(rx))
        torch.testing.assert_close(got, resnet(rx), rtol=1e-4, atol=1e-4)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


class Side(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.side = nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        self.side(x)
        return self.fc(self.conv(x).mean((2, 3)))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv(x)
        if a.mean() > 0:  # control flow on a value: fx cannot trace it
            a = a * 2
        return self.fc(a.mean((2, 3)))


@pytest.mark.parametrize(
    ("net", "layer"), [(Twice(), "conv"), (Side(), "side"), (Branchy(), "conv"), (Twice(), "nope")]
)
def test_no_cut_where_there_is_none(net: nn.Module, layer: str) -> None:
    assert split.split_at(net, layer) is None


class Convs(TorchDispatchMode):
    """Counts the convolutions dispatched (aten's and oneDNN's fused ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.n += "convolution" in func.__name__ and "reorder" not in func.__name__  # not the weight packing
        return func(*args, **(kwargs or {}))


def convs(fn) -> int:  # noqa: ANN001
    with Convs() as mode:
        fn()
    return mode.n


def test_ablationcam_runs_the_part_before_the_layer_once_per_image_not_per_chunk(
    resnet: nn.Module, rx: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(bs: int) -> int:
        return convs(lambda: camlib.ablationcam(resnet, rx[:1], "layer4", batch_size=bs, progress=False))

    assert run(16) == run(128)  # 512 channels: 32 chunks or 4, and no convolution after layer4
    monkeypatch.setattr(family, "split_at", lambda *_: None)
    assert run(16) > run(128) + 20 * 20  # without the cut: ~20 convolutions per extra chunk


@pytest.mark.parametrize("layer", ["layer4", "layer3.1.conv2", "layer2"])
def test_ablationcam_with_and_without_the_cut_agree(
    resnet: nn.Module, rx: Tensor, layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = [3, 7]
    got = camlib.ablationcam(resnet, rx, layer, targets, batch_size=48, progress=False)
    monkeypatch.setattr(family, "split_at", lambda *_: None)
    ref = camlib.ablationcam(resnet, rx, layer, targets, batch_size=48, progress=False)
    assert got.abs().amax() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().amax()))


class ReadsAfterWrite(nn.Module):
    """``skip`` is written in place after the layer and read after that: the graph's data flow misses it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.conv1(x)
        y = self.conv2(skip)
        skip.add_(y)  # (fx would trace `skip += y` as an out-of-place add)
        return self.fc(skip.mean((2, 3)) + y.mean((2, 3)))


class WritesIntoPhi(nn.Module):
    """The part after ``conv2`` adds in place into a tensor from before it, read by nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.conv1(x)
        return self.fc(skip.add_(self.conv2(x)).mean((2, 3)))


def ablation_with_a_hook(net: nn.Module, x: Tensor, layer: str, cls: int) -> Tensor:
    """One image: each channel of the layer zeroed by a hook on the eager model, one forward each."""
    a = layer_output(net, layer, x)
    zero: list[int | None] = [None]

    def hook(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        return out if zero[0] is None else out * (torch.arange(out.shape[1]) != zero[0])[:, None, None]

    handle = net.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            y = net(x)[0, cls]
            w = []
            for k in range(a.shape[1]):
                zero[0] = k
                w.append((y - net(x)[0, cls]) / y)
    finally:
        handle.remove()
    return torch.relu(torch.einsum("k,khw->hw", torch.stack(w), a[0]))[None]


def test_no_cut_where_a_value_is_written_in_place_and_read_again() -> None:
    torch.manual_seed(0)
    net, x = ReadsAfterWrite().eval(), torch.rand(1, 3, 8, 8)
    assert split.split_at(net, "conv2") is None
    got = camlib.ablationcam(net, x, "conv2", [2], batch_size=3, progress=False)
    torch.testing.assert_close(got, ablation_with_a_hook(net, x, "conv2", 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3])  # 1: the same one-image phi would serve the next chunk
def test_ablationcam_where_the_tail_writes_into_what_came_before(batch_size: int) -> None:
    torch.manual_seed(0)
    net, x = WritesIntoPhi().eval(), torch.rand(1, 3, 8, 8)
    assert split.split_at(net, "conv2") is not None  # a cut: the run itself must notice the write
    got = camlib.ablationcam(net, x, "conv2", [2], batch_size, progress=False)
    torch.testing.assert_close(got, ablation_with_a_hook(net, x, "conv2", 2), rtol=1e-5, atol=1e-6)


def test_ablationcam_leaves_no_hook(resnet: nn.Module, rx: Tensor) -> None:
    camlib.ablationcam(resnet, rx[:1], "layer3.1.conv2", batch_size=64, progress=False)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in resnet.modules())


def test_small_net_is_cut() -> None:
    net = SmallGapNet(num_classes=5, widths=(6, 8, 10), seed=0).eval()
    for layer in ("features.1", "features.4"):
        assert split.split_at(net, layer) is not None


def test_a_cut_that_disagrees_with_the_hook_is_dropped(
    resnet: nn.Module, rx: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: each chunk size's first cut run is checked against the whole model with the hook."""
    ref = camlib.ablationcam(resnet, rx[:1], "layer3", [4], batch_size=100, progress=False)

    class Off(split.Split):
        def after(self, a: Tensor, phi: tuple) -> Tensor:
            out = super().after(a, phi)
            return out + 0.01 * torch.arange(len(out))[:, None]  # each ablated copy off by a different amount

    monkeypatch.setattr(family, "split_at", lambda *a: Off(*vars(split.split_at(*a)).values()))
    got = camlib.ablationcam(resnet, rx[:1], "layer3", [4], batch_size=100, progress=False)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().amax()))


def test_ablationcam_of_one_image_for_several_classes(resnet: nn.Module, rx: Tensor) -> None:
    """K classes of one image give K rows of weights, each that class's alone; the activations may come
    with one row per class (as camlib.layer_gradients gives them) or one row."""
    layer, classes = "layer3.1.conv2", [3, 7, 9]
    acts, _, _ = camlib.layer_gradients(resnet, rx[:1], layer, classes)
    assert acts.shape[0] == 3
    got = family.ablationcam_weights(resnet, rx[:1], layer, acts, classes, 100, progress=False)
    one = torch.cat(
        [family.ablationcam_weights(resnet, rx[:1], layer, acts[:1], [c], 100, progress=False) for c in classes]
    )
    assert got.shape == (3, acts.shape[1]) and got.abs().amax() > 0
    torch.testing.assert_close(got, one, rtol=1e-5, atol=1e-6)
