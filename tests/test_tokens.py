"""Class activation maps on a Vision Transformer's tokens (camlib.tokens) and attention rollout (camlib.rollout).

On timm's ``vit_tiny_patch16_224`` (random weights, offline) every gradient method is compared with
an independent reference: a forward hook that keeps the block's output with ``retain_grad``, a
full ``backward`` on a copy of the net, then the class token dropped and the patch tokens folded
to 14 × 14 by hand. Attention rollout is compared with timm's own, non-fused attention.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import Tensor, nn

import camlib
from camlib import family, methods, rollout, tokens

TARGETS = [3, 7]


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    with torch.no_grad():  # timm starts the head at 0.02 std: a larger one gives gradients of a useful size
        net.head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(2))
    return net


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def by_hand(net: nn.Module, x: Tensor, block: int, targets: list[int]) -> tuple[Tensor, Tensor]:
    """``(A, dS/dA)`` at ``blocks[block]`` folded to (B, C, 14, 14) by hand, with a full backward on a copy."""
    net = copy.deepcopy(net)
    kept = {}

    def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
        out.retain_grad()
        kept["t"] = out

    handle = net.blocks[block].register_forward_hook(hook)
    logits = net(x.clone())
    handle.remove()
    logits[torch.arange(len(targets)), torch.tensor(targets)].sum().backward()
    t = kept["t"]
    fold = lambda z: z[:, 1:].reshape(z.shape[0], 14, 14, z.shape[2]).permute(0, 3, 1, 2)  # noqa: E731
    return fold(t.detach()), fold(t.grad)


def relu_sum(w: Tensor, a: Tensor) -> Tensor:
    return torch.relu((w[:, :, None, None] * a).sum(1))


def references(a: Tensor, g: Tensor) -> dict[str, Tensor]:
    """Each method's formula, written out on the folded tensors."""
    g2, g3 = g**2, g**3
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / denom, torch.zeros_like(g2))
    return {
        "gradcam": relu_sum(g.mean((2, 3)), a),
        "gradcam_pp": relu_sum((alpha * torch.relu(g)).sum((2, 3)), a),
        "hirescam": (g * a).sum(1),
        "xgradcam": relu_sum((a * g).sum((2, 3)) / a.sum((2, 3)), a),
        "layercam": torch.relu((torch.relu(g) * a).sum(1)),
    }


METHODS = ["gradcam", "gradcam_pp", "hirescam", "xgradcam", "layercam"]


@pytest.mark.parametrize("method", METHODS)
def test_gradient_methods_on_vit_tiny_match_a_fold_by_hand(vit, x, method):
    a, g = by_hand(vit, x, 9, TARGETS)
    ref = references(a, g)[method]
    out = getattr(camlib, method)(vit, x, "blocks.9", TARGETS)
    assert out.shape == (2, 14, 14)
    assert ref.abs().amax() > 0
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().amax()))


def test_last_block_with_a_class_token_head_gives_a_zero_map(vit, x):
    """The head reads the class token only; the last block's patch tokens never reach the logits."""
    out = camlib.gradcam(vit, x, "blocks.11")
    assert out.shape == (2, 14, 14)
    acts, grads, _ = camlib.layer_gradients(vit, x, "blocks.11", TARGETS)
    assert acts.shape == (2, 192, 14, 14) and bool((grads == 0).all()) and bool((out == 0).all())
    _, g = by_hand(vit, x, 11, TARGETS)
    assert bool((g == 0).all())


def test_hirescam_vanishes_where_patch_tokens_only_feed_a_layernorm(vit, x):
    """blocks.10's patch tokens reach the class token only through blocks.11.norm1, which is scale-invariant,
    so sum_k g_k A_k = d/d(alpha) LN(alpha A) = 0 at every position (up to LayerNorm's eps); Grad-CAM is not 0."""
    a, g = by_hand(vit, x, 10, TARGETS)
    hires = camlib.hirescam(vit, x, "blocks.10", TARGETS)
    assert float(hires.abs().amax()) < 1e-4 * float((g.abs() * a.abs()).sum(1).amax())
    assert float(camlib.gradcam(vit, x, "blocks.10", TARGETS).amax()) > 0


