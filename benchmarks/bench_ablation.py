"""Ablation-CAM speed: camlib.ablationcam against pytorch-grad-cam's AblationCAM (not a test).

    .venv/bin/python benchmarks/bench_ablation.py                        # resnet50 layer4, one image, 224 px
    .venv/bin/python benchmarks/bench_ablation.py --model lite0 --layer blocks.5

Same model (torchvision ``resnet50(weights=None)``, seeded, random inputs; or ``--model lite0``:
EfficientNet-Lite0 with its real weights on the sample photos), layer, batch and one target per
image; CPU unless CAMLIB_DEVICE says otherwise; both libraries with ``batch_size`` 32 (ablated
copies per forward, their default and ours). Timed in wall time and in the process's CPU time;
camlib after a warm-up call, pytorch-grad-cam once: it runs the whole model on 32 copies of the
image per chunk, about 5 minutes for ResNet-50's 2048 channels on a 2-core CPU. camlib runs
twice: as it is, where the part of the model before the layer runs once per image
(:mod:`camlib.split`), and with that cut switched off, where it runs once per chunk on one image
(the 32 ablated copies go in at the layer). Prints the times, the speed-ups and the largest
difference of the shown maps (min-max normalised at the input size).

    .venv/bin/python benchmarks/bench_ablation.py --amp                  # why Ablation-CAM has no amp=

``--amp`` times nothing: it asks whether Ablation-CAM would survive the reduced precision that
Score-CAM's ``amp=True`` uses for its many forwards. On EfficientNet-Lite0 and the sample photos it
runs each method's forwards under bf16 autocast (on the device: CUDA or the CPU) and prints, per
layer, the largest difference of the raw maps from float32's as a share of float32's largest value,
and the Spearman correlation of the ablation weights with float32's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections.abc import Callable

import torch
import torchvision

import camlib
from camlib import family


def timed(fn: Callable[[], torch.Tensor], warm: bool = True) -> tuple[torch.Tensor, float, float]:
    if warm:  # camlib's packed weights and oneDNN primitives; pytorch-grad-cam's call is long enough as it is
        fn()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["resnet50", "lite0"], default="resnet50")
    ap.add_argument("--layer", default=None, help="default: layer4 (resnet50), bn2 (lite0)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--amp", action="store_true", help="only the bf16 accuracy check, see the docstring")
    args = ap.parse_args()
    if args.amp:
        return reduced_precision()
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = camlib.get_device()
    if args.model == "lite0":
        loaded = camlib.load_model("efficientnet_lite0", device)
        net, layer = loaded.net, args.layer or "bn2"
        names = camlib.sample_names()
        x = torch.cat(
            [loaded.preprocess(camlib.load_image(names[i % len(names)]), args.size) for i in range(args.batch)]
        )
        with torch.no_grad():
            targets = net(x).argmax(1).tolist()
        what = "EfficientNet-Lite0 (real weights), sample photos"
    else:
        torch.manual_seed(0)
        net, layer = torchvision.models.resnet50(weights=None).eval().to(device), args.layer or "layer4"
        x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
        targets = [(7 * i) % 1000 for i in range(args.batch)]
        what = "resnet50 (random weights)"
    with camlib.capture(net, layer) as cap, torch.no_grad():
        net(x[:1])
    channels = cap.activation.shape[1]
    print(
        f"{what}, {layer} ({channels} channels), batch {args.batch}, {args.size} x {args.size}, {device}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )
    with torch.no_grad():
        _, t_fwd, c_fwd = timed(lambda: net(x))
    print(f"  one forward of the batch            {t_fwd:7.2f} s wall  {c_fwd:7.2f} s CPU")

    def ours() -> torch.Tensor:
        return camlib.ablationcam(net, x, layer, targets, batch_size=32, progress=False)

    mine, t_ours, c_ours = timed(ours)
    print(f"  camlib.ablationcam                  {t_ours:7.2f} s wall  {c_ours:7.2f} s CPU")
    cut = family.split_at
    family.split_at = lambda *_: None
    try:
        uncut, t_uncut, c_uncut = timed(ours)
    finally:
        family.split_at = cut
    print(f"  camlib.ablationcam, no cut          {t_uncut:7.2f} s wall  {c_uncut:7.2f} s CPU")

    def theirs() -> torch.Tensor:
        hooked = [net.get_submodule(layer)]
        with contextlib.redirect_stderr(io.StringIO()), AblationCAM(model=net, target_layers=hooked) as cam:
            cam.batch_size = 32
            return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets]))

    other, t_theirs, c_theirs = timed(theirs, warm=False)
    print(f"  pytorch-grad-cam AblationCAM        {t_theirs:7.2f} s wall  {c_theirs:7.2f} s CPU")

    def shown(m: torch.Tensor) -> torch.Tensor:
        return camlib.normalize(camlib.upsample(torch.relu(m), args.size)).cpu()

    print(
        f"  speed-up over pytorch-grad-cam {t_theirs / t_ours:.1f}x wall, {c_theirs / c_ours:.1f}x CPU; "
        f"the cut alone {t_uncut / t_ours:.1f}x wall, {c_uncut / c_ours:.1f}x CPU"
    )
    vs_theirs, vs_uncut = float((shown(mine) - other).abs().max()), float((shown(mine) - shown(uncut)).abs().max())
    print(
        f"  max |difference| of the shown maps: against pytorch-grad-cam {vs_theirs:.1e}, "
        f"cut against no cut {vs_uncut:.1e}"
    )


def reduced_precision() -> None:
    """Ablation-CAM and Score-CAM with their forwards under bf16 autocast against float32 (``--amp``)."""
    from camlib.metrics import spearman

    device = camlib.get_device()
    loaded = camlib.load_model("efficientnet_lite0", device)
    net, names = loaded.net, camlib.sample_names()
    x = torch.cat([loaded.preprocess(camlib.load_image(n)) for n in names])
    print(
        f"EfficientNet-Lite0 (real weights), {len(names)} sample photos, {device}, bf16 autocast, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print("  max |reduced - float32| / max |float32| of each photo's raw map; the worst photo, and the median")

    def spread(low: torch.Tensor, ref: torch.Tensor) -> str:
        d = (low.float() - ref).abs().amax((1, 2)) / ref.abs().amax((1, 2))
        return f"{d.max():.1%} (median {d.median():.1%})"

    for layer in ("bn2", "blocks.5"):
        with camlib.capture(net, layer) as cap, torch.no_grad():
            net(x)
        acts = cap.activation
        w32 = family.ablationcam_weights(net, x, layer, acts, progress=False)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            w16 = family.ablationcam_weights(net, x, layer, acts, progress=False).float()
        rho = min(float(spearman(w16[i : i + 1], w32[i : i + 1])) for i in range(len(x)))
        abl = spread(camlib.methods.weighted_map(w16, acts), camlib.methods.weighted_map(w32, acts))
        s32 = family.scorecam(net, x, layer, progress=False)
        s16 = family.scorecam(net, x, layer, progress=False, amp=torch.bfloat16)
        print(
            f"  {layer:9s} Ablation-CAM {abl}, weights' Spearman with float32 >= {rho:.3f}; "
            f"Score-CAM amp {spread(s16, s32)}"
        )


if __name__ == "__main__":
    main()
