"""The fast paths give the same maps: channels-last CPU batches, amp= reduced precision, fewer writes.

Reference maps come from the same functions with the channels-last step switched off
(``fast_layout`` replaced by the identity) on a contiguous batch, i.e. camlib as it ran before the fast path.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

import camlib
import camlib.hooks as hooks
from camlib.metrics import spearman

EGYPTIAN_CAT = 285


@pytest.fixture
def contiguous_only(monkeypatch: pytest.MonkeyPatch):
    def use() -> None:
        def identity(x: torch.Tensor) -> torch.Tensor:
            assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
            return x

        monkeypatch.setattr(hooks, "fast_layout", identity)

    return use


@pytest.fixture
def contiguous_x(chelsea_x: torch.Tensor) -> torch.Tensor:
    """The photo as a plain contiguous batch (``preprocess`` returns it channels-last already)."""
    x = chelsea_x.contiguous()
    assert not x.is_contiguous(memory_format=torch.channels_last)
    return x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(("method", "layer"), [("gradcam", "bn2"), ("gradcam", "blocks.4"), ("gradcam_pp", "bn2")])
def test_channels_last_maps_equal_the_contiguous_ones(real_model, contiguous_x, contiguous_only, method, layer):
    fast = getattr(camlib, method)(real_model.net, contiguous_x, layer, EGYPTIAN_CAT)
    contiguous_only()
    ref = getattr(camlib, method)(real_model.net, contiguous_x, layer, EGYPTIAN_CAT)
    assert _rel(fast, ref) < 1e-4  # the same sums in another order


def test_channels_last_cam_equals_the_contiguous_one(real_model, contiguous_x, contiguous_only):
    fast = camlib.cam(real_model, contiguous_x)
    contiguous_only()
    ref = camlib.cam(real_model, contiguous_x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * fast.abs().max().item())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_the_users_input_and_model_are_untouched(real_model, chelsea_x, layout):
    x = chelsea_x.contiguous(memory_format=layout).clone(memory_format=torch.preserve_format)
    stride = x.stride()
    before = {n: (p.data_ptr(), p.stride()) for n, p in real_model.net.named_parameters()}
    camlib.gradcam(real_model.net, x, "bn2")
    assert x.stride() == stride and torch.equal(x, chelsea_x)
    assert {n: (p.data_ptr(), p.stride()) for n, p in real_model.net.named_parameters()} == before
    assert all(p.grad is None for p in real_model.net.parameters())


class ViewNet(nn.Module):
    """Flatten + linear with ``.view``: cannot take a channels-last feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_a_model_that_needs_a_contiguous_input_is_retried(contiguous_only):
    torch.manual_seed(0)
    net, x = ViewNet().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="view size"):
        net(x.contiguous(memory_format=torch.channels_last))  # the failure the retry catches
    grad_mode = torch.is_grad_enabled()
    fast = camlib.gradcam(net, x, "conv", targets=[0, 2])
    assert torch.is_grad_enabled() == grad_mode
    assert not net.conv._forward_hooks
    contiguous_only()
    torch.testing.assert_close(fast, camlib.gradcam(net, x, "conv", targets=[0, 2]))


def test_amp_on_the_cpu_is_float32_finite_and_close(real_model, chelsea_x):
    ref = camlib.gradcam(real_model.net, chelsea_x, "bn2", EGYPTIAN_CAT)
    low = camlib.gradcam(real_model.net, chelsea_x, "bn2", EGYPTIAN_CAT, amp=True)
    assert low.dtype == torch.float32 and low.isfinite().all()
    assert _rel(low, ref) < 0.05  # bfloat16 keeps 8 bits of mantissa; measured 2.2e-2 here
    assert spearman(ref, low).item() > 0.99
    pp = camlib.gradcam_pp(real_model.net, chelsea_x, "blocks.4", EGYPTIAN_CAT, amp=torch.bfloat16)
    assert pp.isfinite().all()


