"""camlib.metrics.faithfulness: each metric on a case computed by hand, against
pytorch-grad-cam where the definitions match, and one claim on the real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import camlib
from camlib import metrics as M


def sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


class Linear2x2(nn.Module):
    """Flatten a (B, 1, 2, 2) image and apply a fixed linear layer: logits by hand."""

    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__()
        self.fc = nn.Linear(4, len(weight), bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def img(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 2, 2)


# --------------------------------------------------------------------------- average drop, increase


@pytest.fixture
def drop_case():
    """Two images, two classes; logits written out by hand.

    W = [[1, 1, 0, 0], [0, 0, 1, 0.5]].
    Image 0: x = [1, 2, 3, 4], logits [3, 5] -> top-1 class 1, Y = sigmoid(2).
      map [0, 1, 2, 4] -> normalised [0, .25, .5, 1] -> E = [0, .5, 1.5, 4], logits [.5, 3.5],
      O = sigmoid(3) > Y: no drop, an increase.
    Image 1: x = [4, 3, 2, 1], logits [7, 2.5] -> top-1 class 0, Y = sigmoid(4.5).
      map [0, 0, 4, 4] -> normalised [0, 0, 1, 1] -> E = [0, 0, 2, 1], logits [0, 2.5],
      O = sigmoid(-2.5): a drop of (Y - O) / Y.
    """
    net = Linear2x2([[1, 1, 0, 0], [0, 0, 1, 0.5]])
    x = torch.cat([img(1, 2, 3, 4), img(4, 3, 2, 1)])
    maps = torch.tensor([[[0, 1], [2, 4]], [[0, 0], [4, 4]]], dtype=torch.float32)
    y = [sigmoid(2.0), sigmoid(4.5)]
    o = [sigmoid(3.0), sigmoid(-2.5)]
    return net, x, maps, y, o


def test_explanation_image_by_hand(drop_case):
    net, x, maps, _, _ = drop_case
    expected = torch.tensor([[0, 0.5, 1.5, 4], [0, 0, 2, 1]]).view(2, 1, 2, 2)
    torch.testing.assert_close(M.explanation_image(x, maps), expected, atol=1e-6, rtol=0)


def test_average_drop_by_hand(drop_case):
    net, x, maps, y, o = drop_case
    s = M.average_drop(net, x, maps)
    expected = torch.tensor([0.0, 100 * (y[1] - o[1]) / y[1]])
    torch.testing.assert_close(s.per_image, expected, atol=1e-4, rtol=1e-6)
    assert s.value == pytest.approx(float(expected.mean()), abs=1e-4)
    assert s.value == pytest.approx(46.165, abs=0.01)  # (0 + 92.33) / 2


def test_increase_in_confidence_by_hand(drop_case):
    net, x, maps, y, o = drop_case
    s = M.increase_in_confidence(net, x, maps)
    torch.testing.assert_close(s.per_image, torch.tensor([1.0, 0.0]))
    assert s.value == 50.0


def test_explicit_targets_change_the_class_followed(drop_case):
    """Follow class 0 in both images: image 0 then has Y = sigmoid(-2), O = sigmoid(-3) -> a drop."""
    net, x, maps, _, _ = drop_case
    s = M.average_drop(net, x, maps, targets=0)
    y0, o0 = sigmoid(-2.0), sigmoid(-3.0)
    assert float(s.per_image[0]) == pytest.approx(100 * (y0 - o0) / y0, abs=1e-4)
    assert M.increase_in_confidence(net, x, maps, targets=[0, 0]).value == 0.0


def test_low_resolution_map_is_upsampled():
    """A 1 x 1 map upsamples to a constant, which normalises to all zeros: E = 0."""
    net = Linear2x2([[1, 0, 0, 0], [0, 1, 0, 0]])
    x = img(1, 2, 3, 4)
    torch.testing.assert_close(M.explanation_image(x, torch.ones(1, 1, 1)), torch.zeros_like(x))
    y = sigmoid(1.0)  # logits [1, 2]: top-1 is class 1; on E = 0 both logits are 0, O = 1/2
    assert M.average_drop(net, x, torch.ones(1, 1, 1)).value == pytest.approx(100 * (y - 0.5) / y, abs=1e-4)


def test_three_channel_maps_need_pixel_saliency():
    net = Linear2x2([[1, 0, 0, 0], [0, 1, 0, 0]])
    gb = torch.tensor([[[[1.0, -3.0], [0.0, 2.0]], [[-2.0, 1.0], [0.5, 0.0]]]])  # (1, 2, 2, 2)
    with pytest.raises(ValueError, match="pixel_saliency"):
        M.average_drop(net, img(1, 2, 3, 4), gb)
    torch.testing.assert_close(M.pixel_saliency(gb), torch.tensor([[[2.0, 3.0], [0.5, 2.0]]]))


def test_wrong_number_of_maps_is_an_error(drop_case):
    net, x, maps, _, _ = drop_case
    with pytest.raises(ValueError, match="one map per image"):
        M.average_drop(net, torch.cat([x, x, x]), maps)


class DictOut(nn.Module):
    """The same net, its logits returned in a dict (as Hugging Face models do)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def test_output_picks_the_logits_for_every_metric_that_runs_the_model(drop_case):
    net, x, maps, _, _ = drop_case
    wrapped, pick = DictOut(net), lambda o: o["logits"]
    for metric in (M.average_drop, M.increase_in_confidence):
        torch.testing.assert_close(metric(wrapped, x, maps, output=pick).per_image, metric(net, x, maps).per_image)
    for curve in (M.deletion_curve, M.insertion_curve):
        got = curve(wrapped, x, maps, steps=2, baseline=0.0, progress=False, output=pick)
        torch.testing.assert_close(got.probs, curve(net, x, maps, steps=2, baseline=0.0, progress=False).probs)
    classes = torch.tensor([1, 0])
    torch.testing.assert_close(
        M.class_probabilities(wrapped, x, classes, output=pick), M.class_probabilities(net, x, classes)
    )
    road = M.road(wrapped, x, maps, fractions=(0.25,), progress=False, output=pick)
    torch.testing.assert_close(road.probs, M.road(net, x, maps, fractions=(0.25,), progress=False).probs)
    with pytest.raises(TypeError, match="returned a dict"):
        M.average_drop(wrapped, x, maps)


