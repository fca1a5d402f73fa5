"""Batch-norm folding on the CPU (camlib.fold): same numbers, the user's model untouched, safe fallbacks.

References are the unfolded model's own outputs (``cpu_twin`` replaced by the identity), i.e.
camlib as it ran before folding.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

import camlib
import camlib.hooks as hooks
from camlib import fold

EGYPTIAN_CAT = 285


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial running statistics, so a wrong fold would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


@pytest.fixture
def unfolded(monkeypatch: pytest.MonkeyPatch):
    def use() -> None:  # at the source: family and metrics.road import cpu_twin by name, fold.folded reaches them all
        monkeypatch.setattr(fold, "folded", lambda net, keep=(): net)

        def no_twin(*args: object, **kwargs: object) -> None:
            raise AssertionError("a folded convolution ran in the unfolded reference")

        monkeypatch.setattr(fold._FoldedConv, "forward", no_twin)

    return use


def _tiny() -> nn.Sequential:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.2, 3.0)
                m.weight.normal_()
                m.bias.normal_()
    return net


def test_every_pair_of_resnet_and_lite0_is_found(resnet18, real_model):
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in resnet18.modules())
    assert len(fold.fold_pairs(resnet18)) == bns == 20
    lite_bns = sum(isinstance(m, nn.BatchNorm2d) for m in real_model.net.modules())
    assert len(fold.fold_pairs(real_model.net)) == lite_bns


@pytest.mark.parametrize("which", ["tiny", "resnet18", "lite0"])
def test_the_twin_computes_what_the_model_computes(which, resnet18, real_model, chelsea_x):
    net = {"tiny": _tiny(), "resnet18": resnet18, "lite0": real_model.net}[which]
    x = chelsea_x if which == "lite0" else torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    twin = fold.folded(net)
    assert twin is not net
    with torch.no_grad():
        ref = net(x)
        for inp in (x.contiguous(), x.contiguous(memory_format=torch.channels_last)):  # chelsea_x is channels-last
            assert _rel(twin(inp), ref) < 1e-5


def test_the_twin_shares_every_tensor_and_the_model_is_untouched(resnet18):
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    ptrs = {id(p) for p in resnet18.parameters()} | {id(b) for b in resnet18.buffers()}
    twin = fold.folded(resnet18)
    assert {id(p) for p in twin.parameters()} | {id(b) for b in twin.buffers()} <= ptrs
    with torch.no_grad():
        twin(torch.randn(1, 3, 64, 64))
    assert all(torch.equal(v, before[k]) for k, v in resnet18.state_dict().items())
    assert type(resnet18.bn1) is nn.BatchNorm2d and type(resnet18.conv1) is nn.Conv2d
    assert not any(m._forward_hooks for m in resnet18.modules())


def test_the_twin_is_cached_and_follows_the_models_weights():
    net = _tiny()
    x = torch.randn(2, 3, 16, 16)
    twin = fold.folded(net)
    assert fold.folded(net) is twin
    with torch.no_grad():
        twin(x)  # the scale and shift are now kept between calls
        for change in (  # in place: the shared tensors, seen by the twin (their version counters move)
            lambda: net[1].running_var.mul_(4.0),
            lambda: net[1].running_mean.add_(0.5),
            lambda: net[4].weight.mul_(-2.0),
            lambda: net[4].bias.add_(1.0),
            lambda: net[0].bias.sub_(0.3),
            lambda: net[0].weight.mul_(0.5),  # a convolution's weight: its packed copy is made again
            lambda: net[3].weight.add_(0.1),
        ):
            before = twin(x)
            change()
            after, ref = twin(x), net(x)
            assert _rel(after, ref) < 1e-5 and _rel(before, ref) > 1e-3
    with torch.no_grad():
        for p in net.parameters():  # new storage for the same objects, no version change: recomputed
            p.data = p.data * 1.5
        assert fold.folded(net) is twin
        assert _rel(twin(x), net(x)) < 1e-5
    with torch.no_grad():
        before = twin(x)
    net.train()  # a training forward updates the running statistics inside the kernel (no version moves) ...
    net(torch.randn(4, 3, 16, 16) * 3 + 1)
    net.eval()  # ... but counts the batch in place: recomputed
    assert fold.folded(net) is twin
    with torch.no_grad():
        after, ref = twin(x), net(x)
    assert _rel(after, ref) < 1e-5 and _rel(before, ref) > 1e-3
    net[3] = nn.Conv2d(8, 8, 3, padding=1).eval()  # a replaced module: a new twin
    assert fold.folded(net) is not twin
    with torch.no_grad():
        assert _rel(fold.folded(net)(x), net(x)) < 1e-5


class _Shift(nn.Module):
    """A leaf with a plain attribute its forward reads (like a Normalize's mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.by = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.by


class _Gated(nn.Module):
    """A block that contains a folded pair and reads a plain attribute of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.shift, self.body, self.skip = _Shift(), _tiny()[:6], False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.shift(x))
        return out + out.mean() if self.skip else out


def test_the_twin_sees_a_changed_attribute_of_the_model():
    """A plain attribute changed on the model (a leaf's setting, a batch norm's eps, a convolution's padding, a
    block's flag) shows in the next call's result, whichever method ran before (the twin shares what it does
    not fold, reads the folded pairs' settings from the model's modules, and is rebuilt when a copied
    module's plain attribute changes)."""
    net = nn.Sequential(_Gated(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    edits = (
        lambda: setattr(net[0].shift, "by", 0.7),  # a shared leaf
        lambda: setattr(net[0].body[1], "eps", 0.5),  # a folded batch norm's setting
        lambda: setattr(net[0].body[3], "padding", (0, 0)),  # a folded convolution's geometry (packed weights)
        lambda: setattr(net[0], "skip", True),  # a copied block's own flag
    )
    for edit in edits:
        before = camlib.gradcam(net, x, "0.body.5", [0, 1])
        cam_before = camlib.cam(net, x, [0, 1])
        edit()
        ref = copy.deepcopy(net)  # a model camlib has never seen: no twin yet
        after, cam_after = camlib.gradcam(net, x, "0.body.5", [0, 1]), camlib.cam(net, x, [0, 1])
        assert after.shape != before.shape or _rel(after, before) > 1e-3  # the edit changes the map ...
        assert _rel(after, camlib.gradcam(ref, x, "0.body.5", [0, 1])) < 1e-5  # ... and camlib shows the change
        assert _rel(cam_after, camlib.cam(ref, x, [0, 1])) < 1e-5 and not torch.equal(cam_after, cam_before)
    assert fold.folded(net) is not net and isinstance(fold.folded(net)[0].body[0], fold._FoldedConv)


def test_the_cache_does_not_keep_the_model_alive():
    net = _tiny()
    fold.folded(net)
    assert net in fold._TWINS
    n, alive = len(fold._TWINS), weakref.ref(net)
    del net
    gc.collect()
    assert alive() is None
    assert len(fold._TWINS) <= n - 1  # (other tests' models may go in the same collection)


def test_no_twin_for_a_hooked_or_training_model():
    net = _tiny()
    handle = net[2].register_forward_hook(lambda *a: None)
    assert fold.folded(net) is net
    handle.remove()
    net[4].train()
    assert fold.folded(net) is net


def test_a_kept_convolution_is_not_folded(resnet18):
    twin = fold.folded(resnet18, keep=("layer4.1.conv2",))
    assert type(twin.get_submodule("layer4.1.conv2")) is nn.Conv2d
    assert type(twin.get_submodule("layer4.1.bn2")) is nn.BatchNorm2d
    assert type(twin.get_submodule("layer4.1.conv1")) is not nn.Conv2d  # folded


class _Crossed(nn.Module):
    """Named like torchvision's block but wired differently: bn1 reads conv2's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv1(x), self.conv2(x)
        y = torch.cat([self.bn1(b), self.bn2(a)], 1)
        return self.head(y.mean((2, 3)))


_Crossed.__name__ = _Crossed.__qualname__ = "BasicBlock"
_Crossed.__module__ = "torchvision.models.resnet"


def test_a_wrongly_guessed_pairing_falls_back_to_the_model():
    torch.manual_seed(3)
    net = _Crossed().eval()
    with torch.no_grad():
        net.bn1.running_mean.fill_(1.0)
    x = torch.randn(2, 3, 8, 8)
    twin = fold.folded(net)
    assert twin is not net
    with pytest.raises(fold.FoldMismatch), torch.no_grad():
        twin(x)
    with torch.no_grad():
        assert torch.equal(hooks.forward_fast(net, x, twin=twin), net(x.contiguous(memory_format=torch.channels_last)))
    maps = camlib.gradcam(net, x, "bn1", targets=1)
    with torch.no_grad():
        assert maps.shape == (2, 8, 8)


@pytest.mark.parametrize(
    ("method", "layer"), [("gradcam", "layer4"), ("gradcam_pp", "layer3.1.bn2"), ("gradcam", "layer4.1.conv2")]
)
def test_gradient_maps_equal_the_unfolded_ones(resnet18, unfolded, method, layer):
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    fast = getattr(camlib, method)(resnet18, x, layer, [1, 2])
    unfolded()
    ref = getattr(camlib, method)(resnet18, x, layer, [1, 2])
    assert _rel(fast, ref) < 1e-4


def test_real_model_maps_and_metrics_equal_the_unfolded_ones(real_model, chelsea_x, unfolded):
    from camlib.metrics import deletion_curve

    maps = camlib.gradcam(real_model.net, chelsea_x, "bn2", EGYPTIAN_CAT)
    fast = (maps, deletion_curve(real_model.net, chelsea_x, maps, EGYPTIAN_CAT, steps=4).probs)
    unfolded()
    ref = (
        camlib.gradcam(real_model.net, chelsea_x, "bn2", EGYPTIAN_CAT),
        deletion_curve(real_model.net, chelsea_x, maps, EGYPTIAN_CAT, steps=4).probs,
    )
    assert _rel(fast[0], ref[0]) < 1e-4
    assert float((fast[1] - ref[1]).abs().max()) < 1e-5


def test_scorecam_runs_the_black_image_once_for_all_dead_channels():
    torch.manual_seed(5)
    net = _tiny()
    with torch.no_grad():
        net[4].bias[:5] = -50.0  # five channels of the second block are zero after the ReLU
    x = torch.rand(2, 3, 16, 16)
    with camlib.capture(net, "5") as cap, torch.no_grad():
        net(x)
    dead = int((cap.activation.flatten(2).amax(2) == 0).sum())
    assert dead >= 10  # at least the 5 channels x 2 images
    seen: list[int] = []
    handle = net.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].shape[0]))
    try:
        weights = camlib.family.scorecam_weights(net, x, cap.activation, [0, 3], batch_size=64, progress=False)
    finally:
        handle.remove()
    assert sum(seen) == 2 + (16 - dead) + 1  # the logits, the live pairs, one black image
    # by hand: every (image, channel) pair, one forward each
    with torch.no_grad():
        acts = cap.activation
        up = nn.functional.interpolate(acts, size=(16, 16), mode="bilinear", align_corners=False)
        lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
        h = (up - lo) / (hi - lo + 1e-8)
        ref = torch.stack([net(x[b] * h[b][:, None])[:, c] for b, c in [(0, 0), (1, 3)]]).softmax(1)
    assert _rel(weights, ref) < 1e-5


class _Counted(nn.Module):
    """:func:`_tiny` as ``body``, recording the rows of every whole-model forward (its twin's too: a deep copy)."""

    rows: list[int] = []

    def __init__(self) -> None:
        super().__init__()
        self.body = _tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).rows.append(x.shape[0])
        return self.body(x)


def _counted() -> _Counted:
    _Counted.rows = []
    return _Counted()


_FORWARD_ONLY = {  # one forward of x for the activations and the classes, then the method's own forwards
    "cam": lambda net, x: camlib.cam(net, x, [0, 3]),
    "scorecam": lambda net, x: camlib.scorecam(net, x, "body.5", [0, 3], batch_size=64, progress=False),
    # body.2: a conv + batch norm after the layer, so the ablated forwards' twin is compared too
    "ablationcam": lambda net, x: camlib.ablationcam(net, x, "body.2", [0, 3], batch_size=64, progress=False),
    "eigencam": lambda net, x: camlib.eigencam(net, x, "body.5"),
}


@pytest.mark.parametrize("method", list(_FORWARD_ONLY))
def test_the_first_forward_of_cam_and_the_forward_only_methods_runs_through_the_twin(method, unfolded, monkeypatch):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    bn_calls: list[int] = []
    bn_forward = nn.BatchNorm2d.forward
    monkeypatch.setattr(nn.BatchNorm2d, "forward", lambda self, inp: bn_calls.append(1) or bn_forward(self, inp))
    net = _counted()
    if method == "cam":
        camlib.methods.find_gap_head(net, x)  # once per model, with a hook on every module: the model itself
        bn_calls.clear()
        _Counted.rows = []
    fast = _FORWARD_ONLY[method](net, x)
    assert bn_calls == [] and _Counted.rows[0] == 2  # the model's own batch norms never ran
    if method == "scorecam":  # the classes come from that first forward: no second forward of x
        with camlib.capture(net, "body.5") as cap, torch.no_grad():
            net.body(x)
        dead = int((cap.activation.flatten(2).amax(2) == 0).sum())
        assert _Counted.rows == [2, 1, 16 - dead]  # then one black image, the live (image, channel) pairs
    unfolded()
    ref = _FORWARD_ONLY[method](_counted(), x)
    assert len(bn_calls) >= 2 and _rel(fast, ref) < 1e-4


def test_activations_and_residual_sums_run_inside_the_convolutions(resnet18, real_model):
    twin = fold.folded(resnet18)
    assert all(
        type(b).__name__ == "_FusedResBlock" for layer in ("layer1", "layer4") for b in twin.get_submodule(layer)
    )
    assert twin.layer1[0].conv2.act is not None and not twin.layer1[0].conv2.tracked
    tiny = _tiny()
    tiny_twin = fold.folded(tiny)
    assert [type(m) for m in tiny_twin[:6]].count(nn.Identity) == 2  # both ReLUs moved into their convolutions
    assert type(tiny[2]) is nn.ReLU and type(tiny[5]) is nn.ReLU  # the user's model keeps its own
    lite = fold.folded(real_model.net)
    assert type(lite.blocks[1][0].conv_dw.act) is nn.ReLU6 and lite.blocks[1][0].bn2.act is None
    assert type(real_model.net.blocks[1][0].bn2.act) is nn.ReLU6


def test_a_kept_module_keeps_its_own_output(resnet18, unfolded):
    """A hook on a plain batch norm must see it before the ReLU, so neither its ReLU nor its block is fused."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    block = fold.folded(resnet18, keep=("layer2.0.bn1",)).layer2[0]
    assert type(block).__name__ == "BasicBlock" and block.conv1.act is None
    assert (
        type(fold.folded(resnet18, keep=("layer2.0",)).layer2[0]).__name__ == "_FusedResBlock"
    )  # its output is the same
    tiny = _tiny()
    assert type(fold.folded(tiny, keep=("4",))[5]) is nn.ReLU

    def run() -> list[torch.Tensor]:  # the activations and gradients every gradient method starts from
        return [
            *camlib.layer_gradients(tiny, x, "4", 1)[:2],
            *camlib.layer_gradients(resnet18, x, "layer2.0.bn1", 1)[:2],
        ]

    fast = run()
    unfolded()
    ref = run()
    for a, b in zip(fast, ref, strict=True):
        assert _rel(a, b) < 1e-4
    assert float(ref[0].min()) < 0 and float(ref[2].min()) < 0  # before the ReLU: a fused one would show


def test_without_onednn_fusion_or_packing_the_twin_computes_the_same(resnet18, real_model, chelsea_x, monkeypatch):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        fused = [
            fold.folded(resnet18)(x.contiguous(memory_format=torch.channels_last)),
            fold.folded(real_model.net)(chelsea_x),
        ]
        have = fold._mkldnn
        monkeypatch.setattr(fold, "_mkldnn", lambda name: None if name == "_reorder_convolution_weight" else have(name))
        fold.forget(resnet18)
        fold.forget(real_model.net)
        unpacked = [  # a build without oneDNN's weight packing
            fold.folded(resnet18)(x.contiguous(memory_format=torch.channels_last)),
            fold.folded(real_model.net)(chelsea_x),
        ]
        weights = {id(p) for net in (resnet18, real_model.net) for p in net.parameters()}
        assert not any(k[0] in weights for k in _packed_now())
        monkeypatch.setattr(fold, "_mkldnn", lambda name: None)  # nor torch.ops.mkldnn._convolution_pointwise
        plain = [
            fold.folded(resnet18)(x.contiguous(memory_format=torch.channels_last)),
            fold.folded(real_model.net)(chelsea_x),
        ]
        ref = [resnet18(x), real_model.net(chelsea_x)]
    for a, b, c, r in zip(fused, plain, unpacked, ref, strict=True):
        assert _rel(a, r) < 1e-5 and _rel(b, r) < 1e-5 and _rel(c, a) < 1e-5


def _packed_now() -> dict[tuple[int, bool], torch.Tensor]:
    return {(id(w), scaled): hit[-1] for w, kept in fold._PACKED.items() for scaled, hit in kept.items()}


def test_the_packed_weights_are_made_once_shared_by_twins_and_follow_the_weights(resnet18):
    """The weights oneDNN gets in its own layout are kept between calls, one copy per weight for
    every twin of the model, and made again when the batch's shape or a weight changes."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).contiguous(
        memory_format=torch.channels_last
    )
    net = copy.deepcopy(resnet18)
    convs = {id(m.weight) for m in net.modules() if isinstance(m, nn.Conv2d)}
    with torch.no_grad():
        first = fold.folded(net)(x)
        kept = {k: v for k, v in _packed_now().items() if k[0] in convs}
        assert {k[0] for k in kept} == convs  # every convolution: 1×1, 3×3, stem, shortcut
        assert {k[1] for k in kept} == {False, True}  # plain, and scaled where a residual sum is fused
        again = fold.folded(net, keep=("layer3.0.conv1",))(x)  # another twin: the same copies
        assert all(_packed_now()[k] is v for k, v in kept.items())
        assert _rel(again, first) < 1e-5 and _rel(first, net(x)) < 1e-5
        fold.folded(net)(x[:1])  # another shape: made again
        assert not any(_packed_now()[k] is v for k, v in kept.items())
        for tensor, factor in ((net.layer4[1].conv2.weight, -2.0), (net.layer1[0].bn2.running_var, 3.0)):
            before = fold.folded(net)(x)
            tensor.mul_(factor)
            after, ref = fold.folded(net)(x), net(x)
            assert _rel(after, ref) < 1e-5 and _rel(before, ref) > 1e-3
    other = _tiny()
    with torch.no_grad():
        fold.folded(other)(torch.randn(1, 3, 8, 8))
    assert any(k[0] == id(other[0].weight) for k in _packed_now())
    fold.forget(net)  # on demand: this model's copies and twins, not another model's
    assert not any(k[0] in convs for k in _packed_now()) and net not in fold._TWINS
    assert any(k[0] == id(other[0].weight) for k in _packed_now()) and other in fold._TWINS
    with torch.no_grad():
        assert _rel(fold.folded(net)(x), net(x)) < 1e-5  # made again by the next call
    del net, first, again, tensor
    gc.collect()
    assert not any(k[0] in convs for k in _packed_now())  # dropped with the model


def test_no_packed_weights_are_kept_with_autograd_or_in_inference_mode():
    net = _tiny()
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    twin = fold.folded(net)
    convs = {id(net[0].weight), id(net[3].weight)}
    with torch.inference_mode():
        assert _rel(twin(x), net(x)) < 1e-5
    out = twin(x)  # with autograd: the weights as they are, a graph to them
    assert out.requires_grad and _rel(out.detach(), net(x).detach()) < 1e-5
    assert not any(k[0] in convs for k in _packed_now())


def test_the_gpu_path_without_a_relu_runs_the_pair_unfolded(resnet18, real_model, chelsea_x):
    """``_FoldedConv._cuda`` where cuDNN cannot fuse (ReLU6, or fusion off): the model's own conv →
    batch norm → activation, so the twin equals the model exactly. Run here on CPU tensors; on a GPU
    ``tools/gpu_check.py`` and the notebooks exercise the fused branch against the CPU."""
    for net, x in ((resnet18, torch.randn(2, 3, 64, 64)), (real_model.net, chelsea_x)):
        twin = fold.folded(net)
        convs = [m for m in twin.modules() if isinstance(m, fold._FoldedConv)]
        saved = fold._CUDNN_FUSED
        fold._CUDNN_FUSED = False
        try:
            for m in convs:
                m._compute = lambda x, other=None, m=m: m._cuda(x, other, *m._affine()[:2])
            with torch.no_grad():
                assert torch.equal(twin(x), net(x))
        finally:
            fold._CUDNN_FUSED = saved
            for m in convs:
                del m._compute
    assert fold.fused_relu(fold.folded(resnet18)) and not fold.fused_relu(fold.folded(real_model.net))


def test_the_module_walk_gives_every_module_once():
    shared = nn.Conv2d(3, 3, 1)
    net = nn.Sequential(shared, nn.Sequential(shared, nn.ReLU()), torchvision.models.resnet18())
    net.register_module("nothing", None)
    walked = hooks.modules(net)
    assert walked[0] is net and len(walked) == len(list(net.modules()))
    assert {id(m) for m in walked} == {id(m) for m in net.modules()}


@pytest.mark.parametrize(("k", "s", "p", "d"), [(3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1), (7, 2, 3, 1), (3, 1, 2, 2)])
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (1, 3), (5, 4)])
def test_output_pixels_and_the_one_pixel_case(k, s, p, d, hw):
    """A 1 × 1 output takes the plain path (torch 2.11's oneDNN fails on the fused one there); same values."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, k, s, p, d, bias=False)
    x = torch.randn(2, 8, *hw).contiguous(memory_format=torch.channels_last)
    assert fold._out_pixels(conv, x) == conv(x).shape[-2:].numel()
    net = nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2)
        torch.testing.assert_close(fold.folded(net)(x), net(x), rtol=1e-5, atol=1e-5)


def _fresh(net: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Grad-CAM of an independent copy of ``net`` as it is now: no twin, no packed weight of camlib's."""
    return camlib.gradcam(copy.deepcopy(net), x, layer)


def test_edits_that_move_no_version_counter_are_seen(resnet18):
    """A write through ``.data`` (pruning) and a fused optimizer's step change the weights without
    moving their version counters: the kept scale, shift and packed weights still follow them."""
    net = copy.deepcopy(resnet18)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    before = camlib.gradcam(net, x, "layer4")
    for m in net.modules():  # magnitude pruning, the usual idiom
        if isinstance(m, nn.Conv2d):
            m.weight.data *= m.weight.data.abs() > 0.05
    pruned = camlib.gradcam(net, x, "layer4")
    assert _rel(pruned, _fresh(net, x, "layer4")) < 1e-4 and _rel(pruned, before) > 1e-2
    net.layer2[0].bn1.running_var.data.mul_(4.0)
    assert _rel(camlib.gradcam(net, x, "layer4"), _fresh(net, x, "layer4")) < 1e-4
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    net(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    versions = [p._version for p in net.parameters()]
    opt.step()
    assert [p._version for p in net.parameters()] == versions  # the step moved no counter
    net.zero_grad(set_to_none=True)
    stepped = camlib.gradcam(net, x, "layer4")
    assert _rel(stepped, _fresh(net, x, "layer4")) < 1e-4 and _rel(stepped, pruned) > 1e-2


def _seq_relu6() -> nn.Sequential:
    """:func:`_tiny` with a ReLU6 after its first pair, whose activations reach past 1."""
    net = _tiny()
    net[2] = nn.ReLU6()
    net[1].running_var.fill_(0.01)  # large activations: the ReLU6's ceiling matters
    return net


def test_settings_of_shared_modules_changed_after_the_first_call_are_seen():
    """A ReLU6's ceiling and a convolution's padding mode live on modules the twin shares, not copies."""
    net = _seq_relu6()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    camlib.gradcam(net, x, "3")
    net[2].max_val = 1.0
    assert _rel(camlib.gradcam(net, x, "3"), _fresh(net, x, "3")) < 1e-4
    net[2].max_val = 6.0
    first = camlib.gradcam(net, x, "3")
    net[0].padding_mode = "reflect"
    reflect = camlib.gradcam(net, x, "3")
    assert _rel(reflect, _fresh(net, x, "3")) < 1e-4 and _rel(reflect, first) > 1e-2


def test_a_block_whose_forward_is_set_on_the_instance_is_run_as_it_is(resnet18):
    """An ablation (a ResNet block without its skip connection) set before or after the first call."""
    import types

    def no_skip(self: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(inp))))))

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    for after_a_call in (False, True):
        net = copy.deepcopy(resnet18)
        intact = camlib.gradcam(net, x, "layer4") if after_a_call else None
        net.layer3[1].forward = types.MethodType(no_skip, net.layer3[1])
        maps = camlib.gradcam(net, x, "layer4")
        with torch.no_grad():  # the reference: the model itself, unfolded (a hook keeps camlib off the twin)
            handle = net.register_forward_hook(lambda *_: None)
            try:
                ref = camlib.gradcam(net, x, "layer4")
            finally:
                handle.remove()
        assert _rel(maps, ref) < 1e-4
        assert intact is None or _rel(maps, intact) > 1e-2
    assert ("layer3.1.conv1", "layer3.1.bn1") not in fold.fold_pairs(net)


def test_a_model_that_cannot_run_gives_its_own_error_not_a_map(resnet18):
    """A residual that does not match its block's output, an input with the wrong channels or dtype:
    the twin does not stand in (oneDNN's fused sum does not check shapes); the model's error comes."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    net = copy.deepcopy(resnet18)
    camlib.gradcam(net, x, "layer4")
    net.layer2[0].conv2.padding = (2, 2)  # the block's output 10 × 10, its identity 8 × 8
    with pytest.raises(RuntimeError, match="must match the size"):
        camlib.gradcam(net, x, "layer4")
    with pytest.raises(RuntimeError, match="must match the size"):
        camlib.metrics.class_probabilities(net, x, torch.tensor([0]))
    with pytest.raises(RuntimeError, match="expected input.*to have 3 channels"):
        camlib.gradcam(resnet18, torch.randn(1, 4, 64, 64), "layer4")
    with pytest.raises(RuntimeError, match="Double"):  # the model's own message for a float64 batch
        camlib.gradcam(resnet18, x.double(), "layer4")
