"""What users of CAM libraries trip over: batches, targets, hooks, modes, in-place ops, errors.

A small seeded float32 CNN with BatchNorm, in-place ReLUs and dropout (so train mode
would change the answer), the real EfficientNet-Lite0 for ReLU6, and resnet18 for the
structural memory check. Tolerances: float32, ``rtol=1e-5`` and ``atol=1e-6`` times the
largest magnitude unless stated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision
from torch import Tensor, nn

import camlib
from camlib.hooks import forward_with_grad_at


def close(actual: Tensor, expected: Tensor, rel: float = 1e-5) -> None:
    scale = float(expected.detach().abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * 0.1 * scale)


class EdgeNet(nn.Module):
    """conv · BN · ReLU(in-place) · conv · BN · ReLU(in-place) · GAP · dropout · linear."""

    def __init__(self, inplace: bool = True, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


def edge_net(inplace: bool = True) -> EdgeNet:
    torch.manual_seed(0)
    net = EdgeNet(inplace)
    with torch.no_grad():
        for bn in (net.features[1], net.features[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture
def net() -> EdgeNet:
    return edge_net()


@pytest.fixture
def x() -> Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 16, 16)


LAYER = "features.5"
MID = "features.1"  # a BatchNorm followed by an in-place ReLU

Method = Callable[[nn.Module, Tensor, str, object], Tensor]
METHODS: dict[str, Method] = {
    "cam": lambda n, x, layer, t: camlib.cam(n, x, t),
    "gradcam": lambda n, x, layer, t: camlib.gradcam(n, x, layer, t),
    "gradcam_counterfactual": lambda n, x, layer, t: camlib.gradcam(n, x, layer, t, counterfactual=True),
    "gradcam_pp": lambda n, x, layer, t: camlib.gradcam_pp(n, x, layer, t),
    "guided_backprop": lambda n, x, layer, t: camlib.guided_backprop(n, x, t),
    "guided_gradcam": lambda n, x, layer, t: camlib.guided_gradcam(n, x, layer, t),
    "layer_gradients": lambda n, x, layer, t: camlib.layer_gradients(n, x, layer, t)[1],
}
GRAD_METHODS = [m for m in METHODS if m != "cam"]


def hook_counts(net: nn.Module) -> int:
    dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    per_module = sum(len(getattr(m, d)) for m in net.modules() for d in dicts)
    mm = torch.nn.modules.module
    glob = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return per_module + sum(len(getattr(mm, g)) for g in glob)


# --------------------------------------------------------------------------------------
# Targets: batches, one int, K targets for one image, callables, counterfactual
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_one_int_target_gives_every_image_its_own_map(net: EdgeNet, x: Tensor, method: str) -> None:
    m = METHODS[method]
    maps = m(net, x, MID, 3)  # at MID even the gradients differ from image to image
    for i in range(3):
        single = m(net, x[i : i + 1], MID, 3)
        close(maps[i], single[0])
    assert all(bool(maps[i].abs().max() > 0) for i in range(3)), "an image got an all-zero map"
    assert not torch.allclose(maps[1], maps[0]) and not torch.allclose(maps[2], maps[0])


@pytest.mark.parametrize("method", list(METHODS))
def test_numpy_and_0d_tensor_targets_mean_one_class_for_all(net: EdgeNet, x: Tensor, method: str) -> None:
    m = METHODS[method]
    expected = m(net, x, LAYER, 3)
    close(m(net, x, LAYER, np.int64(3)), expected)
    close(m(net, x, LAYER, torch.tensor(3)), expected)
    close(m(net, x, LAYER, [3, 3, 3]), expected)


@pytest.mark.parametrize("method", list(METHODS))
def test_batch_of_one_with_k_targets_equals_k_calls(net: EdgeNet, x: Tensor, method: str) -> None:
    m, ks = METHODS[method], [2, 5, 7, 5]
    maps = m(net, x[:1], LAYER, ks)
    assert maps.shape[0] == len(ks)
    for j, k in enumerate(ks):
        close(maps[j], m(net, x[:1], LAYER, k)[0])
    assert not torch.allclose(maps[0], maps[1])


def test_callable_target_is_a_contrast(net: EdgeNet, x: Tensor) -> None:
    a, b = 2, 7
    acts, g_ab, _ = camlib.layer_gradients(net, x, MID, lambda z: z[:, a] - z[:, b])
    _, g_a, _ = camlib.layer_gradients(net, x, MID, a)
    _, g_b, _ = camlib.layer_gradients(net, x, MID, b)
    close(g_ab, g_a - g_b)  # the gradient is linear in the score
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", (g_a - g_b).mean((2, 3)), acts))
    assert bool((expected.flatten(1).amax(1) > 0).all())
    close(camlib.gradcam(net, x, MID, lambda z: z[:, a] - z[:, b]), expected)


def test_callable_target_must_return_one_score_per_image(net: EdgeNet, x: Tensor) -> None:
    with pytest.raises(ValueError, match=r"one score per image, shape \(3,\); got \(3, 10\)"):
        camlib.gradcam(net, x, LAYER, lambda z: z)
    with pytest.raises(TypeError, match="only works with the gradient methods"):
        camlib.cam(net, x, lambda z: z[:, 0])


def test_counterfactual_negates_the_gradients(net: EdgeNet, x: Tensor) -> None:
    acts, grads, _ = camlib.layer_gradients(net, x, MID, [1, 4, 8])
    signed = torch.einsum("bk,bkhw->bhw", grads.mean((2, 3)), acts)
    assert bool((signed > 0).any()) and bool((signed < 0).any())
    plain = camlib.gradcam(net, x, MID, [1, 4, 8])
    counter = camlib.gradcam(net, x, MID, [1, 4, 8], counterfactual=True)
    close(plain, torch.relu(signed))
    close(counter, torch.relu(-signed))  # regions whose removal raises the score
    assert not bool(((plain > 0) & (counter > 0)).any())
    assert bool((counter > 0).any())


# --------------------------------------------------------------------------------------
# The model is left exactly as it was: .grad, hooks, train/eval flags, grad mode
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_no_parameter_grad_is_touched(net: EdgeNet, x: Tensor, method: str) -> None:
    METHODS[method](net, x, LAYER, None)
    assert all(p.grad is None for p in net.parameters())
    marker = {name: torch.full_like(p, 0.25) for name, p in net.named_parameters()}
    for name, p in net.named_parameters():
        p.grad = marker[name].clone()
    xg = x.clone().requires_grad_(True)
    METHODS[method](net, xg, LAYER, None)
    assert xg.grad is None
    for name, p in net.named_parameters():
        assert torch.equal(p.grad, marker[name]), name


@pytest.mark.parametrize("method", list(METHODS))
def test_no_hooks_left_and_state_unchanged(net: EdgeNet, x: Tensor, method: str) -> None:
    before = copy.deepcopy(net.state_dict())
    assert hook_counts(net) == 0
    METHODS[method](net, x, MID, [0, 1, 2])
    assert hook_counts(net) == 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class Boom(RuntimeError):
    pass


class RaisingNet(EdgeNet):
    """Raises mid-forward, after the target layer ran (the hooks are then in place)."""

    def forward(self, x: Tensor) -> Tensor:
        self.features(x)
        raise Boom("mid-forward failure")


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("grad_mode", [True, False])
def test_exception_mid_forward_leaves_nothing_behind(method: str, grad_mode: bool) -> None:
    torch.manual_seed(0)
    net = RaisingNet().train()
    net.features[1].eval()
    flags = [m.training for m in net.modules()]
    x = torch.randn(2, 3, 16, 16)
    if method == "cam":  # cam needs a GAP head to be found first; fake it as already known
        camlib.methods._heads[net] = (LAYER, net.fc)
    with torch.set_grad_enabled(grad_mode):
        with pytest.raises(Boom):
            METHODS[method](net, x, LAYER, 0)
        assert torch.is_grad_enabled() is grad_mode
    assert hook_counts(net) == 0
    assert [m.training for m in net.modules()] == flags
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("method", list(METHODS))
def test_mixed_train_flags_restored_and_maps_computed_in_eval(net: EdgeNet, x: Tensor, method: str) -> None:
    expected = METHODS[method](net, x, LAYER, [1, 2, 3])  # net in eval mode
    net.train()
    net.features[1].eval()  # one BatchNorm frozen, the rest training: a mixed state
    net.drop.train()
    flags = [m.training for m in net.modules()]
    got = METHODS[method](net, x, LAYER, [1, 2, 3])
    assert [m.training for m in net.modules()] == flags
    close(got, expected)  # dropout and batch statistics played no part


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "guided_backprop", "layer_gradients"])
def test_works_under_no_grad_and_inference_mode(net: EdgeNet, x: Tensor, method: str) -> None:
    expected = METHODS[method](net, x, LAYER, [1, 2, 3])
    with torch.no_grad():
        close(METHODS[method](net, x, LAYER, [1, 2, 3]), expected)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        xi = x.clone()
        got = METHODS[method](net, xi, LAYER, [1, 2, 3])
    close(got, expected)


def test_layer_given_as_module_equals_by_name(net: EdgeNet, x: Tensor) -> None:
    close(camlib.gradcam(net, x, net.features[1], 2), camlib.gradcam(net, x, MID, 2))


# --------------------------------------------------------------------------------------
# In-place operations right after the target layer
# --------------------------------------------------------------------------------------


def test_inplace_relu_after_target_layer(net: EdgeNet, x: Tensor) -> None:
    with torch.no_grad():
        bn_out = net.features[1](net.features[0](x))  # the BatchNorm output, by hand
    assert bool((bn_out < 0).any())  # an in-place ReLU would zero these
    acts, _, _ = camlib.layer_gradients(net, x, MID, [0, 1, 2])
    close(acts, bn_out)
    with camlib.capture(net, MID) as cap:
        net(x)
    close(cap.activation, bn_out)
    twin = edge_net(inplace=False)
    for name in ("gradcam", "gradcam_pp", "gradcam_counterfactual", "guided_gradcam", "layer_gradients"):
        close(METHODS[name](net, x, MID, [0, 1, 2]), METHODS[name](twin, x, MID, [0, 1, 2]))


def test_resnet_inplace_add_after_bn2() -> None:
    """torchvision's BasicBlock does ``out = bn2(...); out += identity`` in place."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        block = net.layer1[0]
        bn2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(stem)))))
    acts, _, _ = camlib.layer_gradients(net, x, "layer1.0.bn2", [3, 4])
    close(acts, bn2)
    with camlib.capture(net, "layer1.0.bn2") as cap:
        net(x)
    close(cap.activation, bn2)