def reshape_transform(t: Tensor, height: int = 14, width: int = 14) -> Tensor:
    """pytorch-grad-cam's tutorial reshape_transform for ViT, verbatim in spirit."""
    result = t[:, 1:, :].reshape(t.size(0), height, width, t.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def test_explicit_grid_and_callable_give_the_same_maps(vit, x):
    auto = camlib.gradcam(vit, x, "blocks.9", TARGETS)
    torch.testing.assert_close(camlib.gradcam(vit, x, "blocks.9", TARGETS, reshape=(14, 14)), auto)
    torch.testing.assert_close(camlib.gradcam(vit, x, "blocks.9", TARGETS, reshape=14), auto)
    hires = camlib.hirescam(vit, x, "blocks.9", TARGETS)
    torch.testing.assert_close(camlib.hirescam(vit, x, "blocks.9", TARGETS, reshape=reshape_transform), hires)
    torch.testing.assert_close(camlib.gradcam(vit, x, "blocks.9", TARGETS, reshape=reshape_transform), auto)


def test_a_callable_that_computes_values_is_refused(vit, x):
    def averaged(t: Tensor) -> Tensor:
        return t[:, 1:].mean(-1, keepdim=True).reshape(t.shape[0], 14, 14, 1).permute(0, 3, 1, 2)

    with pytest.raises(camlib.LayerError, match="only select and rearrange"):
        camlib.gradcam(vit, x, "blocks.9", reshape=averaged)


def test_qkv_and_mlp_hidden_layers_get_a_clear_error(vit, x):
    with pytest.raises(camlib.LayerError, match=r"query/key/value.*'blocks\.11'.*'blocks\.11\.norm1'"):
        camlib.gradcam(vit, x, "blocks.11.attn.qkv")
    with pytest.raises(camlib.LayerError, match="width 768.*width 192"):
        camlib.layercam(vit, x, "blocks.11.mlp.fc1")
    with pytest.raises(camlib.LayerError, match="asks for a 20×20 grid"):
        camlib.gradcam(vit, x, "blocks.9", reshape=(20, 20))


class Tokens(nn.Module):
    """30 tokens from a 6 × 5 patch grid, no patch_embed, mean-pooled: the grid cannot be inferred."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 30, 8) for a 24 × 20 input
        return self.fc(self.block(t).square().mean(1))


def test_unknown_grid_asks_for_reshape_and_then_matches_by_hand():
    net = Tokens().eval()
    x = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(3))
    with pytest.raises(camlib.LayerError, match=r"reshape=\(h, w\).*reshape=callable"):
        camlib.gradcam(net, x, "block")
    out = camlib.hirescam(net, x, "block", [0, 4], reshape=(6, 5))
    t = net.block(net.embed(x).flatten(2).transpose(1, 2)).detach().requires_grad_(True)
    logits = net.fc(t.square().mean(1))
    (g,) = torch.autograd.grad(logits[[0, 1], [0, 4]].sum(), t)
    fold = lambda z: z.reshape(2, 6, 5, 8).permute(0, 3, 1, 2)  # noqa: E731
    torch.testing.assert_close(out, (fold(g) * fold(t.detach())).sum(1))


def test_square_token_count_without_prefix_is_inferred():
    net = Tokens().eval()
    x = torch.rand(1, 3, 24, 24)  # 36 tokens: 6 × 6, no prefix
    assert camlib.gradcam(net, x, "block").shape == (1, 6, 6)


def reference_rollout(
    net: nn.Module, x: Tensor, mean_rows: bool = False, fusion: str = "mean", discard: float = 0.0, start: int = 0
) -> Tensor:
    """timm's own attention matrices (fused kernel off, on a copy) taken at attn_drop, rolled out by hand:
    from block ``start``, heads fused by ``fusion``, and per image the ``discard`` fraction of the smallest
    weights set to 0 except in the class token's column (one image at a time, by a full sort)."""
    net = copy.deepcopy(net)
    atts = []
    for b in net.blocks:
        b.attn.fused_attn = False
        b.attn.attn_drop.register_forward_hook(lambda _m, _i, o: atts.append(o.detach()))
    with torch.no_grad():
        net(x)
    n = atts[0].shape[-1]
    r = torch.eye(n).expand(x.shape[0], n, n)
    p = net.num_prefix_tokens
    for a in atts[start:]:
        a = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[fusion]
        for image in a if discard else []:
            flat = image.view(-1)  # a view: the zeros land in a
            smallest = flat.argsort()[: int(flat.numel() * discard)]
            flat[smallest[smallest % n >= p]] = 0
        a = a + torch.eye(n)
        r = (a / a.sum(-1, keepdim=True)) @ r
    rows = r[:, p:, p:].mean(1) if mean_rows else r[:, 0, p:]
    side = int((n - p) ** 0.5)
    return rows.reshape(-1, side, side)


def test_attention_rollout_matches_timms_unfused_attention(vit, x):
    fused = [b.attn.fused_attn for b in vit.blocks]
    out = camlib.attention_rollout(vit, x)
    assert out.shape == (2, 14, 14)
    torch.testing.assert_close(out, reference_rollout(vit, x), rtol=1e-4, atol=1e-7)
    assert [b.attn.fused_attn for b in vit.blocks] == fused
    options = [("max", 0.0, 0), ("min", 0.0, 0), ("mean", 0.9, 0), ("mean", 0.0, 4), ("max", 0.9, 4)]
    for fusion, discard, start in options:
        other = camlib.attention_rollout(vit, x, head_fusion=fusion, discard_ratio=discard, start_block=start)
        ref = reference_rollout(vit, x, fusion=fusion, discard=discard, start=start)
        torch.testing.assert_close(other, ref, rtol=1e-4, atol=1e-7)
        assert (other - out).abs().max() > 1e-3 * out.abs().max()  # each option changes the map
    with pytest.raises(ValueError, match="head_fusion"):
        camlib.attention_rollout(vit, x, head_fusion="median")


def test_attention_rollout_of_a_mean_pooled_vit_averages_the_patch_rows():
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, depth=2, global_pool="avg"
    ).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(camlib.attention_rollout(net, x), reference_rollout(net, x, mean_rows=True))
    with pytest.raises(camlib.LayerError, match="no timm-style attention"):
        camlib.attention_rollout(Tokens(), x)


