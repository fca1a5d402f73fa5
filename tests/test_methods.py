"""camlib's CAM family against independent references.

Each method is compared with a reference computed another way, to a stated tolerance:

* a tiny seeded CNN in float64 whose forward *and backward* are written out by hand
  (``conv2d_input`` for the guided backward, finite differences for Grad-CAM's
  channel weights, double/triple backward through ``exp(S)`` for Grad-CAM++);
* torchvision ``resnet18(weights=None)`` (seeded, float64) at two layers, a batch of
  three images with three different targets, with the network split by hand into
  ``body`` and ``tail`` (no hooks) and guided backprop from a twin net whose ReLUs are
  replaced by ``clamp`` + a tensor hook;
* pytorch-grad-cam's ``GradCAM`` and ``GradCAMPlusPlus`` (float32), after the same
  upsampling and min-max normalisation.

Tolerances: float64 comparisons use ``rtol=1e-9`` and an ``atol`` of ``1e-9`` times the
reference's largest magnitude; finite differences ``1e-6`` relative; float32 cross-checks
``1e-4`` on maps normalised to [0, 1].
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.func import grad, vmap

import camlib


def close64(actual: Tensor, expected: Tensor, rel: float = 1e-9) -> None:
    """float64 agreement: rtol ``rel`` and atol ``rel`` times the reference's scale."""
    scale = float(expected.detach().abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


def nondegenerate(maps: Tensor) -> None:
    """Every map has a positive value (so agreement is not agreement of zeros)."""
    assert bool((maps.flatten(1).amax(1) > 0).all()), "a reference map is all zero: the test would be vacuous"


# --------------------------------------------------------------------------------------
# A tiny CNN with a hand-written forward and backward
# --------------------------------------------------------------------------------------

ACTS = ("relu", "relu_inplace", "functional", "method_inplace", "relu6")


class TinyNet(nn.Module):
    """conv(3→6) · act · conv(6→8, stride 2) · act · GAP · linear(8→5).

    ``act`` picks how the activation is written: module, in-place module, ``F.relu``,
    ``x.relu_()`` (return value ignored) or ``nn.ReLU6``; the guided rule must see all.
    """

    def __init__(self, act: str = "relu", classes: int = 5) -> None:
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.a1, self.a2 = self._act(), self._act()
        self.fc = nn.Linear(8, classes)

    def _act(self) -> nn.Module:
        if self.act == "relu6":
            return nn.ReLU6()
        return nn.ReLU(inplace=self.act == "relu_inplace")

    def activate(self, module: nn.Module, t: Tensor) -> Tensor:
        if self.act == "functional":
            return F.relu(t)
        if self.act == "method_inplace":
            t.relu_()
            return t
        return module(t)

    def forward(self, x: Tensor) -> Tensor:
        h = self.activate(self.a1, self.conv1(x))
        h = self.activate(self.a2, self.conv2(h))
        return self.fc(h.mean((2, 3)))


def tiny(act: str = "relu", seed: int = 0, scale: float = 1.0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(act).double().eval()
    with torch.no_grad():
        net.conv1.weight.mul_(scale)
    return net


def tiny_input(seed: int = 1, batch: int = 3, size: int = 8) -> Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, 3, size, size, dtype=torch.float64)


def act_fn(net: TinyNet, t: Tensor) -> Tensor:
    return t.clamp(0, 6) if net.act == "relu6" else t.clamp(min=0)


def act_mask(net: TinyNet, pre: Tensor) -> Tensor:
    return ((pre > 0) & (pre < 6)) if net.act == "relu6" else (pre > 0)


def tiny_forward(net: TinyNet, x: Tensor) -> dict[str, Tensor]:
    """Every intermediate of the tiny net, computed by hand (no modules called)."""
    with torch.no_grad():
        f1 = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
        a1 = act_fn(net, f1)
        f2 = F.conv2d(a1, net.conv2.weight, net.conv2.bias, stride=2, padding=1)
        a2 = act_fn(net, f2)
        logits = F.linear(a2.mean((2, 3)), net.fc.weight, net.fc.bias)
    return {"f1": f1, "a1": a1, "f2": f2, "a2": a2, "logits": logits}


def tiny_tail(net: TinyNet, layer: str, a: Tensor) -> Tensor:
    """Logits from the captured activation of ``layer`` ("a1" or "a2"), written by hand."""
    if layer == "a1":
        a = act_fn(net, F.conv2d(a, net.conv2.weight, net.conv2.bias, stride=2, padding=1))
    return F.linear(a.mean((2, 3)), net.fc.weight, net.fc.bias)


def fd_alpha(net: TinyNet, layer: str, a: Tensor, targets: list[int], eps: float = 1e-6) -> Tensor:
    r"""Grad-CAM's :math:`\alpha_k = \frac{1}{Z}\sum_{ij}\partial y/\partial A^k_{ij}` by central
    differences along the all-ones direction of channel ``k``: :math:`\frac{1}{Z}\frac{d}{dt} y(A + tE_k)`."""
    b, k, h, w = a.shape
    eye = torch.eye(k, dtype=a.dtype)[:, :, None, None].expand(k, k, h, w)
    out = torch.empty(b, k, dtype=a.dtype)
    with torch.no_grad():
        for i in range(b):
            plus = tiny_tail(net, layer, a[i] + eps * eye)[:, targets[i]]
            minus = tiny_tail(net, layer, a[i] - eps * eye)[:, targets[i]]
            out[i] = (plus - minus) / (2 * eps) / (h * w)
    return out


def guided_reference(net: TinyNet, x: Tensor, targets: list[int]) -> Tensor:
    """Guided backprop with the backward pass written out: masks by hand, ``conv2d_input``."""
    v = tiny_forward(net, x)
    b, _, h, w = v["a2"].shape
    r = net.fc.weight[targets][:, :, None, None].expand(b, -1, h, w) / (h * w)  # d y / d a2
    r = r * act_mask(net, v["f2"]) * (r > 0)
    r = torch.nn.grad.conv2d_input(v["a1"].shape, net.conv2.weight, r, stride=2, padding=1)
    r = r * act_mask(net, v["f1"]) * (r > 0)
    return torch.nn.grad.conv2d_input(x.shape, net.conv1.weight, r, padding=1)


TARGETS = [0, 3, 4]


@pytest.mark.parametrize("layer", ["a1", "a2"])
def test_gradcam_tiny_matches_finite_differences(layer: str) -> None:
    net, x = tiny(), tiny_input()
    acts = tiny_forward(net, x)[layer]
    alpha = fd_alpha(net, layer, acts, TARGETS)
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, acts))
    nondegenerate(expected)
    close64(camlib.gradcam(net, x, layer, TARGETS), expected, rel=1e-6)