# --------------------------------------------------------------------------------------
# Guided backprop on the real model: ReLU6, per image in a batch, model untouched
# --------------------------------------------------------------------------------------


class HookReLU6(nn.Module):
    def forward(self, t: Tensor) -> Tensor:
        out = t.clamp(0, 6)
        if out.requires_grad:
            out.register_hook(lambda g: g.clamp(min=0))
        return out


def test_guided_backprop_relu6_efficientnet(real_model: camlib.LoadedModel, chelsea_x: Tensor) -> None:
    net = real_model.net
    coffee = real_model.preprocess(camlib.load_image("coffee"))
    x = torch.cat([chelsea_x, coffee])
    targets = [285, 967]  # Egyptian cat, espresso
    before = copy.deepcopy(net.state_dict())
    gb = camlib.guided_backprop(net, x, targets)
    # reference: a twin whose 33 ReLU6 modules are clamp(0, 6) + a positive-gradient tensor hook
    twin = copy.deepcopy(net)
    swapped = 0
    for module in twin.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(module, name, HookReLU6())
                swapped += 1
    assert swapped == 33
    xg = x.clone().requires_grad_(True)
    s = twin(xg).gather(1, torch.tensor(targets)[:, None]).sum()
    expected = torch.autograd.grad(s, xg)[0]
    close(gb, expected, rel=1e-4)
    for i, t in enumerate(targets):  # each image of the batch gets its own gradient
        close(gb[i : i + 1], camlib.guided_backprop(net, x[i : i + 1], t), rel=1e-4)
    assert hook_counts(net) == 0 and not net.training
    assert all(p.grad is None for p in net.parameters())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------------------
