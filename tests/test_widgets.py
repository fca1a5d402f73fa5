"""The explorer driven from Python: each control, against the camlib call it stands for."""

from __future__ import annotations

import io
import re

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
    ex = Explorer(explorer.model, "chelsea", replace=False)  # keep the module's explorer open
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
        grads = dict(explorer._cache.items)
        explorer.layer_control.value = "blocks.5"  # new forward, but the seen gradients are reused
        explorer.class_control.value = TABBY
        assert explorer._cache.items[("grad", "blocks.5", TABBY)] is grads[("grad", "blocks.5", TABBY)]
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
    ex = Explorer(real_model, "chelsea", methods=["Grad-CAM++"], threads=1, replace=False)
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
    # Measured (max |diff| / max |ref|, classes 285 281 282 0 999, threads=1 vs 2 and 4 threads) on AVX2
    # and on SSE4.1 (ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default), at blocks.4: the gradient
    # dy/dA <= 5.1e-7, the activations A ~7e-7, Grad-CAM <= 8.9e-7 on both. Grad-CAM++ differs by 2.3e-4
    # (AVX2), 2.6e-3 (SSE4.1) and 9e-3 (AVX-512, issue 9): its weights divide by 2 g^2 + sum(A) g^3,
    # ~7e-5 for one channel here, which magnifies the rounding of g. So: A and g tightly, the map exactly
    # as Grad-CAM++ of the explorer's own A and g, and the map against camlib.gradcam_pp to 3%.
    acts, g = ex.gradients("blocks.4", EGYPTIAN_CAT)
    ref_acts, ref_g, _ = camlib.layer_gradients(real_model.net, chelsea_x, "blocks.4", EGYPTIAN_CAT)
    torch.testing.assert_close(acts, ref_acts, rtol=0, atol=1e-5 * ref_acts.abs().max().item())  # measured 1e-6
    torch.testing.assert_close(g, ref_g, rtol=0, atol=1e-4 * ref_g.abs().max().item())
    own = camlib.methods.weighted_map(camlib.methods.gradcam_pp_weights(acts, g), acts)[0]
    torch.testing.assert_close(ex.current_map, own, rtol=0, atol=0)
    expected = camlib.gradcam_pp(real_model.net, chelsea_x, "blocks.4", EGYPTIAN_CAT)[0]
    torch.testing.assert_close(ex.current_map, expected, rtol=0, atol=3e-2 * expected.abs().max().item())


def test_threads_1_gradcam_and_cam_are_close_to_the_camlib_call(real_model: camlib.LoadedModel, chelsea_x) -> None:
    """Grad-CAM and CAM have no small denominators: 1e-4 of the map's maximum (measured <= 4e-6, both ISAs)."""
    ex = Explorer(real_model, "chelsea", methods=["Grad-CAM", "CAM"], threads=1, replace=False)
    for layer in ("bn2", "blocks.4"):
        ex.layer_control.value = layer
        for target in (EGYPTIAN_CAT, TABBY, 0):
            ex.class_control.value = target
            expected = camlib.gradcam(real_model.net, chelsea_x, layer, target)[0]
            torch.testing.assert_close(ex.current_map, expected, rtol=0, atol=1e-4 * expected.abs().max().item())
    ex.method_control.value, ex.layer_control.value = "CAM", "bn2"
    expected = camlib.cam(real_model, chelsea_x, 0)[0]
    torch.testing.assert_close(ex.current_map, expected, rtol=0, atol=1e-4 * expected.abs().max().item())
    ex.close()


