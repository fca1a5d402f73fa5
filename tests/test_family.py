"""HiResCAM, XGrad-CAM, LayerCAM, Score-CAM, Ablation-CAM, Eigen-CAM (camlib.family).

Each method is checked against an independent reference computed by hand (a split of the
net into body and tail, explicit loops or einsums, float64), against pytorch-grad-cam and
torchcam where they implement it, and for camlib's rules (bad input, hooks, flags, .grad).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import Tensor, nn

import camlib
from camlib import family
from camlib.smallnet import SmallGapNet

LAYERS = ["features.1", "features.4"]  # an intermediate layer and the last one (GAP + linear head)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    net = SmallGapNet(num_classes=5, widths=(6, 8, 10), seed=0).double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return net


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.rand(3, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


TARGETS = [1, 2, 3]


def split(net: nn.Module, layer: str) -> tuple[nn.Module, nn.Module]:
    """``body`` (input to ``layer``) and ``tail`` (the rest, incl. pooling and fc), by hand."""
    i = int(layer.split(".")[1]) + 1
    body = nn.Sequential(net.normalize, *net.features[:i])
    tail = nn.Sequential(*net.features[i:], net.pool, nn.Flatten(), net.fc)
    return body, tail


def reference(net: nn.Module, x: Tensor, layer: str, targets: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """``(A, dS/dA, logits)`` without hooks: a leaf ``A`` fed to the hand-made tail."""
    body, tail = split(net, layer)
    with torch.no_grad():
        a = body(x)
    a.requires_grad_(True)
    logits = tail(a)
    (g,) = torch.autograd.grad(logits.gather(1, torch.tensor(targets)[:, None]).sum(), a)
    return a.detach(), g, logits.detach()


def close(actual: Tensor, expected: Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(1.0, float(expected.abs().max())))


def nondegenerate(maps: Tensor) -> None:
    assert torch.isfinite(maps).all()
    assert (maps.flatten(1).amax(1) > maps.flatten(1).amin(1)).all(), "a constant map"


# --------------------------------------------------------------------------- formulas, by hand


@pytest.mark.parametrize("layer", LAYERS)
def test_gradient_methods_match_hand_einsums(net: nn.Module, x: Tensor, layer: str) -> None:
    a, g, _ = reference(net, x, layer, TARGETS)
    hires = torch.einsum("bkhw,bkhw->bhw", g, a)
    alpha = torch.einsum("bkhw,bkhw->bk", a, g) / torch.einsum("bkhw->bk", a)
    alpha = torch.nan_to_num(alpha, nan=0.0)  # channels that are all zero (after ReLU) get 0
    xgrad = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, a))
    layer_ = torch.relu(torch.einsum("bkhw,bkhw->bhw", g.clamp(min=0), a))
    for fn, expected in [(camlib.hirescam, hires), (camlib.xgradcam, xgrad), (camlib.layercam, layer_)]:
        got = fn(net, x, layer, TARGETS)
        nondegenerate(got)
        close(got, expected)


def test_hirescam_at_a_gap_linear_head_is_cam_over_hw(net: nn.Module, x: Tensor) -> None:
    """At GAP + linear, dy^c/dA^k_ij = w^c_k / hw for every pixel: HiResCAM = CAM / hw, signs included."""
    cam = camlib.cam(net, x, TARGETS)
    hires = camlib.hirescam(net, x, "features.4", TARGETS)
    h, w = cam.shape[-2:]
    assert (cam < 0).any()  # the test would be weaker on a map without negative values
    close(hires * (h * w), cam)
    # and Grad-CAM, which averages the same constant gradient, is ReLU of the same map
    close(camlib.gradcam(net, x, "features.4", TARGETS), torch.relu(hires))


def test_hirescam_differs_from_gradcam_at_an_intermediate_layer(net: nn.Module, x: Tensor) -> None:
    hires = torch.relu(camlib.hirescam(net, x, "features.1", TARGETS))
    grad = camlib.gradcam(net, x, "features.1", TARGETS)
    diff = (camlib.normalize(hires) - camlib.normalize(grad)).abs().amax()
    assert diff > 0.1, diff  # the gradient varies over space there, so averaging it changes the map


def test_xgradcam_conservation_and_sensitivity_at_gap_head(net: nn.Module, x: Tensor) -> None:
    """Fu et al.'s axioms hold exactly when the score is linear in A (GAP + linear head)."""
    layer = "features.4"
    a, g, logits = reference(net, x, layer, TARGETS)
    alpha = family.xgradcam_weights(a, g)
    y = logits.gather(1, torch.tensor(TARGETS)[:, None])[:, 0]
    bias = net.fc.bias.detach()[TARGETS]
    # conservation: the map before ReLU sums to the score (minus the bias)
    close(torch.einsum("bk,bkhw->b", alpha, a), y - bias)
    # sensitivity: channel k's share is what the score loses when channel k is zeroed
    share = alpha * a.sum(dim=(2, 3))
    drop = family.ablationcam_weights(net, x, layer, a, TARGETS, progress=False) * y[:, None]
    close(share, drop, 1e-9)


