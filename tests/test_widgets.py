"""The explorer driven from Python: each control, against the camlib call it stands for."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import camlib
from camlib.widgets import METHODS, Explorer, default_layers

EGYPTIAN_CAT, TABBY, TIGER_CAT = 285, 281, 282


@pytest.fixture(scope="module")
def explorer(real_model: camlib.LoadedModel) -> Explorer:
    return Explorer(real_model, "chelsea")


def decoded(ex: Explorer) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(ex.image_widget.value)).convert("RGB"))


def set_controls(ex: Explorer, method: str, layer: str, target: int) -> None:
    ex.method_control.value = method
    ex.layer_control.value = layer
    ex.class_control.value = target


def test_default_layers_are_short_and_end_at_the_feature_layer(real_model: camlib.LoadedModel) -> None:
    names = default_layers(real_model)
    assert names == ["conv_stem", "bn1", *[f"blocks.{i}" for i in range(7)], "conv_head", "bn2"]
    assert set(names) <= set(camlib.layer_names(real_model.net))


def test_initial_state_is_cam_of_the_top1_class_at_the_feature_layer(explorer: Explorer, chelsea_x) -> None:
    ex = Explorer(explorer.model, "chelsea")
    assert ex.class_control.value == EGYPTIAN_CAT
    assert ex.layer_control.value == "bn2" and ex.method_control.value == "CAM"
    assert list(ex.method_control.options) == list(METHODS)
    torch.testing.assert_close(ex.current_map, camlib.cam(ex.model, chelsea_x, EGYPTIAN_CAT)[0], rtol=1e-5, atol=1e-4)
    assert decoded(ex).shape == (*ex.picture.size[::-1], 3)


def test_class_list_starts_with_the_top_predictions_and_holds_every_class(explorer: Explorer, chelsea_x) -> None:
    values = [v for _, v in explorer.class_control.options]
    assert sorted(values) == list(range(1000))
    top5 = explorer.model.net(chelsea_x).topk(5).indices[0].tolist()
    assert values[:5] == top5
    labels = [label for label, _ in explorer.class_control.options]
    assert len(set(labels)) == 1000
    assert labels[0].startswith("Egyptian cat") and "54.3%" in labels[0]


@pytest.mark.parametrize(
    "method, layer",
    [(m, layer) for m in ("Grad-CAM", "Grad-CAM++", "Counterfactual") for layer in ("bn2", "blocks.4")]
    + [("Grad-CAM", "conv_stem")],
)
def test_gradient_methods_match_camlib(explorer: Explorer, chelsea_x, method: str, layer: str) -> None:
    net = explorer.model.net
    for target in (TABBY, EGYPTIAN_CAT):
        before = explorer.image_widget.value
        set_controls(explorer, method, layer, target)
        if method == "Grad-CAM++":
            expected = camlib.gradcam_pp(net, chelsea_x, layer, target)[0]
        else:
            expected = camlib.gradcam(net, chelsea_x, layer, target, counterfactual=method == "Counterfactual")[0]
        torch.testing.assert_close(explorer.current_map, expected)  # same ops, same threads: equal
        assert explorer.image_widget.value != before
        assert layer in explorer.message.value and method in explorer.message.value


def test_cam_of_every_class_matches_camlib(explorer: Explorer, chelsea_x) -> None:
    set_controls(explorer, "CAM", "bn2", TIGER_CAT)
    for target in (TABBY, 0, 999, EGYPTIAN_CAT):
        before = explorer.image_widget.value
        explorer.class_control.value = target
        expected = camlib.cam(explorer.model, chelsea_x, target)[0]
        torch.testing.assert_close(explorer.current_map, expected, rtol=1e-5, atol=1e-4)
        assert explorer.image_widget.value != before


def test_cam_away_from_the_feature_layer_is_explained_not_raised(explorer: Explorer) -> None:
    set_controls(explorer, "Grad-CAM", "blocks.3", EGYPTIAN_CAT)
    explorer.method_control.value = "CAM"  # must not raise
    assert explorer.current_map is None
    assert "feature layer" in explorer.message.value and "bn2" in explorer.message.value
    plain = decoded(explorer).astype(int)
    assert np.abs(plain - explorer._picture_rgb.astype(int)).mean() < 3  # the photo alone (JPEG noise only)
    explorer.class_control.value = TABBY  # still no exception
    explorer.layer_control.value = "bn2"
    assert explorer.current_map is not None


def test_opacity_redraws_without_recomputing(explorer: Explorer) -> None:
    set_controls(explorer, "Grad-CAM", "bn2", EGYPTIAN_CAT)
    the_map, before = explorer.current_map, decoded(explorer).astype(int)
    explorer.opacity_control.value = 0.0
    assert explorer.current_map is the_map
    photo = explorer._picture_rgb.astype(int)
    assert np.abs(decoded(explorer).astype(int) - photo).mean() < 3
    assert np.abs(before - photo).mean() > 20
    explorer.opacity_control.value = 0.5


def test_search_box_sets_the_class(explorer: Explorer) -> None:
    assert len(explorer.search_control.options) == 1000
    explorer.search_control.value = "tabby"
    assert explorer.class_control.value == TABBY
    explorer.search_control.value = "goldfish"
    assert explorer.class_control.value == 1
    explorer.search_control.value = "gold"  # not a full name yet: nothing happens
    assert explorer.class_control.value == 1


def test_moves_reuse_cached_work(explorer: Explorer) -> None:
    """A class change costs no forward pass; a layer change costs one; a revisit costs nothing."""
    net = explorer.model.net
    forwards = []
    handle = net.register_forward_hook(lambda *_: forwards.append(1))
    try:
        set_controls(explorer, "Grad-CAM", "blocks.5", TABBY)
        forwards.clear()
        explorer.class_control.value = TIGER_CAT
        explorer.method_control.value = "Grad-CAM++"
        explorer.class_control.value = EGYPTIAN_CAT
        assert forwards == []
        explorer.layer_control.value = "blocks.2"
        assert len(forwards) == 1
        grads = dict(explorer._grads)
        explorer.layer_control.value = "blocks.5"  # new forward, but the seen gradients are reused
        explorer.class_control.value = TABBY
        assert explorer._grads[("blocks.5", TABBY)] is grads[("blocks.5", TABBY)]
    finally:
        handle.remove()


def test_model_is_left_as_it_was(real_model: camlib.LoadedModel) -> None:
    net = real_model.net
    net.train()
    try:
        ex = Explorer(real_model, camlib.load_image("coffee"), layers=["blocks.4"], methods=["Grad-CAM", "CAM"])
        assert ex.layer_control.options == ("blocks.4", "bn2")  # CAM needs the feature layer: added
        ex.layer_control.value = "blocks.4"
        ex.class_control.value = 967
        assert all(m.training for m in net.modules())
        assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
        assert all(p.grad is None for p in net.parameters())
    finally:
        net.eval()


def test_threads_1_computes_a_move_on_one_thread_and_restores_the_setting(
    real_model: camlib.LoadedModel, chelsea_x
) -> None:
    ex = Explorer(real_model, "chelsea", methods=["Grad-CAM++"], threads=1)
    seen = []
    handle = real_model.net.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ex.layer_control.value = "blocks.4"
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        handle.remove()
        torch.set_num_threads(before)
    # Sums run in another order than on torch's threads: equal to a stated tolerance, not bit for bit.
    expected = camlib.gradcam_pp(real_model.net, chelsea_x, "blocks.4", EGYPTIAN_CAT)[0]
    scale = expected.abs().max().item()
    torch.testing.assert_close(ex.current_map, expected, rtol=1e-3, atol=1e-4 * scale)


def test_display_delegates_to_the_widget(explorer: Explorer) -> None:
    bundle = explorer._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == explorer.widget.model_id
    assert callable(explorer._ipython_display_)
    assert "Explorer(" in repr(explorer)


def test_bad_arguments_fail_early(real_model: camlib.LoadedModel) -> None:
    with pytest.raises(ValueError, match="Grad-CAM"):
        Explorer(real_model, "chelsea", methods=["GradCAM"])
    with pytest.raises(camlib.LayerError, match="blocks"):
        Explorer(real_model, "chelsea", layers=["blocks.99"])


def test_png_format(real_model: camlib.LoadedModel) -> None:
    ex = Explorer(real_model, "rocket", methods=["Grad-CAM"], image_format="png")
    assert ex.image_widget.format == "png" and ex.image_widget.value[:8] == b"\x89PNG\r\n\x1a\n"
    expected = camlib.overlay(ex.picture, ex.current_map)
    np.testing.assert_array_equal(decoded(ex), expected)  # lossless: exactly camlib.overlay
