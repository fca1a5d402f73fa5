r"""camlib.cam against independent computations.

CAM (Zhou et al. 2016): :math:`M_c(i,j) = \sum_k w^c_k f_k(i,j)`, raw; with global average
pooling the logit is :math:`y^c = \frac{1}{Z}\sum_{ij} M_c(i,j) + b_c`.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn

import camlib
from camlib import CamError


def _hooked_features(net: nn.Module, module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(features, logits) from a hand-written forward hook: the reference, not camlib.capture."""
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.setdefault("f", o.detach().clone()))
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        handle.remove()
    return store["f"], logits


def _by_hand(weight: Tensor, feats: Tensor, classes: list[int]) -> Tensor:
    """M_c = sum_k w_k^c f_k, as a broadcast product and a sum over channels, in float64."""
    w = weight.double()[classes]  # (B, K)
    return (w[:, :, None, None] * feats.double()).sum(dim=1)


def _hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())


class TinyGap(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> mean over (h, w) (functional GAP) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny() -> TinyGap:
    torch.manual_seed(0)
    return TinyGap().double().eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


GEN = torch.Generator().manual_seed(0)
# three images, each tinted towards another colour channel, so their top-1 classes differ
XT = (
    torch.randn(3, 3, 12, 10, generator=GEN, dtype=torch.float64)
    + 4 * torch.eye(3, dtype=torch.float64)[..., None, None]
)
XR = torch.randn(2, 3, 64, 96, generator=GEN)


# --- the real model ------------------------------------------------------------------------------


def test_real_model_matches_hand_einsum(real_model: camlib.LoadedModel, chelsea_x: Tensor) -> None:
    net = real_model.net
    feats, logits = _hooked_features(net, net.bn2, chelsea_x)
    maps = camlib.cam(real_model, chelsea_x)
    assert int(logits.argmax()) == 285  # Egyptian cat
    assert maps.shape == (1, 7, 7) and maps.dtype == torch.float32
    torch.testing.assert_close(maps.double(), _by_hand(real_model.fc.weight, feats, [285]), rtol=1e-5, atol=1e-4)
    assert maps.min() < 0 < maps.max()  # raw: no ReLU, no normalisation


def test_real_model_identity_logit_is_mean_map_plus_bias(real_model: camlib.LoadedModel, chelsea_x: Tensor) -> None:
    classes = [285, 281, 282, 0, 999]
    maps = camlib.cam(real_model, chelsea_x, classes)  # one image, K targets: K maps
    assert maps.shape == (5, 7, 7)
    with torch.no_grad():
        logits = real_model.net(chelsea_x)[0, classes]
    torch.testing.assert_close(maps.mean(dim=(1, 2)) + real_model.fc.bias[classes], logits, rtol=1e-5, atol=1e-4)


def test_real_model_bare_module_and_non_square(real_model: camlib.LoadedModel, chelsea_x: Tensor) -> None:
    # the head of the bare nn.Module is found automatically and gives the same maps
    torch.testing.assert_close(camlib.cam(real_model.net, chelsea_x), camlib.cam(real_model, chelsea_x))
    wide = real_model.preprocess("chelsea", size=(224, 320))
    assert camlib.cam(real_model, wide).shape == (1, 7, 10)


# --- automatic head detection --------------------------------------------------------------------


def test_resnet18_head_detected(resnet: nn.Module) -> None:
    from camlib.methods import find_gap_head

    assert find_gap_head(resnet, XR) == ("layer4", resnet.fc)
    feats, logits = _hooked_features(resnet, resnet.layer4, XR)
    targets = [3, 917]
    maps = camlib.cam(resnet, XR, targets)
    assert maps.shape == (2, 2, 3)
    torch.testing.assert_close(maps.double(), _by_hand(resnet.fc.weight, feats, targets), rtol=1e-5, atol=1e-5)
    identity = maps.mean(dim=(1, 2)) + resnet.fc.bias[targets]
    torch.testing.assert_close(identity, logits[[0, 1], targets], rtol=1e-5, atol=1e-5)


def test_tiny_gap_net_functional_mean(tiny: TinyGap) -> None:
    from camlib.methods import find_gap_head

    assert find_gap_head(tiny, XT) == ("act2", tiny.head)
    feats, logits = _hooked_features(tiny, tiny.act2, XT)
    maps = camlib.cam(tiny, XT)
    top = logits.argmax(1).tolist()
    assert maps.shape == (3, 6, 5) and maps.dtype == torch.float64
    torch.testing.assert_close(maps, _by_hand(tiny.head.weight, feats, top), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(maps.mean(dim=(1, 2)) + tiny.head.bias[top], logits.max(1).values)


class FlattenFC(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _gap_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Linear(8, 5),
    )


@pytest.mark.parametrize("make", [FlattenFC, _gap_mlp], ids=["flatten_fc", "gap_mlp"])
def test_no_gap_linear_head_raises_and_points_to_gradcam(make) -> None:
    torch.manual_seed(0)
    net = make().eval()
    with pytest.raises(CamError, match="no global-average-pooling \\+ linear head") as info:
        camlib.cam(net, torch.randn(1, 3, 8, 8))
    assert "camlib.gradcam" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert _hook_count(net) == 0


# --- targets -------------------------------------------------------------------------------------


def test_targets_none_is_top1_per_image(tiny: TinyGap) -> None:
    with torch.no_grad():
        top = tiny(XT).argmax(1).tolist()
    assert len(set(top)) > 1  # the images disagree, so "image 0's class for all" would fail
    torch.testing.assert_close(camlib.cam(tiny, XT), camlib.cam(tiny, XT, top), rtol=0, atol=0)


def test_targets_int_is_same_class_for_all(tiny: TinyGap) -> None:
    maps = camlib.cam(tiny, XT, 2)
    feats, _ = _hooked_features(tiny, tiny.act2, XT)
    torch.testing.assert_close(maps, _by_hand(tiny.head.weight, feats, [2, 2, 2]))


def test_targets_sequence_one_per_image_each_as_if_alone(tiny: TinyGap) -> None:
    targets = [4, 0, 3]
    maps = camlib.cam(tiny, XT, targets)
    for b, c in enumerate(targets):
        torch.testing.assert_close(maps[b], camlib.cam(tiny, XT[b : b + 1], c)[0], rtol=1e-12, atol=1e-12)
        assert maps[b].abs().max() > 0  # no all-zero map for images after the first
    torch.testing.assert_close(camlib.cam(tiny, XT, torch.tensor(targets)), maps, rtol=0, atol=0)


def test_one_image_k_targets_gives_k_maps(tiny: TinyGap) -> None:
    x = XT[1:2]
    maps = camlib.cam(tiny, x, [0, 1, 2, 3])
    assert maps.shape == (4, 6, 5)
    for k in range(4):
        torch.testing.assert_close(maps[k], camlib.cam(tiny, x, k)[0], rtol=0, atol=0)
    assert camlib.cam(tiny, x, [3]).shape == (1, 6, 5)


def test_bad_targets(tiny: TinyGap) -> None:
    with pytest.raises(ValueError, match="2 targets for a batch of 3"):
        camlib.cam(tiny, XT, [0, 1])
    with pytest.raises(IndexError, match="outside the model's 5 outputs"):
        camlib.cam(tiny, XT, 5)
    with pytest.raises(IndexError):
        camlib.cam(tiny, XT[:1], [1, -1])


# --- side effects --------------------------------------------------------------------------------


def test_cam_leaves_the_model_as_it_was(resnet: nn.Module) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).train()
    net.layer1.eval()
    flags = [m.training for m in net.modules()]
    maps = camlib.cam(net, XR[:1])
    assert maps.shape == (1, 2, 3) and not maps.requires_grad
    assert [m.training for m in net.modules()] == flags
    assert _hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())