def test_layercam_fusion_matches_torchcam(net: nn.Module, x: Tensor) -> None:
    from torchcam.methods import LayerCAM

    maps = [camlib.normalize(camlib.layercam(net, x, layer, TARGETS)).float() for layer in LAYERS]
    fused = family.fuse_layers(maps)
    assert fused.shape == (3, *maps[0].shape[-2:])
    torch.testing.assert_close(fused, LayerCAM.fuse_cams(maps), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least one map"):
        family.fuse_layers([])


def scorecam_by_hand(net: nn.Module, x: Tensor, a: Tensor, targets: list[int]) -> Tensor:
    """Explicit loops: for each image and channel, mask the image, one forward, softmax over channels."""
    out = []
    for b in range(x.shape[0]):
        s = []
        for k in range(a.shape[1]):
            up = torch.nn.functional.interpolate(a[b, k][None, None], size=x.shape[-2:], mode="bilinear")[0, 0]
            h = (up - up.min()) / (up.max() - up.min() + 1e-8)
            with torch.no_grad():
                s.append(net(x[b : b + 1] * h)[0, targets[b]])
        w = torch.softmax(torch.stack(s), 0)
        out.append(torch.relu((w[:, None, None] * a[b]).sum(0)))
    return torch.stack(out)


@pytest.mark.parametrize("layer", LAYERS)
def test_scorecam_matches_loops_and_does_not_depend_on_batch_size(net: nn.Module, x: Tensor, layer: str) -> None:
    a, _, _ = reference(net, x, layer, TARGETS)
    expected = scorecam_by_hand(net, x, a, TARGETS)
    for bs in (1, 7, 64):
        got = camlib.scorecam(net, x, layer, TARGETS, batch_size=bs, progress=False)
        nondegenerate(got)
        close(got, expected, 1e-9)


def ablation_by_hand(net: nn.Module, x: Tensor, layer: str, targets: list[int]) -> Tensor:
    body, tail = split(net, layer)
    out = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            a = body(x[b : b + 1])
            y = tail(a)[0, targets[b]]
            w = []
            for k in range(a.shape[1]):
                ab = a.clone()
                ab[0, k] = 0
                w.append((y - tail(ab)[0, targets[b]]) / y)
            out.append(torch.relu(torch.einsum("k,khw->hw", torch.stack(w), a[0])))
    return torch.stack(out)


@pytest.mark.parametrize("layer", LAYERS)
def test_ablationcam_matches_loops(net: nn.Module, x: Tensor, layer: str) -> None:
    expected = ablation_by_hand(net, x, layer, TARGETS)
    for bs in (1, 4, 64):  # 4 does not divide the channel count: chunks straddle two images
        got = camlib.ablationcam(net, x, layer, TARGETS, batch_size=bs, progress=False)
        nondegenerate(got)
        close(got, expected, 1e-9)


class NoBroadcast(nn.Module):
    """A tail that reshapes with the input's batch size: the layer's extra rows cannot pass."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        f = self.net.features(self.net.normalize(x))
        return self.net.fc(f.reshape(x.shape[0], f.shape[1], -1).mean(-1))


def test_ablationcam_falls_back_to_whole_images_when_the_tail_mixes_rows(net: nn.Module, x: Tensor) -> None:
    wrapped = NoBroadcast(net)
    got = camlib.ablationcam(wrapped, x, "net.features.1", TARGETS, batch_size=5, progress=False)
    close(got, ablation_by_hand(net, x, "features.1", TARGETS), 1e-9)


@pytest.mark.parametrize("layer", LAYERS)
def test_eigencam_matches_numpy_svd(net: nn.Module, x: Tensor, layer: str) -> None:
    import numpy as np

    a, _, _ = reference(net, x, layer, TARGETS)
    for center in (False, True):
        got = camlib.eigencam(net, x, layer, center=center)
        for b in range(x.shape[0]):
            m = a[b].flatten(1).T.numpy()
            m = m - m.mean(0) if center else m
            proj = m @ np.linalg.svd(m, full_matrices=False)[2][0]
            proj = -proj if abs(proj.min()) > abs(proj.max()) else proj
            close(got[b], torch.from_numpy(proj).view(a.shape[-2:]))
    # after a ReLU the activations are >= 0, and the uncentred projection is too
    assert (camlib.eigencam(net, x, layer) >= -1e-12).all()


# --------------------------------------------------------------------------- against the libraries


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        net.fc.weight.mul_(100)  # random-weight logits are tiny otherwise; Score-CAM's softmax sees them
    return net


@pytest.fixture(scope="module")
def rx() -> Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


R_TARGETS = [1, 500]


def pgc(cls_name: str, net: nn.Module, layer: str, x: Tensor, **kw) -> Tensor:
    """pytorch-grad-cam's maps (ReLU, resize to the input, min-max), on a copy of the net (it fills .grad)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = copy.deepcopy(net)
    with getattr(pytorch_grad_cam, cls_name)(model=net, target_layers=[net.get_submodule(layer)], **kw) as ext:
        ext.batch_size = 64  # Score-CAM's chunk
        return torch.from_numpy(ext(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in R_TARGETS]))