def test_cam_tiny_and_gradcam_is_relu_cam_over_z() -> None:
    net, x = tiny(), tiny_input()
    a2 = tiny_forward(net, x)["a2"]
    expected = torch.einsum("bk,bkhw->bhw", net.fc.weight[TARGETS], a2)  # M_c = sum_k w^c_k f_k
    close64(camlib.cam(net, x, TARGETS), expected)
    z = a2.shape[-1] * a2.shape[-2]
    close64(camlib.gradcam(net, x, "a2", TARGETS), torch.relu(expected) / z)


@pytest.mark.parametrize("act", ACTS)
def test_guided_backprop_tiny_matches_hand_written_backward(act: str) -> None:
    # scale 4: some ReLU6 units saturate above 6, so the (0 < f < 6) mask is exercised
    net, x = tiny(act, scale=4.0), tiny_input()
    expected = guided_reference(net, x, TARGETS)
    if act == "relu6":
        assert bool((tiny_forward(net, x)["f1"] > 6).any())
    assert expected.abs().amax((1, 2, 3)).min() > 0
    close64(camlib.guided_backprop(net, x, TARGETS), expected)
    # the guided rule really changes the answer: the plain input gradient differs
    xg = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(net(xg).gather(1, torch.tensor(TARGETS)[:, None]).sum(), xg)[0]
    assert not torch.allclose(plain, expected)


def test_guided_gradcam_tiny() -> None:
    net, x = tiny(), tiny_input()
    a1 = tiny_forward(net, x)["a1"]
    heat = torch.relu(torch.einsum("bk,bkhw->bhw", fd_alpha(net, "a1", a1, TARGETS), a1))
    expected = guided_reference(net, x, TARGETS) * camlib.normalize(camlib.upsample(heat, x.shape[-2:]))[:, None]
    close64(camlib.guided_gradcam(net, x, "a1", TARGETS).double(), expected, rel=1e-5)


