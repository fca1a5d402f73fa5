"""camlib.capture, resolve_layer, eval_mode, layer_names (camlib/hooks.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import camlib
from camlib import LayerError


def _tiny(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=inplace),
        nn.Dropout(0.5),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def _hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())


def _flags(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


X = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(1))


def test_capture_by_name_and_module_equals_direct_computation() -> None:
    net = _tiny().eval()
    expected = net[:5](X)  # the output of module "4", computed without hooks
    for layer in ("4", net[4]):
        with camlib.capture(net, layer) as cap:
            logits = net(X)
        assert cap.name == "4" and cap.module is net[4]
        torch.testing.assert_close(cap.activation, expected, rtol=0, atol=0)
        assert not cap.activation.requires_grad
    torch.testing.assert_close(logits, net(X), rtol=0, atol=0)


def test_capture_nested_dotted_name(resnet: nn.Module) -> None:
    seen = {}
    handle = resnet.layer3[1].conv2.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach().clone()))
    try:
        with camlib.capture(resnet, "layer3.1.conv2") as cap, torch.no_grad():
            resnet(X)
    finally:
        handle.remove()
    assert "layer3.1.conv2" in repr(cap) and "(2, 256, 1, 2)" in repr(cap)
    torch.testing.assert_close(cap.activation, seen["out"], rtol=0, atol=0)


def test_capture_survives_inplace_relu_after_the_layer() -> None:
    # Conv -> BN -> ReLU(inplace=True): the captured BN output must keep its negative values
    net = _tiny(inplace=True).eval()
    with torch.no_grad():
        expected = net[1](net[0](X)).clone()
    assert expected.min() < 0
    with camlib.capture(net, "1") as cap, torch.no_grad():
        net(X)
    torch.testing.assert_close(cap.activation, expected, rtol=0, atol=0)


def test_hooks_removed_after_normal_exit_and_after_exception() -> None:
    net = _tiny()
    before = _hook_count(net)
    with camlib.capture(net, "4"):
        assert _hook_count(net) == before + 1
        net(X)
    assert _hook_count(net) == before
    with pytest.raises(RuntimeError), camlib.capture(net, "4"):
        net(torch.zeros(1, 5, 8, 8))  # wrong channel count: the forward fails inside the block
    assert _hook_count(net) == before
    with pytest.raises(KeyError), camlib.capture(net, "4"):
        raise KeyError("user code fails")  # not swallowed
    assert _hook_count(net) == before


def test_capture_puts_eval_and_restores_every_flag() -> None:
    net = _tiny().train()
    net[1].eval()  # mixed flags: BN frozen, the rest training
    flags = _flags(net)
    with camlib.capture(net, "4"):
        assert not any(m.training for m in net.modules())
        a = net(X)
        b = net(X)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # dropout off, BN on running stats
    assert _flags(net) == flags
    with pytest.raises(ValueError), camlib.capture(net, "4"):
        raise ValueError
    assert _flags(net) == flags


def test_capture_eval_false_keeps_train_mode() -> None:
    net = _tiny().train()
    with camlib.capture(net, "0", eval=False):
        assert all(m.training for m in net.modules())
    assert all(m.training for m in net.modules())


def test_wrong_layer_name_lists_nearest(resnet: nn.Module) -> None:
    with pytest.raises(LayerError, match="layer4") as info, camlib.capture(resnet, "layer5"):
        pass
    assert "layer_names" in str(info.value)
    with pytest.raises(LayerError, match=r"layer4\.1\.conv2"):
        camlib.resolve_layer(resnet, "layer4.1.conv3")
    assert issubclass(LayerError, ValueError)
    assert _hook_count(resnet) == 0


def test_module_outside_the_net(resnet: nn.Module) -> None:
    with pytest.raises(LayerError, match="not a submodule"):
        camlib.resolve_layer(resnet, nn.Conv2d(3, 3, 1))


def test_resolve_layer_both_ways(resnet: nn.Module) -> None:
    assert camlib.resolve_layer(resnet, "layer2.0.downsample.0") == (
        "layer2.0.downsample.0",
        resnet.layer2[0].downsample[0],
    )
    assert camlib.resolve_layer(resnet, resnet.layer4) == ("layer4", resnet.layer4)


def test_eval_mode_restores_after_exception() -> None:
    net = _tiny().train()
    net[3].eval()
    flags = _flags(net)
    with pytest.raises(ZeroDivisionError), camlib.eval_mode(net):
        assert not any(m.training for m in net.modules())
        _ = 1 / 0
    assert _flags(net) == flags
    with camlib.eval_mode(net, eval=False):
        assert _flags(net) == flags


def test_layer_names_resnet(resnet: nn.Module) -> None:
    names = camlib.layer_names(resnet, size=64)
    assert names[0] == "conv1" and names[-1] in ("layer4", "layer4.1", "layer4.1.relu")
    assert names.index("layer1") < names.index("layer2.0.conv1") < names.index("layer4")
    assert not {"avgpool", "fc"} & set(names)  # 1 × 1 and 2-D outputs are not feature maps
    top = camlib.layer_names(resnet, size=64, max_depth=0)
    assert top == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert _hook_count(resnet) == 0


def test_layer_names_drops_layers_that_are_1x1_at_this_size(resnet: nn.Module) -> None:
    # at 32 × 32 layer4 is 1 × 1: no spatial map, so it is not listed; at 64 × 64 it is 2 × 2
    assert "layer4" not in camlib.layer_names(resnet, size=32, max_depth=0)
    assert "layer4" in camlib.layer_names(resnet, size=(32, 64), max_depth=0)


def test_layer_names_restores_flags_and_hooks() -> None:
    net = _tiny().train()
    names = camlib.layer_names(net, size=8)
    assert names == ["0", "1", "2", "3", "4", "5"]
    assert all(m.training for m in net.modules()) and _hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())


def test_layer_names_real_model(real_model: camlib.LoadedModel) -> None:
    names = camlib.layer_names(real_model.net, max_depth=1)
    assert names[0] == "conv_stem" and names[-1] == real_model.feature_layer == "bn2"
    assert "global_pool" not in names and "classifier" not in names
    assert names.index("blocks.0") < names.index("blocks.6") < names.index("conv_head")