# Bad input: a clear error naming the problem and the fix
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_class_index_out_of_range(net: EdgeNet, x: Tensor, method: str) -> None:
    for bad in (10, -1, [0, 1, 10]):
        with pytest.raises(IndexError, match=r"outside the model's 10 outputs \(valid: 0\.\.9\)"):
            METHODS[method](net, x, LAYER, bad)
    with pytest.raises(IndexError, match="outside the model's 10 outputs"):
        METHODS[method](net, x[:1], LAYER, [1, 12])  # one image, K targets


@pytest.mark.parametrize("method", list(METHODS))
def test_target_list_of_wrong_length(net: EdgeNet, x: Tensor, method: str) -> None:
    with pytest.raises(ValueError, match=r"Got 2 targets for a batch of 3 images: give one class per image"):
        METHODS[method](net, x, LAYER, [1, 2])


@pytest.mark.parametrize("method", list(METHODS))
def test_non_integer_targets(net: EdgeNet, x: Tensor, method: str) -> None:
    with pytest.raises(TypeError, match="Class indices must be integers"):
        METHODS[method](net, x, LAYER, [1.5, 2.0, 3.0])


@pytest.mark.parametrize("method", [m for m in GRAD_METHODS if m != "guided_backprop"])
@pytest.mark.parametrize("layer", ["fc", "pool"])
def test_layer_that_is_not_a_spatial_feature_map(net: EdgeNet, x: Tensor, method: str, layer: str) -> None:
    # "fc" outputs (B, 10); "pool" outputs (B, 16, 1, 1): no spatial extent to map
    with pytest.raises(camlib.LayerError, match=rf"Layer '{layer}' outputs .* not a spatial feature map"):
        METHODS[method](net, x, layer, 0)
    assert hook_counts(net) == 0


