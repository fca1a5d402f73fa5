"""camlib.shortcut: the marked shapes of notebook 12 and the mass-share measure."""

from __future__ import annotations

import pytest
import torch

from camlib import shortcut, synthetic
from camlib.metrics import energy_pointing_game


def test_marks_are_painted_where_and_as_said() -> None:
    data = shortcut.shortcut_shapes(50, seed=3, bias=1.0)
    plain, labels, masks = synthetic.shapes(50, seed=3)
    assert torch.equal(data.labels, labels) and torch.equal(data.mark_classes, labels)
    m = data.mark_masks[0]
    assert m.sum() == 64 and m[2:10, 2:10].all()
    colours = data.images[:, :, 2:10, 2:10]  # (N, 3, 8, 8): one flat colour per image
    expected = shortcut.MARK_COLORS[labels][:, :, None, None].expand_as(colours)
    assert torch.equal(colours, expected)
    outside = ~data.mark_masks[:, None].expand_as(plain)
    assert torch.equal(data.images[outside], plain[outside])  # nothing else changed
    assert torch.equal(data.shape_masks, masks & ~data.mark_masks)


@pytest.mark.parametrize(("bias", "low", "high"), [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.2, 0.15, 0.25)])
def test_bias_is_the_agreement_rate(bias: float, low: float, high: float) -> None:
    data = shortcut.shortcut_shapes(1000, seed=4, bias=bias)
    agree = (data.mark_classes == data.labels).float().mean().item()
    assert low <= agree <= high
    # the disagreeing marks are spread over the other four classes
    if bias < 1:
        wrong = data.mark_classes[data.mark_classes != data.labels]
        assert len(torch.unique(wrong)) == 5


def test_same_arguments_same_data_and_global_state_untouched() -> None:
    state = torch.random.get_rng_state()
    a, b = shortcut.shortcut_shapes(20, seed=5, bias=0.5), shortcut.shortcut_shapes(20, seed=5, bias=0.5)
    assert torch.equal(a.images, b.images) and torch.equal(a.mark_classes, b.mark_classes)
    assert torch.equal(state, torch.random.get_rng_state())


def test_mass_shares_against_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(4, 16, 16, generator=g)
    regions = torch.rand(4, 64, 64, generator=g) < 0.3
    (share,) = shortcut.mass_shares(maps, regions)
    for i in range(4):
        pos = torch.nn.functional.interpolate(  # ReLU at the map's resolution, then bilinear to the image's
            maps[i].clamp(min=0)[None, None], size=64, mode="bilinear", align_corners=False
        )[0, 0]
        torch.testing.assert_close(share[i], pos[regions[i]].sum() / pos.sum())
    # the energy-based pointing game, region by region; and a CAM and its ReLU get the same shares
    torch.testing.assert_close(share, energy_pointing_game(maps, regions))
    torch.testing.assert_close(shortcut.mass_shares(torch.relu(maps) / 7, regions)[0], share)
    zero, _ = shortcut.mass_shares(torch.zeros(2, 16, 16) - 1, regions[:2], regions[:2])
    assert torch.equal(zero, torch.zeros(2))  # no positive mass: 0, not NaN


def test_mark_zone_grows_by_the_margin_and_is_clipped() -> None:
    data = shortcut.shortcut_shapes(2, seed=0, bias=1.0)
    zone = shortcut.mark_zone(data.mark_masks)
    assert zone[0].sum() == 14 * 14 and zone[0][:14, :14].all()


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="probability"):
        shortcut.shortcut_shapes(2, seed=0, bias=1.5)
    with pytest.raises(ValueError, match="does not fit"):
        shortcut.add_marks(torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="one mark class per image"):
        shortcut.add_marks(torch.zeros(2, 3, 64, 64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match"):
        shortcut.mass_shares(torch.zeros(2, 16, 16), torch.zeros(3, 64, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="Unknown recipe"):
        shortcut.train("shortcut_nope")