def shown(raw: Tensor, x: Tensor) -> Tensor:
    """What pytorch-grad-cam shows: min-max(resize(min-max(ReLU(raw)))) = min-max(upsample(ReLU(raw)))."""
    return camlib.normalize(camlib.upsample(torch.relu(raw), x.shape[-2:]))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
@pytest.mark.parametrize(("name", "fn"), [("HiResCAM", "hirescam"), ("XGradCAM", "xgradcam"), ("LayerCAM", "layercam")])
def test_gradient_methods_against_pytorch_grad_cam(resnet: nn.Module, rx: Tensor, layer: str, name: str, fn: str):
    raw = getattr(camlib, fn)(resnet, rx, layer, R_TARGETS)
    nondegenerate(raw)
    # float32, cv2 vs torch bilinear, and XGrad-CAM's 1e-7 in their denominator: 1e-4
    torch.testing.assert_close(shown(raw, rx), pgc(name, resnet, layer, rx), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("name", "fn"), [("XGradCAM", "xgradcam"), ("LayerCAM", "layercam")])
def test_gradient_methods_against_torchcam(resnet: nn.Module, rx: Tensor, name: str, fn: str) -> None:
    import torchcam.methods

    with torch.enable_grad(), getattr(torchcam.methods, name)(resnet, "layer3") as extractor:
        theirs = extractor(class_idx=R_TARGETS, scores=resnet(rx))[0]  # ReLU'd, min-max normalised
    assert all(p.grad is None for p in resnet.parameters())
    raw = getattr(camlib, fn)(resnet, rx, "layer3", R_TARGETS)
    torch.testing.assert_close(camlib.normalize(raw), theirs, rtol=0, atol=1e-5)