def test_unknown_layer_lists_nearest_names(net: EdgeNet, x: Tensor) -> None:
    with pytest.raises(camlib.LayerError, match=r"No layer named 'features.55'.*Nearest names: features.5"):
        camlib.gradcam(net, x, "features.55")


class TupleNet(EdgeNet):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return self.fc(self.pool(f).flatten(1)), f


class DictNet(EdgeNet):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": super().forward(x)}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "gradcam_counterfactual"])
@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_tuple_or_dict_output_needs_output_argument(net: EdgeNet, x: Tensor, method: str, kind: str) -> None:
    cls, pick = (TupleNet, lambda o: o[0]) if kind == "tuple" else (DictNet, lambda o: o["logits"])
    other = cls().eval()
    other.load_state_dict(net.state_dict())
    fn = getattr(camlib, method)
    args = (other, x) if method in ("cam", "guided_backprop") else (other, x, LAYER)
    with pytest.raises(TypeError, match=rf"forward returned a {kind}, not a logits tensor\. Pass output="):
        fn(*args, targets=1)
    assert hook_counts(other) == 0
    close(METHODS[method](net, x, LAYER, 1), _with_output(fn, args, pick, method))


def _with_output(fn: Callable, args: tuple, pick: Callable, method: str) -> Tensor:
    out = fn(*args, targets=1, output=pick)
    if method == "layer_gradients":
        return out[1]
    return out


def test_gradcam_counterfactual_with_output(net: EdgeNet, x: Tensor) -> None:
    other = TupleNet().eval()
    other.load_state_dict(net.state_dict())
    close(
        camlib.gradcam(other, x, LAYER, 1, counterfactual=True, output=lambda o: o[0]),
        camlib.gradcam(net, x, LAYER, 1, counterfactual=True),
    )


# --------------------------------------------------------------------------------------
# Memory, structurally: nothing upstream of the layer is kept for backward
# --------------------------------------------------------------------------------------


def graph_leaves(t: Tensor) -> list[Tensor]:
    """Every tensor that ``t``'s autograd graph would accumulate a gradient into."""
    seen, leaves, stack = set(), [], [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return leaves


def test_no_graph_upstream_of_the_layer() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.enable_grad():
        acts, logits = forward_with_grad_at(net, x, "layer3")
    assert acts.is_leaf and acts.requires_grad and acts.grad_fn is None
    leaves = {id(t) for t in graph_leaves(logits)}
    downstream = {id(p) for m in (net.layer4, net.fc) for p in m.parameters()}
    upstream = {id(p) for p in net.parameters()} - downstream
    assert id(acts) in leaves
    assert leaves <= downstream | {id(acts)}
    assert not leaves & upstream


@pytest.mark.parametrize("method", list(METHODS))
def test_k_targets_for_one_image_cost_one_forward(net: EdgeNet, x: Tensor, method: str) -> None:
    """K classes for one image: one forward of one image (guided Grad-CAM: two), K backwards."""
    METHODS[method](net, x[:1], LAYER, 0)  # CAM's head search (one extra forward) is cached now
    calls = []
    handle = net.features[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        maps = METHODS[method](net, x[:1], LAYER, [1, 2, 3, 4])
    finally:
        handle.remove()
    assert maps.shape[0] == 4
    assert calls == ([1, 1] if method == "guided_gradcam" else [1]), calls  # batch sizes of the forwards


def test_class_indices_for_one_image_are_checked_on_the_cpu():
    from camlib.methods import _many, _many_list

    logits = torch.randn(1, 10)
    assert _many_list([3, 7, 0], logits) == _many([3, 7, 0], logits).tolist() == [3, 7, 0]
    assert _many_list(torch.tensor([9]), logits) == [9]
    with pytest.raises(IndexError, match="outside the model's 10 outputs"):
        _many_list([3, 10], logits)
