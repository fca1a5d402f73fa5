"""camlib under hostile input (issue 10): each test failed on the code before the fix.

References are computed independently: by hand from a hooked forward (``F.relu`` of the
features, an einsum in float64), from the identity mean(CAM) + bias = logit, or from a
second, differently scaled copy of the same map.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor, nn

import camlib
from camlib import CamError, LayerError
from camlib.methods import find_gap_head
from camlib.metrics import average_drop, deletion_curve, mask_iou, pointing_game


def _logits(net: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return net(x)


def _identity(net: nn.Module, fc: nn.Linear, x: Tensor) -> None:
    """mean(M_c) + b_c == y_c for every class of image 0: CAM's defining identity."""
    classes = list(range(fc.out_features))
    maps = camlib.cam(net, x[:1], classes)
    torch.testing.assert_close(maps.mean((1, 2)) + fc.bias, _logits(net, x[:1])[0], rtol=1e-5, atol=1e-5)


# --- 1. in-place functional ReLU between the feature layer and global average pooling --------------


class InplaceReluNet(nn.Module):
    """The issue's reproducer: ``F.relu(features, inplace=True)`` before the mean, as in DenseNet."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.features(x), inplace=True).mean((2, 3)))


def test_cam_sees_the_inplace_relu_before_pooling() -> None:
    torch.manual_seed(0)
    net = InplaceReluNet().eval()
    net.features[1].running_mean.uniform_(-1, 1)  # so that the ReLU clips a good share of the features
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        relu_feats = F.relu(net.features(x)).double()  # computed by hand, not by camlib
    expected = torch.einsum("bk,bkhw->bhw", net.fc.weight.double()[[1, 3]], relu_feats)
    torch.testing.assert_close(camlib.cam(net, x, [1, 3]).double(), expected, rtol=1e-6, atol=1e-6)
    _identity(net, net.fc, x)


def test_cam_on_densenet121_satisfies_the_identity_for_every_class() -> None:
    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    assert find_gap_head(net, x) == ("features", net.classifier)
    _identity(net, net.classifier, x)


# --- 2. the head cache ------------------------------------------------------------------------------


def test_head_cache_follows_the_input_size_and_a_new_fc() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    small, large = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 96, 96)
    with pytest.raises(CamError, match=r"32×32 input, 'layer4' .* 1×1.*larger input"):
        camlib.cam(net, small)
    assert camlib.cam(net, large).shape == (1, 3, 3)  # not (1, 1, 1): the failed call decided nothing
    with pytest.raises(CamError, match="1×1 map for this 32×32 input"):
        camlib.cam(net, small)  # and the cached head does not make a small input pass
    net.fc = nn.Linear(512, 10)  # fine-tuning a new head
    assert camlib.cam(net, large).shape == (1, 3, 3)
    _identity(net, net.fc, large)


# --- 4. ConvNeXt: LayerNorm after pooling ------------------------------------------------------------


def test_convnext_has_no_cam() -> None:
    torch.manual_seed(0)
    net = torchvision.models.convnext_tiny(weights=None, num_classes=10).eval()
    with pytest.raises(CamError, match=r"'classifier.0', computed after global pooling.*LayerNorm") as info:
        camlib.cam(net, torch.randn(1, 3, 64, 64))
    assert "camlib.gradcam" in str(info.value)


# --- 5. normalize is scale-invariant --------------------------------------------------------------


def _map(seed: int = 0) -> Tensor:
    return torch.rand(7, 7, generator=torch.Generator().manual_seed(seed)) - 0.3


@pytest.mark.parametrize("scale", [2.0**-90, 1e-9, 1e-12, 1e-27, 1e20])
def test_normalize_does_not_depend_on_the_scale(scale: float) -> None:
    m = _map()
    expected = (m - m.min()) / (m.max() - m.min())  # by hand, in float32
    got = camlib.normalize(m * scale)
    if scale == 2.0**-90:  # a power of two scales exactly: the same bits
        assert torch.equal(got, expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=4e-7)
    assert got.max() == 1 and got.min() == 0


def test_normalize_ordinary_maps_bit_for_bit_as_before() -> None:
    maps = torch.stack([_map(s) for s in range(4)]) * 5
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    assert torch.equal(camlib.normalize(maps), ((flat - lo) / (hi - lo)).view(maps.shape))


def test_normalize_constant_map_after_upsampling_noise_is_zero() -> None:
    up = camlib.upsample(torch.full((5, 5), 0.1), 224)
    assert up.max() > up.min()  # bilinear weights leave 1-ulp noise on a constant map
    assert torch.equal(camlib.normalize(up), torch.zeros_like(up))
    assert torch.equal(camlib.normalize(torch.full((3, 3), -2.5)), torch.zeros(3, 3))


def test_overlay_and_localization_do_not_depend_on_the_scale() -> None:
    m = _map()
    image = np.full((32, 48, 3), 128, np.uint8)
    np.testing.assert_array_equal(camlib.overlay(image, m * 2.0**-40), camlib.overlay(image, m))
    diff = np.abs(camlib.overlay(image, m * 1e-12).astype(int) - camlib.overlay(image, m).astype(int))
    assert diff.mean() < 0.05  # rounding may move a pixel to the next of jet's 256 colours, no more
    masks = torch.zeros(1, 32, 48, dtype=torch.bool)
    masks[0, 8:20, 10:30] = True
    torch.testing.assert_close(mask_iou((m * 1e-9)[None], masks), mask_iou(m[None], masks))


# --- 6. non-finite maps and underflowing probabilities ---------------------------------------------


@pytest.fixture(scope="module")
def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_metrics_refuse_non_finite_maps_naming_the_image(small_net: nn.Module, bad: float) -> None:
    x = torch.randn(3, 3, 8, 8)
    maps = torch.rand(3, 4, 4)
    maps[2, 1, 1] = bad
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    for call in (
        lambda: pointing_game(maps, masks),
        lambda: mask_iou(maps, masks),
        lambda: average_drop(small_net, x, maps),
        lambda: deletion_curve(small_net, x, maps, steps=4, progress=False),
    ):
        with pytest.raises(ValueError, match=re.escape("maps[2] (image 2)")):
            call()


def test_average_drop_is_defined_when_the_probability_underflows() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[1] = 30.0  # logit 1 - logit 0 = 30 * sum(x): class 0 underflows for a bright image
        net[1].bias.zero_()
    x = torch.full((1, 3, 2, 2), 1.0)
    maps = torch.tensor([[[1.0, 0.5], [0.25, 0.0]]])
    s = average_drop(net, x, maps, targets=0)
    with torch.no_grad():
        log_y = net(x).double().log_softmax(1)[0, 0]
        log_o = net(x * camlib.normalize(maps)[:, None]).double().log_softmax(1)[0, 0]
    assert torch.softmax(net(x), 1)[0, 0] == 0  # the case: Y underflows in float32
    expected = 100 * max(0.0, 1 - float(torch.exp(log_o - log_y)))  # in float64, by hand
    assert np.isfinite(s.value) and s.value == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("fn", [average_drop, deletion_curve])
def test_metrics_batch_size_zero(small_net: nn.Module, fn) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        fn(small_net, torch.randn(2, 3, 8, 8), torch.rand(2, 4, 4), batch_size=0)


# --- 7. guided backprop cannot see inside TorchScript ----------------------------------------------


def test_guided_backprop_refuses_torchscript(small_net: nn.Module) -> None:
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in recent torch
        scripted, traced = torch.jit.script(small_net), torch.jit.trace(small_net, x)
    for net in (scripted, traced):
        with pytest.raises(TypeError, match="TorchScript.*plain input gradient"):
            camlib.guided_backprop(net, x, 0)
    wrapper = nn.Sequential(scripted)  # scripted inside a plain module
    with pytest.raises(TypeError, match="submodule '0'"):
        camlib.guided_backprop(wrapper, x, 0)


def test_guided_backprop_refuses_nets_without_relu_and_warns_on_mixed() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    silu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="no ReLU-family activation.*only SiLU"):
        camlib.guided_backprop(silu, x, 0)
    mixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Hardswish(), nn.Flatten(1))
    mixed.append(nn.LazyLinear(3))
    mixed(x)
    with pytest.warns(UserWarning, match="1 ReLU-family activations were guided, but Hardswish"):
        camlib.guided_backprop(mixed, x, 0)


# --- 9. smaller: targets, LoadedModel, 1×1 layers, layer_names, files -------------------------------


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def test_zero_d_array_is_one_class_for_all_images(tiny: nn.Module) -> None:
    x = torch.randn(3, 3, 8, 8)
    for fn in (lambda t: camlib.cam(tiny, x, t), lambda t: camlib.gradcam(tiny, x, "1", t)):
        torch.testing.assert_close(fn(np.array(7)), fn(7), rtol=0, atol=0)
    torch.testing.assert_close(camlib.cam(tiny, x, np.int64(7)), camlib.cam(tiny, x, 7), rtol=0, atol=0)


@pytest.mark.parametrize(
    "targets, error, words",
    [
        ([], ValueError, "targets is empty"),
        (np.array([], dtype=int), ValueError, "targets is empty"),
        ("tabby", TypeError, "model.classes.index"),
        ({1, 2}, TypeError, "pass a list, not a set"),
        (2**63, IndexError, "Class index 9223372036854775808 is outside the model's 10 outputs"),
        (np.array(10**20, dtype=object), IndexError, "is outside the model's 10 outputs"),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_bad_targets_say_what_to_pass(tiny: nn.Module, targets, error, words: str, batch: int) -> None:
    x = torch.randn(batch, 3, 8, 8)
    for fn in (camlib.cam, lambda n, x, t: camlib.gradcam(n, x, "1", t), camlib.guided_backprop):
        with pytest.raises(error, match=re.escape(words)):
            fn(tiny, x, targets)


def test_gradient_methods_accept_a_loaded_model(tiny: nn.Module) -> None:
    model = camlib.LoadedModel("tiny", tiny, [str(i) for i in range(10)], "1", tiny[4])
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(camlib.gradcam(model, x, "1", 3), camlib.gradcam(tiny, x, "1", 3), rtol=0, atol=0)
    torch.testing.assert_close(camlib.gradcam_pp(model, x, "1"), camlib.gradcam_pp(tiny, x, "1"), rtol=0, atol=0)
    torch.testing.assert_close(camlib.guided_backprop(model, x), camlib.guided_backprop(tiny, x), rtol=0, atol=0)
    assert camlib.layer_names(model, size=8) == camlib.layer_names(tiny, size=8)


def test_gradcam_on_a_too_small_input_says_so() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with pytest.raises(LayerError, match=r"'layer4' outputs a 1×1 map for this 32×32 input.*larger input"):
        camlib.gradcam(net, torch.randn(1, 3, 32, 32), "layer4")


def test_layer_names_lists_only_layers_gradcam_accepts() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    names = camlib.layer_names(net, x=x)
    assert "layer1.0.relu" not in names and "relu" in names and "layer4" in names  # ReLU shared in a block
    with pytest.raises(LayerError, match="more than once"):
        camlib.gradcam(net, x, "layer1.0.relu")
    for name in names:
        assert camlib.gradcam(net, x, name).dim() == 3


def test_load_image_of_a_folder_and_of_a_truncated_jpeg(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.jpg", quality=95)
    with pytest.raises(IsADirectoryError, match=r"is a folder, not an image file.*red\.jpg"):
        camlib.load_image(tmp_path)
    data = (tmp_path / "red.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=re.escape(str(cut))):
        camlib.load_image(cut)


# --- 12. one image without its batch axis; what load_model returns, everywhere ---------------------------


@pytest.fixture(scope="module")
def shapes_model():
    return camlib.load_model("small_gap_shapes")


def test_one_image_without_its_batch_axis_gets_a_clear_error(shapes_model, map_calls) -> None:
    x = camlib.synthetic.shapes(1, seed=0)[0][0]  # (3, 64, 64)
    net = shapes_model.net
    calls = map_calls(shapes_model, x, camlib.load_model("small_vit_shapes"))
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"got \(3, 64, 64\); for one image use x\[None\]"):
            call()
        assert not any(m._forward_hooks for m in net.modules()), name


def test_what_load_model_returns_is_taken_wherever_a_net_is(shapes_model) -> None:
    """The functions that take a network take the LoadedModel too, with the same result as on its .net."""
    x = camlib.synthetic.shapes(2, seed=0)[0]
    net, q = shapes_model.net, {"progress": False}
    maps = camlib.gradcam(net, x, "features")
    same = {
        "scorecam": lambda m: camlib.scorecam(m, x, "features", **q),
        "ablationcam": lambda m: camlib.ablationcam(m, x, "features", **q),
        "eigencam": lambda m: camlib.eigencam(m, x, "features"),
        "road": lambda m: camlib.metrics.road(m, x, maps, fractions=(0.2, 0.5), progress=False).probs,
        "randomization_order": lambda m: camlib.metrics.randomization_order(m),
        "resolve_layer": lambda m: camlib.hooks.resolve_layer(m, "features")[0],
        "eval_mode": lambda m: camlib.hooks.eval_mode(m).__enter__() is net,
        "cascading_randomization": lambda m: [n for n, _ in camlib.metrics.cascading_randomization(m)],
    }
    for name, call in same.items():
        a, b = call(shapes_model), call(net)
        assert torch.equal(a, b) if isinstance(a, Tensor) else a == b, name


def test_view_helpers_and_the_fusion_refuse_what_is_not_a_map() -> None:
    m = torch.rand(2, 7, 7)
    with pytest.raises(ValueError, match=r"normalize takes maps \(h, w\) or \(B, h, w\), got \(49,\)"):
        camlib.normalize(m[0].flatten())
    with pytest.raises(ValueError, match="show_maps needs at least one map"):
        camlib.show_maps(Image.new("RGB", (32, 32)), [])
    for bad, got in (
        ([m, m[0]], r"\[\(2, 7, 7\) torch.float32, \(7, 7\) torch.float32\]"),
        ([m, torch.rand(3, 14, 14)], r"\(3, 14, 14\)"),
        ([(m * 10).long()], r"\(2, 7, 7\) torch.int64"),  # before: torch.finfo's TypeError
    ):
        with pytest.raises(ValueError, match=rf"fuse_layers takes raw float maps \(B, h, w\) of one batch.*{got}"):
            camlib.family.fuse_layers(bad)
    assert camlib.family.fuse_layers([m, torch.rand(2, 14, 14)]).shape == (2, 14, 14)


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        ("empty", ValueError, r"empty batch \(0, 3, 64, 64\)"),
        ("uint8", TypeError, r"torch.uint8 values.*model.preprocess"),
        ("nan", ValueError, r"NaN or infinite values \(image 1 of 2, 1 in all\)"),
        ("inf", ValueError, r"NaN or infinite values \(image 1 of 2, 1 in all\)"),
    ],
)
def test_a_batch_that_is_no_image_gets_a_clear_error(shapes_model, map_calls, bad, error, words) -> None:
    """Before: an empty batch failed on an internal assert, uint8 on a bias type the model does not have,
    and a NaN pixel gave a finite map (the folded twin's fused ReLU turns NaN into 0) where the model gives NaN."""
    x = camlib.synthetic.shapes(2, seed=0)[0]
    x = {
        "empty": x[:0],
        "uint8": (x * 255).to(torch.uint8),
        "nan": x.index_put((torch.tensor(1), torch.tensor(0), torch.tensor(5), torch.tensor(5)), torch.tensor(np.nan)),
        "inf": x.index_put((torch.tensor(1), torch.tensor(2), torch.tensor(0), torch.tensor(0)), torch.tensor(np.inf)),
    }[bad]
    for name, call in map_calls(shapes_model, x, camlib.load_model("small_vit_shapes")).items():
        with pytest.raises(error, match=words):
            call()
        assert not any(m._forward_hooks for m in shapes_model.net.modules()), name


def test_the_forward_only_methods_check_the_layer_as_the_gradient_methods_do() -> None:
    """Score-CAM, Ablation-CAM and Eigen-CAM on a layer that is no map, or runs twice per forward: the
    gradient methods' LayerError (before: an IndexError, an einsum error, or a map of the last call)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    calls = {
        "scorecam": lambda layer, x: camlib.scorecam(net, x, layer, progress=False),
        "ablationcam": lambda layer, x: camlib.ablationcam(net, x, layer, progress=False),
        "eigencam": lambda layer, x: camlib.eigencam(net, x, layer),
    }
    for name, call in calls.items():
        for layer, words in [
            ("fc", r"outputs \(1, 10\), not a spatial feature map"),
            ("layer1.0.relu", "runs more than once per forward"),
        ]:
            with pytest.raises(LayerError, match=words):
                call(layer, x)
            with pytest.raises(LayerError, match=words):
                camlib.gradcam(net, x, layer)
        with pytest.raises(LayerError, match="1×1 map for this 32×32 input"):
            call("layer4", x[..., :32, :32])
        assert not any(m._forward_hooks for m in net.modules()), name


def test_a_layer_that_is_neither_a_name_nor_a_module_says_what_to_pass(tiny: nn.Module) -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TypeError, match=re.escape("layer must be a dotted name such as 'layer4' or a module")):
        camlib.gradcam(tiny, x, ["1"])
    with pytest.raises(ValueError, match=re.escape("targets must be class indices 0..9, one per image")):
        camlib.gradcam(tiny, torch.randn(2, 3, 8, 8), "1", [10**20, 1])
