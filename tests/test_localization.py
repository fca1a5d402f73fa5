"""camlib.metrics localization scores against hand-made maps and masks with known answers."""

from __future__ import annotations

import pytest
import torch

import camlib
from camlib.metrics import energy_pointing_game, mask_iou, pointing_game


def _mask(size: int, *boxes: tuple[int, int, int, int]) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


def test_pointing_game_hit_and_miss_at_mask_resolution():
    maps = torch.zeros(2, 8, 8)
    maps[0, 2, 5] = 1.0  # inside the box
    maps[1, 7, 0] = 1.0  # outside
    box = _mask(8, (1, 4, 4, 7))
    hits = pointing_game(maps, torch.stack([box, box]))
    assert hits.tolist() == [True, False] and hits.dtype == torch.bool


def test_pointing_game_upsamples_a_coarse_map():
    # a 2 x 2 map whose top-left cell is largest, against 8 x 8 masks on each quadrant
    coarse = torch.tensor([[3.0, 1.0], [2.0, 0.0]]).expand(4, 2, 2)
    quads = [_mask(8, (0, 4, 0, 4)), _mask(8, (0, 4, 4, 8)), _mask(8, (4, 8, 0, 4)), _mask(8, (4, 8, 4, 8))]
    assert pointing_game(coarse, torch.stack(quads)).tolist() == [True, False, False, False]
    same = pointing_game(camlib.upsample(coarse, 8), torch.stack(quads))
    assert same.tolist() == [True, False, False, False]


def test_pointing_game_ties_and_tolerance():
    flat = torch.zeros(1, 6, 6)  # constant: the first pixel (0, 0) is the maximum
    assert pointing_game(flat, _mask(6, (0, 1, 0, 1))[None]).tolist() == [True]
    assert pointing_game(flat, _mask(6, (0, 1, 1, 2))[None]).tolist() == [False]
    peak = torch.zeros(1, 10, 10)
    peak[0, 5, 5] = 1.0
    far = _mask(10, (5, 6, 7, 8))[None]  # two columns to the right of the peak
    assert pointing_game(peak, far).tolist() == [False]
    assert pointing_game(peak, far, tolerance=1).tolist() == [False]
    assert pointing_game(peak, far, tolerance=2).tolist() == [True]


def test_mask_iou_known_values():
    m = _mask(8, (0, 4, 0, 8))  # top half, 32 pixels
    assert mask_iou(m.float()[None], m[None]).tolist() == [1.0]
    shifted = _mask(8, (2, 6, 0, 8)).float()  # rows 2..5: overlap 16, union 48
    torch.testing.assert_close(mask_iou(shifted[None], m[None]), torch.tensor([1 / 3]))
    assert mask_iou((~m).float()[None], m[None]).tolist() == [0.0]


def test_mask_iou_threshold_uses_the_normalised_map():
    ramp = torch.arange(4.0).view(1, 1, 4).expand(1, 4, 4) * 10 + 5  # columns 5, 15, 25, 35 -> 0, 1/3, 2/3, 1
    target = _mask(4, (0, 4, 2, 4))[None]
    assert mask_iou(ramp, target, threshold=0.5).tolist() == [1.0]  # columns 2, 3
    torch.testing.assert_close(mask_iou(ramp, target, threshold=0.3), torch.tensor([2 / 3]))  # columns 1..3
    torch.testing.assert_close(mask_iou(ramp, target, threshold=0.0), torch.tensor([0.5]))  # all 16 pixels
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    zero = torch.zeros(1, 4, 4)  # constant map: all pixels at 0 >= 0 -> predicted everywhere
    assert mask_iou(zero, empty, threshold=0.5).tolist() == [0.0]


def test_energy_pointing_game_known_values():
    ones = torch.ones(1, 8, 8)
    m = _mask(8, (0, 2, 0, 8))  # 16 of 64 pixels
    torch.testing.assert_close(energy_pointing_game(ones, m[None]), torch.tensor([0.25]))
    signed = torch.where(m, 2.0, -5.0)[None]  # negative mass outside is clipped away
    torch.testing.assert_close(energy_pointing_game(signed, m[None]), torch.tensor([1.0]))
    weighted = torch.where(m, 3.0, 1.0)[None]  # 16 * 3 / (16 * 3 + 48 * 1)
    torch.testing.assert_close(energy_pointing_game(weighted, m[None]), torch.tensor([0.5]))
    zero = energy_pointing_game(torch.zeros(1, 8, 8), m[None])
    assert zero.tolist() == [0.0] and not zero.isnan().any()


def test_energy_is_the_same_for_cam_and_relu_cam_over_z():
    g = torch.Generator().manual_seed(0)
    cam = torch.randn(3, 4, 4, generator=g)
    masks = torch.rand(3, 16, 16, generator=g) > 0.5
    torch.testing.assert_close(energy_pointing_game(cam, masks), energy_pointing_game(torch.relu(cam) / 16, masks))


def test_batched_equals_one_by_one():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(5, 4, 4, generator=g)
    masks = torch.rand(5, 16, 16, generator=g) > 0.7
    for fn in (pointing_game, mask_iou, energy_pointing_game):
        batched = fn(maps, masks)
        single = torch.cat([fn(maps[i : i + 1], masks[i : i + 1]) for i in range(5)])
        assert torch.equal(batched, single)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same B"):
        pointing_game(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch dimension"):
        mask_iou(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        energy_pointing_game(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))


def test_pointing_game_near_ties_do_not_depend_on_round_off() -> None:
    # A centred Gaussian on an even grid has four equal maxima; round-off of ~1e-7 (another CPU's
    # float sums) must not decide which one is "the" maximum: the first in raster order wins.
    base = camlib.metrics.center_gaussian_map(1, 16)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    up = camlib.upsample(base, 64)[0]
    first = int((up >= up.max() - 1e-5 * (up.max() - up.min())).flatten().nonzero()[0])
    masks.view(1, -1)[0, first] = True
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        noisy = base * (1 + 1e-7 * torch.randn(base.shape, generator=gen))
        assert pointing_game(noisy, masks).item()
    clear = base.clone()
    clear[0, 12, 12] = 2.0  # a clear maximum elsewhere is still found
    assert not pointing_game(clear, masks).item()