def test_class_probabilities_takes_a_list_or_one_int(drop_case):
    net, x, _, y, _ = drop_case
    torch.testing.assert_close(M.class_probabilities(net, x, [1, 0]), torch.tensor(y))
    torch.testing.assert_close(M.class_probabilities(net, x, 1), M.class_probabilities(net, x, torch.tensor([1, 1])))
    for bad in ([1], [0.5, 1.0]):
        with pytest.raises(ValueError, match=r"one class index per image \(2 ints\)"):
            M.class_probabilities(net, x, bad)


def test_an_empty_batch_is_a_clear_error(drop_case):
    net, x, maps, _, _ = drop_case
    with pytest.raises(ValueError, match="empty batch"):
        M.average_drop(net, x[:0], maps[:0])


# --------------------------------------------------------------------------- deletion / insertion


@pytest.fixture
def curve_case():
    """logits = [w . x, 0] with w = [1, 2, 3, 4] and x = ones, so p(class 0) = sigmoid(sum of the
    weights of the pixels still there). The map [.1, .9, .5, .7] orders pixels 1, 3, 2, 0."""
    net = Linear2x2([[1, 2, 3, 4], [0, 0, 0, 0]])
    x = torch.ones(1, 1, 2, 2)
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.7]]])
    return net, x, maps


def trapezoid_quarters(p: list[float]) -> float:
    return 0.25 * (p[0] / 2 + p[1] + p[2] + p[3] + p[4] / 2)


def test_deletion_curve_by_hand(curve_case):
    net, x, maps = curve_case
    c = M.deletion_curve(net, x, maps, targets=0, steps=4, progress=False)
    p = [sigmoid(s) for s in (10, 8, 4, 1, 0)]  # remove w=2, then 4, then 3, then 1
    torch.testing.assert_close(c.fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1]))
    torch.testing.assert_close(c.probs, torch.tensor([p]), atol=1e-6, rtol=0)
    assert c.value == pytest.approx(trapezoid_quarters(p), abs=1e-6)


def test_insertion_curve_by_hand(curve_case):
    net, x, maps = curve_case
    c = M.insertion_curve(net, x, maps, targets=0, steps=4, baseline="zeros", progress=False)
    p = [sigmoid(s) for s in (0, 2, 6, 9, 10)]
    torch.testing.assert_close(c.probs, torch.tensor([p]), atol=1e-6, rtol=0)
    assert c.value == pytest.approx(trapezoid_quarters(p), abs=1e-6)