class Overflow(nn.Module):
    """Activations of ~1e6 at the layer: infinite in float16 (max 65504)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1e5)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_float16_overflow_falls_back_to_float32_never_nan():
    torch.manual_seed(0)
    net, x = Overflow().eval(), torch.rand(1, 3, 8, 8) + 1
    with pytest.warns(UserWarning, match="recomputed in float32"):
        low = camlib.gradcam(net, x, "conv", 0, amp=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = camlib.gradcam(net, x, "conv", 0)
    assert low.isfinite().all()
    torch.testing.assert_close(low, ref)


def test_amp_must_be_a_bool_or_a_half_dtype(real_model, chelsea_x):
    with pytest.raises(ValueError, match="amp must be True, False, torch.bfloat16 or torch.float16"):
        camlib.gradcam(real_model.net, chelsea_x, "bn2", amp="fast")
    assert camlib.device.amp_dtype(torch.device("cpu"), True) == torch.bfloat16
    assert camlib.device.amp_dtype(torch.device("mps"), True) == torch.float16
    assert camlib.device.amp_dtype(torch.device("cpu"), False) is None


def test_eval_mode_leaves_an_eval_net_unwritten_and_restores_a_training_one():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    writes = []

    class Spy(nn.BatchNorm2d):
        def __setattr__(self, name, value):
            if name == "training":
                writes.append(value)
            super().__setattr__(name, value)

    net[1] = Spy(4)
    net.eval()
    writes.clear()
    with hooks.eval_mode(net):
        pass
    assert writes == []
    net.train()
    net[2].eval()
    with hooks.eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[1].training and not net[2].training


def test_metrics_and_scorecam_take_a_model_that_needs_a_contiguous_input():
    # The chunked forwards of the metrics and of Score-CAM go through the same forward_fast as the methods.
    torch.manual_seed(0)
    net, x = ViewNet().eval(), torch.rand(2, 3, 8, 8)
    maps = camlib.gradcam(net, x, "conv", targets=[0, 2])
    drop = camlib.metrics.average_drop(net, x, maps, targets=[0, 2])
    assert torch.isfinite(drop.per_image).all()
    assert camlib.scorecam(net, x, "conv", targets=[0, 2], progress=False).shape == (2, 8, 8)


def test_logits_fast_in_float16_falls_back_to_float32_on_overflow():
    from camlib.hooks import logits_fast

    net, x = Overflow().eval(), torch.rand(2, 3, 8, 8) + 1
    with torch.no_grad():
        ref = net(x)
        with pytest.warns(UserWarning, match="non-finite logits in torch.float16"):
            low = logits_fast(net, x, torch.float16)
    torch.testing.assert_close(low, ref)
    with torch.no_grad():
        bf = logits_fast(net, x, torch.bfloat16)
    assert bf.dtype == torch.float32 and bool(bf.isfinite().all())


@pytest.mark.parametrize("method", ["hirescam", "xgradcam", "layercam"])
def test_family_gradient_methods_take_amp(method, real_model, chelsea_x):
    fn = getattr(camlib, method)
    ref = fn(real_model.net, chelsea_x, "bn2")
    low = fn(real_model.net, chelsea_x, "bn2", amp=torch.bfloat16)
    assert low.dtype == torch.float32 and bool(low.isfinite().all())
    assert float((low - ref).abs().max() / ref.abs().max()) < 0.1
    assert float(camlib.metrics.spearman(low, ref)[0]) > 0.98


def test_scorecam_and_the_metrics_take_amp():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = camlib.scorecam(net, x[:1], "layer4", progress=False, batch_size=256)
    low = camlib.scorecam(net, x[:1], "layer4", progress=False, batch_size=256, amp=torch.bfloat16)
    assert low.dtype == torch.float32 and bool(low.isfinite().all())
    assert 0 < float((low - ref).abs().max() / ref.abs().max()) < 0.1  # bfloat16 ran, and stayed close
    maps = camlib.gradcam(net, x, "layer4")
    for curve in (camlib.metrics.deletion_curve, camlib.metrics.insertion_curve):
        a = curve(net, x, maps, steps=8, progress=False)
        b = curve(net, x, maps, steps=8, progress=False, amp=torch.bfloat16)
        assert torch.equal(a.targets, b.targets) and bool(b.probs.isfinite().all())
        assert 0 < float((a.probs - b.probs).abs().max()) < 0.05
    a = camlib.metrics.road(net, x, maps, fractions=(0.2, 0.5), progress=False, tol=1e-3)
    b = camlib.metrics.road(net, x, maps, fractions=(0.2, 0.5), progress=False, tol=1e-3, amp=torch.bfloat16)
    assert 0 < float((a.probs - b.probs).abs().max()) < 0.05


def test_the_graphed_step_is_camlibs_gradcam(real_model, chelsea_x):
    """benchmarks/bench_graphs.py captures this step as a CUDA graph (not runnable on a CPU): it must be
    camlib's Grad-CAM, and read the image and the class from its buffers when called, as a replay does."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_graphs.py"
    spec = importlib.util.spec_from_file_location("bench_graphs", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    net = real_model.net
    x, idx = chelsea_x.clone(), torch.tensor([285])
    step = bench.gradcam_step(net, "bn2", x, idx)
    assert torch.equal(step(), camlib.gradcam(net, chelsea_x, "bn2", 285))
    torch.manual_seed(3)
    other = torch.rand_like(chelsea_x)
    x.copy_(other)
    idx.fill_(7)
    assert torch.equal(step(), camlib.gradcam(net, other, "bn2", 7))