def test_scorecam_against_pytorch_grad_cam(resnet: nn.Module, rx: Tensor) -> None:
    """Their masks: align_corners=True bilinear upsampling, min-max with 1e-8; weights softmax over channels."""
    x = rx[..., :32, :32]  # layer3 is 2 x 2 there: 256 channels, a quarter of the forwards at layer4 / 64 x 64
    raw = camlib.scorecam(resnet, x, "layer3", R_TARGETS, batch_size=64, progress=False, align_corners=True)
    nondegenerate(raw)
    torch.testing.assert_close(shown(raw, x), pgc("ScoreCAM", resnet, "layer3", x), rtol=0, atol=1e-4)


def test_scorecam_against_torchcam(resnet: nn.Module, rx: Tensor) -> None:
    """torchcam normalises each channel *before* upsampling (and subtracts the unmasked score, which the
    softmax ignores): other masks, so the maps agree only roughly."""
    from torchcam.methods import ScoreCAM

    x = rx[..., :32, :32]
    with torch.no_grad(), ScoreCAM(resnet, "layer3", batch_size=64) as extractor:
        resnet(x)
        theirs = extractor(class_idx=R_TARGETS)[0]
    raw = camlib.scorecam(resnet, x, "layer3", R_TARGETS, progress=False)
    diff = (camlib.normalize(raw) - theirs).abs().max()
    assert diff < 0.05, diff


def test_ablationcam_against_pytorch_grad_cam(resnet: nn.Module, rx: Tensor) -> None:
    """layer3 is post-ReLU (minimum 0), so their ablation value is 0, as in the paper."""
    x = rx[..., :32, :32]
    raw = camlib.ablationcam(resnet, x, "layer3", R_TARGETS, batch_size=64, progress=False)
    nondegenerate(raw[:1])  # image 1's map is all zero here (every weight < 0): both libraries agree on that too
    torch.testing.assert_close(shown(raw, x), pgc("AblationCAM", resnet, "layer3", x), rtol=0, atol=1e-4)


def test_eigencam_against_pytorch_grad_cam_up_to_sign(resnet: nn.Module, rx: Tensor) -> None:
    """They centre the activations, and an SVD's sign is arbitrary (theirs comes from LAPACK)."""
    raw = camlib.eigencam(resnet, rx, "layer3", center=True)
    theirs = pgc("EigenCAM", resnet, "layer3", rx)
    for b in range(rx.shape[0]):
        err = min((shown(s * raw[b : b + 1], rx)[0] - theirs[b]).abs().max() for s in (1, -1))
        assert err < 1e-4, err


# --------------------------------------------------------------------------- targets, batches


METHODS = ["hirescam", "xgradcam", "layercam", "scorecam", "ablationcam"]


def call(fn: str, net: nn.Module, x: Tensor, layer: str, targets) -> Tensor:
    kw = {"progress": False} if fn in ("scorecam", "ablationcam") else {}
    return getattr(camlib, fn)(net, x, layer, targets, **kw)


@pytest.mark.parametrize("fn", METHODS)
def test_one_target_for_a_batch_means_every_image(net: nn.Module, x: Tensor, fn: str) -> None:
    both = call(fn, net, x, "features.1", 2)
    for b in range(x.shape[0]):
        close(both[b], call(fn, net, x[b : b + 1], "features.1", 2)[0], 1e-9)