def test_fewer_steps_than_pixels(curve_case):
    net, x, maps = curve_case
    c = M.deletion_curve(net, x, maps, targets=0, steps=2, progress=False)
    torch.testing.assert_close(c.probs, torch.tensor([[sigmoid(10), sigmoid(4), sigmoid(0)]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="steps"):
        M.deletion_curve(net, x, maps, targets=0, steps=5, progress=False)  # only 4 pixels


def test_ties_are_broken_in_raster_order(curve_case):
    net, x, _ = curve_case
    c = M.deletion_curve(net, x, torch.zeros(1, 2, 2), targets=0, steps=4, progress=False)
    p = [sigmoid(s) for s in (10, 9, 7, 4, 0)]  # pixels 0, 1, 2, 3
    torch.testing.assert_close(c.probs, torch.tensor([p]), atol=1e-6, rtol=0)


def test_a_baseline_of_the_wrong_shape_names_the_expected_one(curve_case):
    net, x, maps = curve_case[:3]
    with pytest.raises(ValueError, match=r"x's shape \(1, 1, 2, 2\) or broadcast to it.*got \(3, 4\)"):
        M.deletion_curve(net, x, maps, steps=4, baseline=torch.zeros(3, 4), progress=False)
    same = M.deletion_curve(net, x, maps, steps=4, baseline=torch.zeros(1, 2, 2), progress=False)  # (C, H, W)
    torch.testing.assert_close(same.probs, M.deletion_curve(net, x, maps, steps=4, progress=False).probs)


def test_chunking_does_not_change_the_curves():
    """A batch of images with different targets: every chunk size gives the same numbers, twice."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )
    x = torch.randn(3, 3, 8, 8)
    maps = torch.rand(3, 4, 4)
    ref = M.insertion_curve(net, x, maps, targets=[0, 3, 4], steps=7, batch_size=1, progress=False)
    for bs in (5, 64):
        c = M.insertion_curve(net, x, maps, targets=[0, 3, 4], steps=7, batch_size=bs, progress=False)
        torch.testing.assert_close(c.probs, ref.probs, atol=1e-6, rtol=1e-5)
    again = M.insertion_curve(net, x, maps, targets=[0, 3, 4], steps=7, batch_size=1, progress=False)
    assert torch.equal(again.probs, ref.probs)
    assert ref.targets.tolist() == [0, 3, 4]
    # first point: the blurred image; last point: the original image.
    p_x = net(x).softmax(1).gather(1, torch.tensor([[0], [3], [4]]))[:, 0]
    p_blur = net(M.gaussian_blur(x)).softmax(1).gather(1, torch.tensor([[0], [3], [4]]))[:, 0]
    torch.testing.assert_close(ref.probs[:, -1], p_x.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ref.probs[:, 0], p_blur.detach(), atol=1e-6, rtol=1e-5)


def test_gaussian_blur_matches_torchvision():
    from torchvision.transforms.functional import gaussian_blur

    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(M.gaussian_blur(x), gaussian_blur(x, [11, 11], [5.0, 5.0]), atol=1e-5, rtol=0)


def test_plot_curves(curve_case):
    import matplotlib

    matplotlib.use("Agg")
    net, x, maps = curve_case
    c = M.deletion_curve(net, x, maps, targets=0, steps=4, progress=False)
    ax = M.plot_curves({"map": c})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"map ({c.value:.3f})"]
    matplotlib.pyplot.close("all")


# --------------------------------------------------------------------------- baselines, sanity checks


def test_baseline_maps():
    r = M.random_map(2, (3, 5), seed=4)
    assert r.shape == (2, 3, 5) and torch.equal(r, M.random_map(2, (3, 5), seed=4))
    assert not torch.equal(r[0], r[1])
    g = M.center_gaussian_map(1, 5)[0]
    assert g.argmax() == 12 and torch.allclose(g, g.flip(0)) and torch.allclose(g, g.T)


def test_spearman_against_scipy():
    from scipy.stats import spearmanr

    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 6, 6), generator=gen).float()  # many ties
    b = a + torch.randn(3, 6, 6, generator=gen)
    ours = M.spearman(a, b)
    ref = [spearmanr(u.flatten().numpy(), v.flatten().numpy())[0] for u, v in zip(a, b, strict=True)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)
    assert M.spearman(a[:1], -a[:1]).item() == pytest.approx(-1.0)
    assert M.spearman(torch.zeros(1, 4), torch.arange(4.0)[None]).item() == 0.0


def test_cascading_randomization_is_cumulative_and_leaves_the_net_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 6, 6))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert M.randomization_order(net) == ["4", "1", "0"]
    seen = []
    for name, rnd in M.cascading_randomization(net, seed=0):
        changed = [
            n for n in ("0", "1", "4") if not torch.equal(dict(rnd.named_modules())[n].weight, before[f"{n}.weight"])
        ]
        seen.append((name, sorted(changed)))
    assert seen == [("4", ["4"]), ("1", ["1", "4"]), ("0", ["0", "1", "4"])]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    first = [copy_weights(r) for _, r in M.cascading_randomization(net, seed=0)]
    second = [copy_weights(r) for _, r in M.cascading_randomization(net, seed=0)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def copy_weights(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


# --------------------------------------------------------------------------- the real model

PHOTOS = ["chelsea", "coffee", "rocket", "astronaut"]


@pytest.fixture(scope="module")
def photos(real_model) -> torch.Tensor:
    return torch.cat([real_model.preprocess(camlib.load_image(n)) for n in PHOTOS])


@pytest.fixture(scope="module")
def gradcam_maps(real_model, photos) -> torch.Tensor:
    return camlib.gradcam(real_model.net, photos, real_model.feature_layer)


def test_against_pytorch_grad_cam(real_model, photos, gradcam_maps):
    """Same inputs (maps already normalised at 224 x 224, softmax targets) as pytorch-grad-cam.

    Where the definitions differ: its DropInConfidence is max(0, Y - O) per image, neither divided
    by Y nor in %, and uses whatever score the target returns (logits with ClassifierOutputTarget);
    it multiplies the input by the cam as given (no upsampling / normalisation of its own).
    IncreaseInConfidence is the same indicator O > Y.
    """
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    net = real_model.net
    cams = camlib.normalize(camlib.upsample(gradcam_maps, 224))
    with torch.no_grad():
        p = net(photos).softmax(1)
    top = p.argmax(1)
    y = p.gather(1, top[:, None])[:, 0].numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in top]
    theirs_drop = DropInConfidence()(photos, cams.numpy(), targets, net)
    theirs_inc = IncreaseInConfidence()(photos, cams.numpy(), targets, net)
    drop = M.average_drop(net, photos, cams)
    inc = M.increase_in_confidence(net, photos, cams)
    np.testing.assert_allclose(drop.per_image.numpy(), 100 * theirs_drop / y, atol=1e-3, rtol=1e-4)
    np.testing.assert_array_equal(inc.per_image.numpy(), theirs_inc)
    assert (drop.per_image > 0).sum() >= 2  # the comparison is not between zeros


def test_random_map_scores_worse_than_gradcam(real_model, photos, gradcam_maps):
    """Chosen before measuring: on the four photos, Grad-CAM's mean deletion AUC is lower and its
    mean insertion AUC higher than a seeded random 7 x 7 map's (8 steps; measured: deletion
    0.150 vs 0.218, insertion 0.407 vs 0.382, average drop 35.1 vs 50.2)."""
    net = real_model.net
    rnd = M.random_map(len(PHOTOS), gradcam_maps.shape[-2:], seed=0)
    kw = dict(steps=8, progress=False)
    d_gc, d_rnd = (M.deletion_curve(net, photos, m, **kw) for m in (gradcam_maps, rnd))
    i_gc, i_rnd = (M.insertion_curve(net, photos, m, **kw) for m in (gradcam_maps, rnd))
    assert d_gc.value < d_rnd.value
    assert i_gc.value > i_rnd.value
    assert M.average_drop(net, photos, gradcam_maps).value < M.average_drop(net, photos, rnd).value


def test_one_image_with_several_maps(curve_case):
    """A batch of one image and K maps gives K rows, as camlib's methods do for K targets."""
    net, x, maps = curve_case
    two = torch.cat([maps, torch.zeros(1, 2, 2)])
    c = M.deletion_curve(net, x, two, targets=0, steps=4, progress=False)
    assert c.probs.shape == (2, 5)
    torch.testing.assert_close(c.probs[0], torch.tensor([sigmoid(s) for s in (10, 8, 4, 1, 0)]), atol=1e-6, rtol=0)
    torch.testing.assert_close(c.probs[1], torch.tensor([sigmoid(s) for s in (10, 9, 7, 4, 0)]), atol=1e-6, rtol=0)


def test_randomising_the_classifier_changes_gradcam_not_guided_backprop(real_model, photos):
    """Adebayo et al.'s first cascade step on the cat: guided backprop's map stays (rho > 0.95),
    Grad-CAM's does not (rho < 0.5); measured 1.000 and -0.045."""
    net, x = real_model.net, photos[:1]
    name, rnd = next(M.cascading_randomization(net, seed=0))
    assert name == "classifier"
    rho_gc = M.spearman(camlib.gradcam(net, x, "bn2", 285), camlib.gradcam(rnd, x, "bn2", 285)).item()
    gb = [M.pixel_saliency(camlib.guided_backprop(n, x, 285)) for n in (net, rnd)]
    rho_gb = M.spearman(*gb).item()
    assert rho_gb > 0.95 and rho_gc < 0.5, (rho_gb, rho_gc)