# --------------------------------------------------------------------------------------
# Grad-CAM++: the closed form against true 2nd and 3rd derivatives of Y = exp(S)
# --------------------------------------------------------------------------------------


class SmoothTail(TinyNet):
    """The tiny net with softplus after the last conv: S is *not* piecewise linear in ``a1``."""

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x))
        h = self.a1(h)  # identity-like: keeps "a1" a named layer
        return self.fc(F.softplus(self.conv2(h)).mean((2, 3)))


def general_alpha_weights(tail: Callable[[Tensor], Tensor], a: Tensor, targets: list[int]) -> Tensor:
    r"""Grad-CAM++ weights from the paper's general formula (Chattopadhyay et al., Eq. 10 and 7)

    .. math:: \alpha = \frac{\partial^2 Y}{2\,\partial^2 Y + \sum_{ab} A_{ab}\, \partial^3 Y},\quad
              w_k = \sum_{ij} \alpha_{ij} \mathrm{ReLU}(\partial Y / \partial A_{ij})

    with ``Y = exp(S)`` and the elementwise 2nd and 3rd derivatives taken by double and
    triple backward (``torch.func.grad`` nested, ``vmap`` over the basis vectors ``e``:
    :math:`\partial^2 Y/\partial A_e^2 = e^\top \nabla(e^\top \nabla Y)`). camlib, like Eq. 19
    and pytorch-grad-cam, drops the positive factor ``exp(S)`` from ``ReLU(dY/dA)``; it is
    divided out here so the two are comparable.
    """
    idx = torch.tensor(targets)[:, None]

    def y(t: Tensor) -> Tensor:  # sum over images: each image's Y depends on its own A only
        return torch.exp(tail(t).gather(1, idx)).sum()

    d1 = grad(y)

    def d2(t: Tensor, e: Tensor) -> Tensor:
        return (grad(lambda u: (d1(u) * e).sum())(t) * e).sum()

    def d3(t: Tensor, e: Tensor) -> Tensor:
        return (grad(lambda u: d2(u, e))(t) * e).sum()

    basis = torch.eye(a.numel(), dtype=a.dtype).view(a.numel(), *a.shape)
    second = vmap(d2, in_dims=(None, 0))(a, basis).view_as(a)
    third = vmap(d3, in_dims=(None, 0))(a, basis).view_as(a)
    denom = 2 * second + a.sum((2, 3), keepdim=True) * third
    alpha = torch.where(denom != 0, second / torch.where(denom != 0, denom, 1.0), 0.0)
    s = tail(a).gather(1, idx)[:, 0]
    return (alpha * torch.relu(d1(a))).sum((2, 3)) / torch.exp(s)[:, None]


@pytest.mark.parametrize("layer", ["a1", "a2"])
def test_gradcam_pp_closed_form_equals_higher_derivatives(layer: str) -> None:
    # At "a2" the head is GAP + linear; at "a1" a conv and a ReLU follow. Both make S
    # piecewise linear in A, so d2S = d3S = 0 and Eq. 19 is exact.
    net, x = tiny(), tiny_input(size=4)
    a = tiny_forward(net, x)[layer]
    weights = general_alpha_weights(lambda t: tiny_tail(net, layer, t), a, TARGETS)
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", weights, a))
    nondegenerate(expected)
    close64(camlib.gradcam_pp(net, x, layer, TARGETS), expected, rel=1e-8)


def test_gradcam_pp_closed_form_is_not_exact_for_a_smooth_tail() -> None:
    """The check above can fail: with softplus after the layer, d2S != 0 and Eq. 19 is off."""
    torch.manual_seed(0)
    net = SmoothTail().double().eval()
    x = tiny_input(size=4)
    with torch.no_grad():
        a = net.a1(torch.relu(net.conv1(x)))

    def tail(t: Tensor) -> Tensor:
        return net.fc(F.softplus(net.conv2(t)).mean((2, 3)))

    expected = torch.relu(torch.einsum("bk,bkhw->bhw", general_alpha_weights(tail, a, TARGETS), a))
    ours = camlib.gradcam_pp(net, x, "a1", TARGETS)
    assert (ours - expected).abs().max() > 1e-3 * expected.abs().max()


# --------------------------------------------------------------------------------------
# resnet18(weights=None), seeded, float64, two layers, batch of 3 with different targets
# --------------------------------------------------------------------------------------