def test_display_delegates_to_the_widget(explorer: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    """IPython shows an object through ``_ipython_display_`` first: the Explorer hands over its widget
    (ipywidgets 7.7, Colab's, displays that way). ipywidgets 8 widgets also have a widget-view bundle."""
    import IPython.display

    shown: list[object] = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    explorer._ipython_display_()
    assert shown == [explorer.widget]
    bundle = explorer._repr_mimebundle_()
    if hasattr(explorer.widget, "_repr_mimebundle_"):  # ipywidgets >= 8
        assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id
    else:  # ipywidgets 7: none (its widgets display themselves through _ipython_display_)
        assert bundle is None
    assert "Explorer(" in repr(explorer)


def test_bad_arguments_fail_early(real_model: camlib.LoadedModel) -> None:
    with pytest.raises(ValueError, match="Grad-CAM"):
        Explorer(real_model, "chelsea", methods=["GradCAM"])
    with pytest.raises(camlib.LayerError, match="blocks"):
        Explorer(real_model, "chelsea", layers=["blocks.99"])


def test_a_bare_net_or_a_non_int_target_is_a_clear_type_error(real_model: camlib.LoadedModel) -> None:
    with pytest.raises(TypeError, match=r"camlib\.load_model\(\.\.\.\).*LoadedModel\(name, net, classes"):
        Explorer(real_model.net, "chelsea")
    for target in ("1", 1.0, True):
        with pytest.raises(TypeError, match="target must be a class index"):
            Explorer(real_model, "chelsea", methods=["Grad-CAM"], target=target)
    ex = Explorer(real_model, "chelsea", methods=["Grad-CAM"], target=np.int64(TABBY))  # a numpy int is an index
    assert ex.class_control.value == TABBY and type(ex.class_control.value) is int
    ex.close()


def test_png_format(real_model: camlib.LoadedModel) -> None:
    ex = Explorer(real_model, "rocket", methods=["Grad-CAM"], image_format="png")
    assert ex.image_widget.format == "png" and ex.image_widget.value[:8] == b"\x89PNG\r\n\x1a\n"
    expected = camlib.overlay(ex.picture, ex.current_map)
    np.testing.assert_array_equal(decoded(ex), expected)  # lossless: exactly camlib.overlay


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"threads": 0}, "threads must be None"),
        ({"top": 0}, "top must be an int >= 1"),
        ({"max_side": 0}, "max_side must be an int >= 16"),
        ({"alpha": float("nan")}, "alpha"),
        ({"target": 1000}, "0..999"),
        ({"layer": "blocks.9"}, "layer='blocks.9' is not among"),
        ({"methods": ["Grad-CAM"], "method": "CAM"}, "method='CAM' is not among"),
        ({"cmap": "nope"}, "Unknown colormap"),
    ],
)
def test_bad_numbers_and_choices_fail_at_creation(real_model: camlib.LoadedModel, kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        Explorer(real_model, "chelsea", **kwargs)


@pytest.mark.parametrize("kwargs", [{"layers": ["blocks.4", "classifier"], "layer": "blocks.4"}, {"size": 32}])
def test_layers_without_a_map_fail_at_creation_not_on_selection(real_model: camlib.LoadedModel, kwargs) -> None:
    # "classifier" outputs logits; at 32 px bn2 is 1×1: both used to fail only when selected, or late
    with pytest.raises(camlib.LayerError, match="no spatial feature map"):
        Explorer(real_model, "chelsea", methods=["Grad-CAM", "CAM"], **kwargs)


def test_caches_stay_within_max_bytes(real_model: camlib.LoadedModel, chelsea_x) -> None:
    bound = 8 * 2**20  # the graph above conv_stem (~75 MB) does not fit: not kept; gradients are 1.5 MB each
    layers, methods = ["conv_stem", "bn2"], ["Grad-CAM"]
    ex = Explorer(real_model, "chelsea", layers, methods, max_bytes=bound, replace=False)
    ex.layer_control.value = "conv_stem"
    classes = [v for _, v in ex.class_control.options][:8]
    for c in classes:
        ex.class_control.value = c
        assert ex.cache_bytes <= bound
    kept = [k for k in ex._cache.items if k[0] == "grad"]
    assert 1 <= len(kept) < len(classes) and ex._graph is None
    expected = camlib.gradcam(real_model.net, chelsea_x, "conv_stem", classes[-1])[0]
    torch.testing.assert_close(ex.current_map, expected)  # dropping caches changed no number
    ex.layer_control.value = "bn2"  # a small graph is kept, and counted
    assert ex._graph is not None and 0 < ex._graph_bytes <= ex.cache_bytes <= bound
    ex.close()


def test_close_and_recreation_free_the_explorer(real_model: camlib.LoadedModel) -> None:
    import gc
    import weakref

    first = Explorer(real_model, "rocket", methods=["Grad-CAM"])
    first.class_control.value = TABBY
    assert first.cache_bytes > 0
    ref, widgets = weakref.ref(first), [first.class_control, first.image_widget, first.widget]
    del first
    second = Explorer(real_model, "rocket", methods=["Grad-CAM"])  # a re-run cell: same net, same image
    gc.collect()
    assert ref() is None  # observers unregistered, widgets closed: nothing holds the old explorer
    assert all(w.comm is None for w in widgets)
    other = Explorer(real_model, "coffee", methods=["Grad-CAM"])  # another image: both stay
    assert not second.closed and not other.closed
    second.close()
    assert second.closed and second.cache_bytes == 0 and second.current_map is None
    second.class_control.value = TIGER_CAT  # no observer left: nothing is computed
    assert second.current_map is None and second.cache_bytes == 0
    other.close()


@pytest.mark.parametrize(
    ("method", "reference"),
    [
        ("HiResCAM", lambda net, x, layer, c: torch.relu(camlib.hirescam(net, x, layer, c))),
        ("XGrad-CAM", camlib.xgradcam),
        ("LayerCAM", camlib.layercam),
    ],
)
def test_family_methods_reuse_the_cached_gradients_and_equal_camlib(
    explorer: Explorer, chelsea_x, method: str, reference
) -> None:
    set_controls(explorer, "Grad-CAM", "blocks.5", 285)
    cached = len(explorer._cache.items)
    set_controls(explorer, method, "blocks.5", 285)
    assert len(explorer._cache.items) == cached  # no new forward or backward: the same activations and gradients
    expected = reference(explorer.net, chelsea_x, "blocks.5", 285)[0]
    # To float rounding: the cached activations may come from a forward made while an earlier test's hook was
    # on the model, which camlib runs unfolded (camlib.fold). Measured 1.5e-4 of the maximum for XGrad-CAM at
    # blocks.5 (its weights divide by each channel's sum of activations, near zero for some), 6.5e-7 for Grad-CAM.
    tol = 5e-4 * expected.abs().max().item()
    torch.testing.assert_close(explorer.current_map, expected, rtol=5e-4, atol=tol)


def test_explorer_on_a_vision_transformer() -> None:
    """The course's class-token ViT (notebook 13): no GAP + linear head, so no CAM; its token layers in
    the layer control; it opens at the block before the last (a real map); the maps those of camlib.gradcam;
    the last block's all-zero map said as such."""
    model = camlib.load_model("small_vit_shapes")
    images, _, _ = camlib.synthetic.shapes(1, seed=1)
    picture = Image.fromarray((images[0].permute(1, 2, 0) * 255).round().byte().numpy())
    ex = Explorer(model, picture)
    assert "CAM" not in ex.method_control.options and ex.method_control.value == "Grad-CAM"
    assert ex.picture.size == (256, 256)  # the 64-px image shown enlarged 4×, pixel by pixel
    np.testing.assert_array_equal(np.asarray(ex.picture)[::4, ::4], np.asarray(picture))
    assert {"blocks.0", "blocks.3"} <= set(ex.layer_control.options)
    assert ex.layer_control.value == "blocks.2"
    assert ex.current_map.shape == (8, 8) and ex.current_map.any() and "zero" not in ex.message.value
    ex.layer_control.value = "blocks.3"
    assert not ex.current_map.any() and "zero everywhere" in ex.message.value
    ex.layer_control.value = "blocks.2"
    torch.testing.assert_close(ex.current_map, ex.reference())
    ex.method_control.value = "Grad-CAM++"
    torch.testing.assert_close(ex.current_map, ex.reference())
    ex.close()
    with pytest.raises(ValueError, match="CAM is not available.*GAP.*Leave 'CAM' out"):
        Explorer(model, picture, methods=["CAM", "Grad-CAM"])
