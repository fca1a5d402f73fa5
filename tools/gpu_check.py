"""On a machine with a CUDA GPU: does the course give the CPU's results there?

    make gpu-check                      # agreement table + every notebook on CUDA
    python tools/gpu_check.py --only agreement
    python tools/gpu_check.py --only notebooks --jobs 4

1. **Agreement**: every camlib method on EfficientNet-Lite0 (real weights) and two photos, computed
   on the CPU and on CUDA; the table prints max |CPU - CUDA| / max |CPU| per method and layer, the
   tolerance the course states, and whether it holds. camlib runs its forwards in full float32
   (``camlib.device.full_fp32``: no TF32).
2. **Speed of that choice**: a forward with PyTorch's defaults (TF32 convolutions) against full
   float32, and camlib.gradcam, batch 64 at 224 px, ResNet-50 (random weights) and Lite0.
3. **Notebooks**: every notebook executed on CUDA (``pytest --nbval-lax``: every cell must run and
   every assert hold; printed numbers are not compared, nbval compares them on the CPU), in
   parallel processes, with each one's wall time.

Exits 1 if an agreement misses its tolerance or a notebook fails; 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

# (name, layer or None, tolerance on max |CPU - CUDA| / max |CPU|)
CASES = [
    ("cam", None, 1e-4),
    ("gradcam", "bn2", 1e-4),
    ("gradcam_pp", "bn2", 1e-4),
    ("gradcam counterfactual", "bn2", 1e-4),
    ("gradcam", "blocks.5", 1e-4),
    ("gradcam", "blocks.4", 1e-4),
    ("gradcam_pp", "blocks.4", 1e-2),  # near-zero denominators at intermediate layers amplify round-off
    ("eigencam", "bn2", 1e-4),
    ("ablationcam", "bn2", 1e-3),  # (y - y_k) / y divides small logit differences; not yet run on a GPU
    ("guided_backprop", None, 1e-3),
    ("guided_gradcam", "bn2", 1e-2),
    ("softmax", None, 1e-5),
    ("softmax, TF32", None, None),  # PyTorch's default on CUDA, outside camlib: what full_fp32 avoids
]


def run_method(name: str, model, x: torch.Tensor, layer: str | None) -> torch.Tensor:
    import camlib

    net = model.net
    if name == "cam":
        return camlib.cam(model, x)
    if name == "gradcam":
        return camlib.gradcam(net, x, layer)
    if name == "gradcam counterfactual":
        return camlib.gradcam(net, x, layer, counterfactual=True)
    if name == "gradcam_pp":
        return camlib.gradcam_pp(net, x, layer)
    if name == "eigencam":
        return camlib.eigencam(net, x, layer)
    if name == "ablationcam":
        return camlib.ablationcam(net, x, layer, progress=False)
    if name == "guided_backprop":
        return camlib.guided_backprop(net, x)
    if name == "guided_gradcam":
        return camlib.guided_gradcam(net, x, layer)
    from camlib.device import full_fp32

    tf32 = name.endswith("TF32") and x.is_cuda
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    try:
        with torch.no_grad(), full_fp32():
            conv.fp32_precision = "tf32" if tf32 else "ieee"
            return net(x).softmax(1)
    finally:
        conv.fp32_precision = saved


def agreement() -> bool:
    import camlib

    cpu, gpu = camlib.load_model("efficientnet_lite0", "cpu"), camlib.load_model("efficientnet_lite0", "cuda")
    images = [camlib.load_image(n) for n in ("chelsea", "cat_and_coffee")]
    x_cpu = torch.cat([cpu.preprocess(im.resize((224, 224))) for im in images])
    x_gpu = x_cpu.cuda()
    ok = True
    print(f"{'method':24s} {'layer':9s} {'max rel diff':>13s} {'tolerance':>10s}  holds")
    for name, layer, tol in CASES:
        a = run_method(name, cpu, x_cpu, layer)
        b = run_method(name, gpu, x_gpu, layer).cpu()
        rel = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
        if tol is None:
            print(f"{name:24s} {layer or '-':9s} {rel:13.1e} {'(shown)':>10s}  -")
            continue
        ok &= rel <= tol
        print(f"{name:24s} {layer or '-':9s} {rel:13.1e} {tol:10.0e}  {'yes' if rel <= tol else 'NO'}")
    return ok


def _median_ms(fn, repeat: int = 15) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def speed(batch: int = 64) -> None:
    import torchvision

    import camlib
    from camlib.device import full_fp32

    torch.manual_seed(0)
    nets = {
        "resnet50 layer4": (torchvision.models.resnet50().eval().cuda(), "layer4"),
        "lite0 bn2": (camlib.load_model("efficientnet_lite0", "cuda").net, "bn2"),
    }
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    print(f"\nbatch {batch}, 224 px, median ms  | forward (TF32) | forward (fp32) | camlib.gradcam (fp32)")
    for label, (net, layer) in nets.items():
        with torch.no_grad():
            conv.fp32_precision = "tf32"
            tf32 = _median_ms(lambda net=net: net(x))
            conv.fp32_precision = saved
            with full_fp32():
                fp32 = _median_ms(lambda net=net: net(x))
        gc = _median_ms(lambda net=net, layer=layer: camlib.gradcam(net, x, layer, targets=0))
        print(f"{label:32s} | {tf32:14.1f} | {fp32:14.1f} | {gc:21.1f}")


def notebooks(jobs: int) -> bool:
    paths = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    env = {k: v for k, v in os.environ.items() if k != "CAMLIB_DEVICE"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env"]
    running: list[tuple[Path, subprocess.Popen, float]] = []
    results: dict[Path, tuple[int, float, str]] = {}
    queue = list(paths)
    while queue or running:
        while queue and len(running) < jobs:
            p = queue.pop(0)
            proc = subprocess.Popen(
                [*cmd, str(p)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            running.append((p, proc, time.perf_counter()))
        for item in list(running):
            p, proc, t0 = item
            if proc.poll() is not None:
                results[p] = (proc.returncode, time.perf_counter() - t0, proc.stdout.read())
                running.remove(item)
        time.sleep(0.2)
    print(f"\n{'notebook on ' + torch.cuda.get_device_name():54s} {'result':>7s} {'wall s':>7s}")
    for p in paths:
        rc, wall, out = results[p]
        print(f"{p.name:54s} {'pass' if rc == 0 else 'FAIL':>7s} {wall:7.0f}")
        if rc:
            print("\n".join("    " + line for line in out.strip().splitlines()[-25:]))
    return all(rc == 0 for rc, _, _ in results.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["agreement", "speed", "notebooks"], action="append")
    parser.add_argument("--jobs", type=int, default=3, help="notebooks run in parallel (default 3)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA GPU here: gpu-check compares the CPU with CUDA, so it needs a machine with one.")
        return 2
    import timm

    print(
        f"{torch.cuda.get_device_name()} · torch {torch.__version__} · CUDA {torch.version.cuda} · "
        f"timm {timm.__version__} · {time.strftime('%Y-%m-%d')}\n"
    )
    parts = args.only or ["agreement", "speed", "notebooks"]
    ok = True
    if "agreement" in parts:
        ok &= agreement()
    if "speed" in parts:
        speed()
    if "notebooks" in parts:
        ok &= notebooks(args.jobs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