R_TARGETS = [1, 500, 999]


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).double().eval()


@pytest.fixture(scope="module")
def rx() -> Tensor:
    torch.manual_seed(2)
    return torch.randn(3, 3, 64, 64, dtype=torch.float64)


def split_resnet(net: nn.Module, layer: str) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    """``body`` (stem up to ``layer``) and ``tail`` (the rest, incl. pooling and fc), by hand."""
    stages = ["layer1", "layer2", "layer3", "layer4"]
    upto = stages.index(layer) + 1
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *[getattr(net, s) for s in stages[:upto]])

    def tail(a: Tensor) -> Tensor:
        for s in stages[upto:]:
            a = getattr(net, s)(a)
        return net.fc(torch.flatten(net.avgpool(a), 1))

    return body, tail


def resnet_reference(net: nn.Module, x: Tensor, layer: str, targets: list[int]) -> tuple[Tensor, Tensor]:
    """``(A, dS/dA)`` from the hand split: a leaf ``A`` fed to ``tail``, no hooks anywhere."""
    body, tail = split_resnet(net, layer)
    with torch.no_grad():
        a = body(x)
    a.requires_grad_(True)
    s = tail(a).gather(1, torch.tensor(targets)[:, None])
    (g,) = torch.autograd.grad(s.sum(), a)
    return a.detach(), g


def gradcam_pp_formula(a: Tensor, g: Tensor) -> Tensor:
    """Eq. 19 written per channel with explicit sums (another spelling of the closed form)."""
    out = torch.zeros(a.shape[0], a.shape[2], a.shape[3], dtype=a.dtype)
    for b in range(a.shape[0]):
        w = torch.zeros(a.shape[1], dtype=a.dtype)
        for k in range(a.shape[1]):
            gk, total = g[b, k], a[b, k].sum()
            den = 2 * gk**2 + total * gk**3
            alpha = torch.where(den == 0, torch.zeros_like(gk), gk**2 / torch.where(den == 0, 1.0, den))
            w[k] = (alpha * gk.clamp(min=0)).sum()
        out[b] = (w[:, None, None] * a[b]).sum(0)
    return torch.relu(out)


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_resnet18_gradcam_and_pp(resnet: nn.Module, rx: Tensor, layer: str) -> None:
    a, g = resnet_reference(resnet, rx, layer, R_TARGETS)
    acts, grads, _ = camlib.layer_gradients(resnet, rx, layer, R_TARGETS)
    close64(acts, a)
    close64(grads, g)
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", g.mean((2, 3)), a))
    nondegenerate(expected)
    close64(camlib.gradcam(resnet, rx, layer, R_TARGETS), expected)
    expected_cf = torch.relu(torch.einsum("bk,bkhw->bhw", -g.mean((2, 3)), a))  # negated gradients
    assert bool((expected_cf > 0).any())  # (some images' maps are all positive before the ReLU)
    close64(camlib.gradcam(resnet, rx, layer, R_TARGETS, counterfactual=True), expected_cf)
    expected_pp = gradcam_pp_formula(a, g)
    nondegenerate(expected_pp)
    close64(camlib.gradcam_pp(resnet, rx, layer, R_TARGETS), expected_pp)


def test_resnet18_cam_and_gradcam_last_layer(resnet: nn.Module, rx: Tensor) -> None:
    body, _ = split_resnet(resnet, "layer4")
    with torch.no_grad():
        feats = body(rx)
    expected = torch.einsum("bk,bkhw->bhw", resnet.fc.weight[R_TARGETS], feats)
    close64(camlib.cam(resnet, rx, R_TARGETS), expected)
    # at a GAP + linear head: alpha = w / Z exactly, so Grad-CAM = ReLU(CAM) / Z
    z = feats.shape[-1] * feats.shape[-2]
    close64(camlib.gradcam(resnet, rx, "layer4", R_TARGETS), torch.relu(expected) / z)


class HookReLU(nn.Module):
    """Reference guided ReLU: ``clamp`` forward, a tensor hook keeps positive gradients."""

    def forward(self, t: Tensor) -> Tensor:
        out = t.clamp(min=0)
        if out.requires_grad:
            out.register_hook(lambda grad: grad.clamp(min=0))
        return out


def guided_twin(net: nn.Module) -> nn.Module:
    twin = copy.deepcopy(net)
    for module in twin.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, HookReLU())
    return twin


