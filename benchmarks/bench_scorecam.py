"""Score-CAM speed: camlib.scorecam against pytorch-grad-cam's ScoreCAM (not a test).

    .venv/bin/python benchmarks/bench_scorecam.py                      # resnet18, batch 16, 224 x 224
    .venv/bin/python benchmarks/bench_scorecam.py --batch 4 --size 64  # a quick run
    .venv/bin/python benchmarks/bench_scorecam.py --model lite0 --batch 2  # real weights, sample photos

Same model (torchvision ``resnet18(weights=None)``, seeded, layer ``layer4``, random inputs; or
``--model lite0``: EfficientNet-Lite0 with its real weights at ``bn2`` on the sample photos, where
many channels are all zero after the ReLU6 and camlib runs one black image for all of them),
batch, one target per image, CPU unless CAMLIB_DEVICE says otherwise. Each library runs once after a
plain forward (the yardstick); pytorch-grad-cam's ``batch_size`` is its default (16), camlib's
``--chunk``. Prints the times, the speed-up and the largest difference of the shown maps
(min-max normalised at the input size, camlib with ``align_corners=True`` as theirs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import torch
import torchvision

import camlib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["resnet18", "lite0"], default="resnet18")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--chunk", type=int, default=64, help="camlib's batch_size (images per forward)")
    args = ap.parse_args()
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = camlib.get_device()
    if args.model == "lite0":
        loaded = camlib.load_model("efficientnet_lite0", device)
        net, layer = loaded.net, "bn2"
        names = camlib.sample_names()
        photos = [camlib.load_image(names[i % len(names)]) for i in range(args.batch)]
        x = torch.cat([loaded.preprocess(p, args.size) for p in photos])
        with torch.no_grad():
            targets = net(x).argmax(1).tolist()
        what = "EfficientNet-Lite0 (real weights), bn2, sample photos"
    else:
        torch.manual_seed(0)
        net, layer = torchvision.models.resnet18(weights=None).eval().to(device), "layer4"
        x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
        targets = [(7 * i) % 1000 for i in range(args.batch)]
        what = "resnet18 (random weights), layer4"
    with camlib.capture(net, layer) as cap, torch.no_grad():
        net(x)
    dead = float((cap.activation.flatten(2).amax(2) == 0).float().mean())
    print(
        f"{what}, batch {args.batch}, {args.size} x {args.size}, {device}, "
        f"{torch.get_num_threads()} threads; {dead:.0%} of the (image, channel) maps are all zero"
    )

    t = time.perf_counter()
    with torch.no_grad():
        net(x)
    print(f"  one forward of the batch      {time.perf_counter() - t:7.2f} s")

    t = time.perf_counter()
    ours = camlib.scorecam(net, x, layer, targets, batch_size=args.chunk, progress=False, align_corners=True)
    t_ours = time.perf_counter() - t
    print(f"  camlib.scorecam               {t_ours:7.2f} s   (batch_size={args.chunk})")

    t = time.perf_counter()
    hooked = [net.get_submodule(layer)]
    with contextlib.redirect_stderr(io.StringIO()), ScoreCAM(model=net, target_layers=hooked) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets]))
    t_theirs = time.perf_counter() - t
    print(f"  pytorch-grad-cam ScoreCAM     {t_theirs:7.2f} s   (its batch_size=16)")
    shown = camlib.normalize(camlib.upsample(torch.relu(ours), args.size)).cpu()
    diff = float((shown - theirs).abs().max())
    print(f"  speed-up {t_theirs / t_ours:.1f}x;  max |difference| of the shown maps {diff:.1e}")
    rates(net, x, cap.activation, t_ours, t_theirs)


def rates(net: torch.nn.Module, x: torch.Tensor, acts: torch.Tensor, t_ours: float, t_theirs: float) -> None:
    """Arithmetic rates against the CPU's float32 matrix-multiply peak: how far a speed-up can go.

    Each (image, channel) pair is one forward of a masked image: pytorch-grad-cam runs them all,
    camlib all but the all-zero channels (plus one black image).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x[:1])
    flops = counter.get_total_flops()  # one masked forward (multiply-adds count as 2)
    pairs = acts.shape[0] * acts.shape[1]
    ours = pairs - int((acts.flatten(2).amax(2) == 0).sum()) + 1
    a = torch.randn(2048, 2048, device=x.device)
    a @ a
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    peak = 5 * 2 * 2048**3 / (time.perf_counter() - t)
    print(
        f"  float32 rate: pytorch-grad-cam {pairs * flops / t_theirs / 1e9:.0f} GFLOP/s, camlib "
        f"{ours * flops / t_ours / 1e9:.0f} GFLOP/s; a 2x speed-up needs {ours * flops / (t_theirs / 2) / 1e9:.0f} "
        f"GFLOP/s; this machine's matrix-multiply peak (2048² matmul) {peak / 1e9:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
