"""The max-pooling twin of the small shapes net (notebook 08, GAP vs GMP)."""

import pytest
import torch

import camlib
from camlib import gmpnet, smallnet, synthetic


def test_class_maps_equal_cam_on_a_gap_net() -> None:
    net = smallnet.load_run("small_gap_shapes").net
    x, y, _ = synthetic.shapes(4, seed=3)
    maps = gmpnet.class_maps(net, x, y)
    assert torch.equal(maps, camlib.cam(net, x, y))  # the same forward (the CPU's folded twin): bit for bit
    torch.testing.assert_close(maps, camlib.cam(net.eval(), x.contiguous(), y))


def test_shipped_gmp_net_loads_pools_by_max_and_classifies() -> None:
    run = gmpnet.load_small_gmp_shapes()
    net = run.net
    assert isinstance(net.pool, torch.nn.AdaptiveMaxPool2d) and run.config["arch"] == "SmallGmpNet"
    x, y, _ = synthetic.shapes(100, seed=2)
    with torch.no_grad():
        assert (net(x).argmax(1) == y).float().mean() >= 0.95
    maps = gmpnet.class_maps(net, x, y)
    assert maps.shape == (100, 16, 16)
    with camlib.capture(net, "features") as cap, torch.no_grad():
        logits = net(x)
    pooled = cap.activation.amax((2, 3))
    torch.testing.assert_close(logits, pooled @ net.fc.weight.T + net.fc.bias)


def test_cam_refuses_the_gmp_net() -> None:
    # Max pooling is not a GAP head: the only map whose mean feeds the linear layer is the 1 x 1 pooled
    # output, and a 1 x 1 "CAM" is no class activation map (issue 10): CamError, naming the max pooling.
    net = gmpnet.load_small_gmp_shapes().net
    x, y, _ = synthetic.shapes(2, seed=0)
    with pytest.raises(camlib.CamError, match=r"'pool' takes each channel's maximum .*global max pooling") as err:
        camlib.cam(net, x, y)
    assert "larger input" not in str(err.value)  # at 64 px or any size, the pooled map is 1 x 1
    with pytest.raises(camlib.CamError, match="global max pooling"):
        camlib.cam(net, torch.nn.functional.interpolate(x, size=224), y)


def test_same_layers_as_the_gap_net() -> None:
    gap, gmp = smallnet.SmallGapNet(seed=0), gmpnet.SmallGmpNet(seed=0)
    for (ka, a), (kb, b) in zip(gap.state_dict().items(), gmp.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)