def test_eigencam_on_tokens_and_a_clear_error_for_scorecam(vit, x):
    with camlib.capture(vit, "blocks.10") as cap:
        vit(x)
    grid = tokens.to_grid(cap.activation, tokens.TokenGrid(1, 14, 14))
    torch.testing.assert_close(camlib.eigencam(vit, x, "blocks.10"), family.eigencam_map(grid))
    with pytest.raises(camlib.LayerError, match="Score-CAM is implemented for feature maps"):
        camlib.scorecam(vit, x[:1], "blocks.10", progress=False)
    with pytest.raises(camlib.LayerError, match="Ablation-CAM"):
        camlib.ablationcam(vit, x[:1], "blocks.10", progress=False)


def state(net: nn.Module) -> tuple:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())
    return (
        hooks,
        [m.training for m in net.modules()],
        [p.grad for p in net.parameters()],
        [b.attn.fused_attn for b in net.blocks],
        torch.is_grad_enabled(),
    )


def test_hooks_flags_and_grads_untouched_after_success_and_errors(vit, x):
    net = copy.deepcopy(vit).train()
    net.blocks[3].eval()
    before = state(net)
    camlib.gradcam(net, x, "blocks.10")
    camlib.attention_rollout(net, x)
    assert state(net) == before
    for call in (
        lambda: camlib.gradcam(net, x, "blocks.11.attn.qkv"),
        lambda: camlib.gradcam(net, x, "blocks.10", reshape=(20, 20)),
        lambda: rollout.attention_rollout(net, x, start_block=12),
    ):
        with pytest.raises((camlib.LayerError, ValueError)):
            call()
        assert state(net) == before


def test_many_targets_for_one_image(vit, x):
    out = camlib.gradcam(vit, x[:1], "blocks.10", TARGETS)
    ref = torch.cat([camlib.gradcam(vit, x[:1], "blocks.10", t) for t in TARGETS])
    torch.testing.assert_close(out, ref)
    assert methods.layer_gradients(vit, x[:1], "blocks.10", TARGETS)[0].shape == (2, 192, 14, 14)