@pytest.mark.parametrize("fn", METHODS)
def test_one_image_with_several_targets_gives_one_map_each(net: nn.Module, x: Tensor, fn: str) -> None:
    many = call(fn, net, x[:1], "features.1", [0, 2, 4])
    assert many.shape[0] == 3
    for i, c in enumerate([0, 2, 4]):
        close(many[i], call(fn, net, x[:1], "features.1", c)[0], 1e-9)


# --------------------------------------------------------------------------- bad input


def test_eigencam_refuses_targets(net: nn.Module, x: Tensor) -> None:
    with pytest.raises(ValueError, match="class-free.*without targets"):
        camlib.eigencam(net, x, "features.4", targets=1)


@pytest.mark.parametrize("fn", ["scorecam", "ablationcam"])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_batch_size(net: nn.Module, x: Tensor, fn: str, bad) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        getattr(camlib, fn)(net, x, "features.4", batch_size=bad, progress=False)


@pytest.mark.parametrize("fn", ["scorecam", "ablationcam"])
def test_batch_size_that_does_not_fit_says_what_to_do(net: nn.Module, x: Tensor, fn: str, monkeypatch) -> None:
    net = copy.deepcopy(net)
    calls = {"n": 0}
    real = net.forward

    def forward(inp: Tensor) -> Tensor:
        calls["n"] += 1
        if calls["n"] > 2:  # the first forwards (logits, activations) fit; the big batches do not
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return real(inp)

    monkeypatch.setattr(net, "forward", forward)
    with pytest.raises(MemoryError, match=r"batch_size=32 .*smaller batch_size, e.g. batch_size=8"):
        getattr(camlib, fn)(net, x, "features.4", progress=False)
    assert not any(m._forward_hooks for m in net.modules())


def test_gradient_method_on_a_layer_without_gradient(x: Tensor) -> None:
    class Side(nn.Module):  # conv "side" is computed but does not reach the logits
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.side = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, inp: Tensor) -> Tensor:
            self.side(inp)
            return self.fc(self.body(inp).mean((2, 3)))

    side = Side().double()
    for method in (camlib.hirescam, camlib.gradcam, camlib.gradcam_pp, camlib.layer_gradients):
        with pytest.raises(camlib.LayerError, match="'side' does not reach the output.*path from the input to the log"):
            method(side, x, "side")
        assert not any(m._forward_hooks for m in side.modules())
    # the advice holds: Score-CAM and Eigen-CAM give a map there, Ablation-CAM (also named) a zero one
    assert camlib.scorecam(side, x, "side", progress=False).abs().amax() > 0
    assert camlib.eigencam(side, x, "side").abs().amax() > 0
    assert camlib.ablationcam(side, x, "side", progress=False).abs().amax() == 0


def test_scorecam_refuses_callable_targets(net: nn.Module, x: Tensor) -> None:
    with pytest.raises(TypeError, match="callable target only works with the gradient methods"):
        camlib.scorecam(net, x, "features.4", lambda z: z[:, 0], progress=False)


# --------------------------------------------------------------------------- nothing the user owns changes


def state(net: nn.Module) -> tuple:
    return (
        [m.training for m in net.modules()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules()),
        [p.grad for p in net.parameters()],
    )


@pytest.mark.parametrize("fn", [*METHODS, "eigencam"])
def test_hooks_flags_and_grad_untouched_even_after_an_error(x: Tensor, fn: str) -> None:
    net = SmallGapNet(num_classes=5, widths=(6, 8, 10), seed=0).double()
    net.train()
    net.features[1].eval()  # a mixed state, to restore exactly
    before = state(net)
    targets = None if fn == "eigencam" else TARGETS
    call(fn, net, x, "features.1", targets) if fn != "eigencam" else camlib.eigencam(net, x, "features.1")
    assert state(net) == before
    with pytest.raises((IndexError, ValueError)):
        if fn == "eigencam":
            camlib.eigencam(net, x[0], "features.1")  # a 3-d input
        else:
            call(fn, net, x, "features.1", [0, 1, 99])  # class 99 of 5
    assert state(net) == before
