"""camlib.metrics.road and its noisy linear imputation.

The imputation is checked against pytorch-grad-cam's ``NoisyLinearImputer`` (a scipy sparse
direct solve of the same equations, noise off), and against the defining property (every
removed pixel is the weighted mean of its neighbours); ROAD against the same steps by hand.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from camlib import metrics
from camlib.smallnet import SmallGapNet


def masks(b: int, h: int, w: int) -> Tensor:
    gen = torch.Generator().manual_seed(3)
    m = torch.rand(b, h, w, generator=gen) < 0.4  # scattered holes
    m[0, 4:26, 3:20] = True  # and a large one
    return m


def test_imputation_matches_pytorch_grad_cam_sparse_solve() -> None:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    x = torch.randn(2, 3, 24, 28, generator=torch.Generator().manual_seed(0))
    removed = masks(2, 24, 28)
    ours = metrics.linear_imputation(x, removed, noise=0.0, tol=1e-7)
    theirs = torch.stack([NoisyLinearImputer(noise=0.0)(x[i], (~removed[i]).float()) for i in range(2)])
    # their float32 result of a float64 solve; ours float64 CG to 1e-7, returned in float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_default_tolerance_is_well_below_the_noise() -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    removed = torch.zeros(1, 64, 64, dtype=torch.bool)
    removed[0, 5:60, 8:56] = True  # 80 % of the image in one hole: the slowest case for CG
    exact = metrics.linear_imputation(x, removed, noise=0.0, tol=1e-10)
    default = metrics.linear_imputation(x, removed, noise=0.0)
    assert (exact - default).abs().max() < 0.1 * 0.01  # a tenth of the default noise


def test_removed_pixels_are_the_weighted_mean_of_their_neighbours_and_kept_ones_stay() -> None:
    x = torch.randn(2, 3, 20, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    removed = masks(2, 20, 24)
    y = metrics.linear_imputation(x, removed, noise=0.0, tol=1e-12)
    assert torch.equal(y[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    w = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64)
    for b, c, i, j in [(0, 0, 10, 10), (0, 2, 0, 5), (1, 1, 19, 23), (0, 1, 15, 0)]:
        if not removed[b, i, j]:
            continue
        num = den = 0.0
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if 0 <= i + di < 20 and 0 <= j + dj < 24 and (di, dj) != (0, 0):
                    num += w[di + 1, dj + 1] * y[b, c, i + di, j + dj]
                    den += w[di + 1, dj + 1]
        torch.testing.assert_close(y[b, c, i, j], num / den, rtol=1e-9, atol=1e-9)


def test_noise_is_seeded_per_image_and_only_on_removed_pixels() -> None:
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    removed = masks(3, 16, 16)
    clean = metrics.linear_imputation(x, removed, noise=0.0)
    noisy = metrics.linear_imputation(x, removed, noise=0.05, seed=7)
    keep = ~removed[:, None].expand_as(x)
    assert torch.equal(noisy[keep], x[keep])
    d = (noisy - clean)[~keep]
    assert 0.04 < d.std() < 0.06
    torch.testing.assert_close(metrics.linear_imputation(x[1:], removed[1:], noise=0.05, seed=8), noisy[1:])


def test_bad_input() -> None:
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="Every pixel of an image is removed"):
        metrics.linear_imputation(x, torch.ones(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"Expected x \(B, C, H, W\) and removed \(B, H, W\)"):
        metrics.linear_imputation(x, torch.ones(8, 8, dtype=torch.bool))
    net = SmallGapNet(num_classes=3, widths=(4, 4, 4), seed=0).eval()
    maps = torch.rand(1, 2, 2)
    with pytest.raises(ValueError, match="order must be 'morf'"):
        metrics.road(net, x, maps, order="most")
    with pytest.raises(ValueError, match="fractions must be between 0 and 1"):
        metrics.road(net, x, maps, fractions=(0.5, 1.0))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        metrics.road(net, x, maps, batch_size=0)


@pytest.fixture(scope="module")
def small() -> tuple[torch.nn.Module, Tensor, Tensor]:
    net = SmallGapNet(num_classes=4, widths=(4, 6, 8), seed=0).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(5))
    return net, x, maps


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_is_imputation_then_probability_by_hand(small, order: str) -> None:
    net, x, maps = small
    fractions = (0.25, 0.5)
    got = metrics.road(net, x, maps, targets=[1, 2], order=order, fractions=fractions, batch_size=3, progress=False)
    sal = metrics.upsample_to(maps, torch.zeros(2, 16, 16, dtype=torch.bool)).flatten(1)
    ranks = sal.argsort(dim=1, descending=order == "morf", stable=True).argsort(dim=1)  # 0 = removed first
    with torch.no_grad():
        for b in range(2):
            for s, f in enumerate(fractions):
                removed = (ranks[b] < round(f * 256)).view(1, 16, 16)
                pair = b * len(fractions) + s  # the noise seed road gives this (image, fraction)
                filled = metrics.linear_imputation(x[b : b + 1], removed, 0.01, seed=pair)
                p = net(filled).softmax(1)[0, [1, 2][b]]
                torch.testing.assert_close(got.probs[b, s], p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.per_image, got.probs.mean(1))
    assert got.targets.tolist() == [1, 2]
    # the batch split does not change a number
    again = metrics.road(net, x, maps, targets=[1, 2], order=order, fractions=fractions, batch_size=1, progress=False)
    torch.testing.assert_close(again.probs, got.probs)


class Recording(torch.nn.Module):
    """A small classifier that records the batch size of every forward (through a list's bound ``append``, which a
    copy of the module shares)."""

    def __init__(self, record) -> None:
        super().__init__()
        self.record = record
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        self.record(x.shape[0])
        return self.fc(self.body(x))


def test_road_sends_at_most_batch_size_images_through_the_model() -> None:
    seen: list[int] = []
    torch.manual_seed(0)
    net = Recording(seen.append).eval()
    x = torch.rand(7, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(7, 4, 4, generator=torch.Generator().manual_seed(2))
    got = metrics.road(net, x, maps, fractions=(0.5,), batch_size=3, progress=False)
    assert seen and max(seen) <= 3, seen  # the targets' forward too, not all 7 images at once
    with torch.no_grad():
        assert got.targets.tolist() == net(x).argmax(1).tolist()
    seen.clear()
    whole = metrics.road(net, x, maps, fractions=(0.5,), batch_size=64, progress=False)
    assert max(seen) == 7
    torch.testing.assert_close(whole.probs, got.probs)
    assert torch.equal(whole.targets, got.targets)