def test_small_vit_shapes_loads_is_deterministic_and_localizes_above_chance():
    model = camlib.load_model("small_vit_shapes", device="cpu")
    assert model.name in camlib.model_names() and model.feature_layer == "blocks.2"
    images, labels, masks = camlib.synthetic.shapes(40, seed=2)
    x = model.preprocess(images)
    with torch.no_grad():
        acc = (model.net(x).argmax(1) == labels).float().mean().item()
    assert acc > 0.6  # 5 classes: chance is 0.2
    a = camlib.gradcam(model.net, x, "blocks.2", labels)
    b = camlib.gradcam(camlib.load_model("small_vit_shapes", device="cpu").net, x, "blocks.2", labels)
    assert a.shape == (40, 8, 8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert camlib.attention_rollout(model.net, x).shape == (40, 8, 8)
    assert model.extra["history"] and model.extra["config"]["arch"] == "SmallViT"
    with pytest.raises(camlib.CamError):
        camlib.cam(model, x)


def test_small_vit_conv_stem_and_unknown_stem():
    from camlib.vitnet import SmallViT

    net = SmallViT(stem="conv").eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert net(x).shape == (2, 5) and camlib.gradcam(net, x, "blocks.1").shape == (2, 8, 8)
    with pytest.raises(ValueError, match="stem"):
        SmallViT(stem="hybrid")


def test_tokens_under_inference_mode_and_amp():
    model = camlib.load_model("small_vit_shapes", device="cpu")
    images, labels, _ = camlib.synthetic.shapes(8, seed=2)
    ref = camlib.gradcam(model.net, images, "blocks.2", labels)
    with torch.inference_mode():
        torch.testing.assert_close(camlib.gradcam(model.net, images, "blocks.2", labels), ref)
    low = camlib.gradcam(model.net, images, "blocks.2", labels, amp=True)
    assert low.dtype == torch.float32
    assert float((low - ref).abs().amax()) < 0.05 * float(ref.abs().amax())


def test_layer_names_lists_the_token_layers_gradcam_takes_and_nothing_per_head(vit, x):
    """A ViT's blocks are listed (they were not: only the patch embedding's convolution was), the
    per-head tensors inside an attention are not (they were, as 4-D "maps"), and gradcam takes every
    listed layer and refuses the per-head ones with a message that names the block."""
    names = camlib.layer_names(vit, x=x)
    for wanted in ("patch_embed.proj", "blocks.0", "blocks.11", "blocks.11.norm1", "blocks.11.mlp", "norm"):
        assert wanted in names, wanted
    for unwanted in ("blocks.11.attn.qkv", "blocks.11.mlp.fc1", "blocks.11.attn.q_norm", "patch_embed", "head"):
        assert unwanted not in names, unwanted
    assert camlib.layer_names(vit, x=x, max_depth=1)[-3:] == ["blocks.11", "blocks", "norm"]
    for name in [n for n in names if n.count(".") <= 1 or n.startswith("blocks.11.")]:  # the rest: alike
        assert camlib.gradcam(vit, x, name).shape == (x.shape[0], 14, 14), name
    with pytest.raises(camlib.LayerError, match=r"inside the attention 'blocks\.3\.attn'.*per head.*'blocks\.3'"):
        camlib.gradcam(vit, x, "blocks.3.attn.k_norm")


def test_layer_names_of_a_loaded_vit_uses_its_input_size():
    model = camlib.load_model("small_vit_shapes")
    names = camlib.layer_names(model, max_depth=1)  # a 224 × 224 input would not fit its 8 × 8 grid
    assert [n for n in names if n.startswith("blocks.")] == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert camlib.gradcam(model.net, torch.rand(1, 3, 64, 64), "blocks.2").shape == (1, 8, 8)


def test_layer_names_skips_tokens_without_a_grid_camlib_can_tell():
    net = Tokens().eval()  # 30 tokens on a 6 × 5 grid, no patch_embed: gradcam needs reshape=
    assert camlib.layer_names(net, x=torch.rand(1, 3, 24, 20)) == ["embed"]


def test_cam_of_a_loaded_vit_says_what_to_use_instead():
    model = camlib.load_model("small_vit_shapes")
    with pytest.raises(camlib.CamError, match=r"small_vit_shapes has no global-average-pooling.*'blocks\.2'.*gradcam"):
        camlib.cam(model, torch.rand(1, 3, 64, 64))
