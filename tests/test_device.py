"""camlib.get_device and camlib.setup."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import camlib


def test_env_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CAMLIB_DEVICE", "cpu")
    assert camlib.get_device() == torch.device("cpu")
    monkeypatch.setenv("CAMLIB_DEVICE", "cuda:1")  # a name is enough: nothing is allocated
    assert camlib.get_device() == torch.device("cuda", 1)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMLIB_DEVICE", "gpu-please")
    with pytest.raises(ValueError, match="CAMLIB_DEVICE='gpu-please'"):
        camlib.get_device()


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_order_cuda_mps_cpu(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str) -> None:
    monkeypatch.delenv("CAMLIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert camlib.get_device().type == expected


def test_empty_env_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMLIB_DEVICE", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert camlib.get_device() == torch.device("cpu")


def test_setup_seeds_prints_and_returns_device(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("CAMLIB_DEVICE", "cpu")
    state = torch.random.get_rng_state()
    try:
        device = camlib.setup(seed=3)
        draws = (torch.rand(3), np.random.rand(3), random.random())
        camlib.setup(seed=3)
        again = (torch.rand(3), np.random.rand(3), random.random())
    finally:
        torch.random.set_rng_state(state)
    assert device == torch.device("cpu")
    assert capsys.readouterr().out == "camlib on cpu\ncamlib on cpu\n"
    torch.testing.assert_close(draws[0], again[0], rtol=0, atol=0)
    np.testing.assert_array_equal(draws[1], again[1])
    assert draws[2] == again[2]


def test_full_fp32_switches_tf32_off_inside_and_restores_after() -> None:
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    try:
        conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
        with camlib.device.full_fp32():
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        seen = []
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 2),
        )
        net.register_forward_hook(lambda *_: seen.append(conv.fp32_precision))
        camlib.gradcam(net, torch.randn(1, 3, 8, 8), "0", targets=0)
        assert seen == ["ieee"]
        with pytest.raises(camlib.LayerError):
            camlib.gradcam(net, torch.randn(1, 3, 8, 8), "nope", targets=0)
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def test_every_map_method_runs_its_forward_in_full_float32(map_calls) -> None:
    """Each function that makes a map runs the model with TF32 off (what the GPU agreement rests on), whatever the
    user's setting, and restores it: a module inside the model records the setting while it runs."""
    from camlib.device import _precision_knobs

    knobs = _precision_knobs()
    if not knobs:
        pytest.skip("this torch has no fp32_precision knobs (torch < 2.9)")
    vit = camlib.load_model("small_vit_shapes").net
    net = camlib.load_model("small_gap_shapes").net
    x = camlib.synthetic.shapes(1, seed=0)[0]
    seen: list[str] = []
    spy = lambda m, i, o: seen.append(knobs[0].fp32_precision)  # noqa: E731
    calls = map_calls(net, x, vit)
    saved = [k.fp32_precision for k in knobs]
    try:
        for k in knobs:
            k.fp32_precision = "tf32"
        for name, call in calls.items():
            model = vit if name == "attention_rollout" else net
            handle = model.get_submodule("patch_embed" if model is vit else "normalize").register_forward_hook(spy)
            seen.clear()
            try:
                call()
            finally:
                handle.remove()
            assert seen and set(seen) == {"ieee"}, (name, seen)
            assert [k.fp32_precision for k in knobs] == ["tf32", "tf32"], name  # the user's setting, back
    finally:
        for k, v in zip(knobs, saved, strict=True):
            k.fp32_precision = v