def input_gradient(net: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    xg = x.clone().requires_grad_(True)
    s = net(xg).gather(1, torch.tensor(targets)[:, None])
    return torch.autograd.grad(s.sum(), xg)[0]


def test_resnet18_guided_backprop_and_guided_gradcam(resnet: nn.Module, rx: Tensor) -> None:
    expected = input_gradient(guided_twin(resnet), rx, R_TARGETS)
    gb = camlib.guided_backprop(resnet, rx, R_TARGETS)
    close64(gb, expected)
    for i, t in enumerate(R_TARGETS):  # each image's row is its own
        close64(camlib.guided_backprop(resnet, rx[i : i + 1], t), expected[i : i + 1])
    a, g = resnet_reference(resnet, rx, "layer3", R_TARGETS)
    heat = torch.relu(torch.einsum("bk,bkhw->bhw", g.mean((2, 3)), a))
    expected_ggc = expected * camlib.normalize(camlib.upsample(heat, rx.shape[-2:]))[:, None]
    close64(camlib.guided_gradcam(resnet, rx, "layer3", R_TARGETS).double(), expected_ggc, rel=1e-5)


# --------------------------------------------------------------------------------------
# Cross-check with pytorch-grad-cam (float32; where it is correct)
# --------------------------------------------------------------------------------------
# pytorch-grad-cam upsamples with cv2 to the input size and min-max normalises each map,
# so ours go through camlib.upsample + camlib.normalize first. Where it differs:
# * one target for a batch: it zips targets with images, so with ONE target only image 0
#   gets a gradient and the others an all-zero map; we always pass one target per image.
# * Grad-CAM++: it adds eps = 1e-6 to the denominator 2 g^2 + sum(A) g^3 (camlib: alpha = 0
#   only where the denominator is exactly 0). With g ~ 1e-3, as in a randomly initialised
#   resnet18, that eps is as large as the denominator, so the fc weights are scaled by 100
#   here to make g^2 >> eps and compare the formula itself.
# * it calls loss.backward() through the whole net (fills every parameter's .grad) and
#   puts the model in eval mode for good; none of that changes the maps.
# torchcam's GradCAM is compared below; its GradCAMpp is not: its denominator uses
# sum_ab(A_ab g_ab^3) instead of sum_ab(A_ab) g_ij^3 (Eq. 19). The two agree only where g is
# constant over space, e.g. at the last layer of a GAP + linear net; at layer3 they differ.


@pytest.fixture(scope="module")
def resnet32() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        net.fc.weight.mul_(100)
    return net


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_against_pytorch_grad_cam(resnet32: nn.Module, rx: Tensor, method: str, layer: str) -> None:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = rx.float()
    net = copy.deepcopy(resnet32)  # it leaves .grad filled; keep the shared model clean
    cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    with cls(model=net, target_layers=[getattr(net, layer)]) as extractor:
        theirs = torch.from_numpy(extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in R_TARGETS]))
        their_grads = extractor.activations_and_grads.gradients[0]
    raw = getattr(camlib, method)(resnet32, x, layer, R_TARGETS)
    nondegenerate(raw)
    ours = camlib.normalize(camlib.upsample(raw, x.shape[-2:]))
    # float32 and cv2 vs torch bilinear: 1e-4; Grad-CAM++: their eps moves maps by up to ~2e-4 here
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4 if method == "gradcam" else 1e-3)
    _, grads, _ = camlib.layer_gradients(resnet32, x, layer, R_TARGETS)
    # camlib runs CPU batches channels-last (other float sums than their contiguous forward):
    # equal to float32 rounding, stated relative to the gradient's largest entry
    scale = their_grads.abs().max().item()
    torch.testing.assert_close(grads, their_grads, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_gradcam_against_torchcam(resnet32: nn.Module, rx: Tensor, layer: str) -> None:
    from torchcam.methods import GradCAM

    x = rx.float()
    with torch.enable_grad(), GradCAM(resnet32, layer) as extractor:
        theirs = extractor(class_idx=R_TARGETS, scores=resnet32(x))[0]  # ReLU'd, min-max normalised
    assert all(p.grad is None for p in resnet32.parameters())
    raw = camlib.gradcam(resnet32, x, layer, R_TARGETS)
    torch.testing.assert_close(camlib.normalize(raw), theirs, rtol=0, atol=1e-5)
