"""Score-CAM speed: camlib.scorecam against pytorch-grad-cam's ScoreCAM (not a test).

    .venv/bin/python benchmarks/bench_scorecam.py                      # resnet18, batch 16, 224 x 224
    .venv/bin/python benchmarks/bench_scorecam.py --batch 4 --size 64  # a quick run

Same model (torchvision ``resnet18(weights=None)``, seeded), layer ``layer4``, batch, one
target per image, CPU unless CAMLIB_DEVICE says otherwise. Each library runs once after a
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
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--chunk", type=int, default=64, help="camlib's batch_size (images per forward)")
    args = ap.parse_args()
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = camlib.get_device()
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    targets = [(7 * i) % 1000 for i in range(args.batch)]
    print(
        f"resnet18 (random weights), layer4, batch {args.batch}, {args.size} x {args.size}, {device}, "
        f"{torch.get_num_threads()} threads"
    )

    t = time.perf_counter()
    with torch.no_grad():
        net(x)
    print(f"  one forward of the batch      {time.perf_counter() - t:7.2f} s")

    t = time.perf_counter()
    ours = camlib.scorecam(net, x, "layer4", targets, batch_size=args.chunk, progress=False, align_corners=True)
    t_ours = time.perf_counter() - t
    print(f"  camlib.scorecam               {t_ours:7.2f} s   (batch_size={args.chunk})")

    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), ScoreCAM(model=net, target_layers=[net.layer4]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets]))
    t_theirs = time.perf_counter() - t
    print(f"  pytorch-grad-cam ScoreCAM     {t_theirs:7.2f} s   (its batch_size=16)")
    shown = camlib.normalize(camlib.upsample(torch.relu(ours), args.size)).cpu()
    diff = float((shown - theirs).abs().max())
    print(f"  speed-up {t_theirs / t_ours:.1f}x;  max |difference| of the shown maps {diff:.1e}")


if __name__ == "__main__":
    main()
