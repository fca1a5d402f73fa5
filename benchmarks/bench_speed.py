"""Grad-CAM against the forward it explains, and against the libraries, on CPU or CUDA (not a test).

    .venv/bin/python benchmarks/bench_speed.py                       # CPU: ResNet-50 b8, Lite0 b16
    python benchmarks/bench_speed.py --device cuda                     # GPU: batches 256, 64, 1
    python benchmarks/bench_speed.py --device cuda --cases resnet50:1 --repeat 21

Every row is one model and batch at 224 px: torchvision ``resnet50(weights=None)`` (seeded) at
``layer4`` and EfficientNet-Lite0 (real weights) at ``bn2``, one target class per image. Columns,
in milliseconds (median of ``--repeat`` interleaved rounds, after warm-up):

- a plain eager fp32 forward on the contiguous input under ``no_grad`` (the yardstick; on CUDA
  with TF32 off, as camlib runs); on CUDA also the same forward with PyTorch's default TF32
  convolutions and a bf16-autocast forward;
- ``camlib.gradcam`` as it runs by default; on CUDA also with ``amp=True`` (bf16 autocast for the
  forward, the map's arithmetic in fp32) and ``camlib.gradcam_pp(amp=True)``;
- pytorch-grad-cam's and torchcam's GradCAM.

Ratios are to the fp32 forward. On the CPU the CPU time of the process (``time.process_time``) is
printed beside the wall time: on a shared machine it does not count the time another tenant held
the core (``--threads 1`` makes it the plainest measure of the work). So are the minor page faults
per call: the yardstick depends on them. An eager forward allocates every activation afresh; when
the C allocator has just handed its memory back to the system, each call faults in about 270 MB of
zeroed pages (ResNet-50, batch 8) and runs 25-35 % slower than when the memory is still there (on
2026-11-28: 820-880 ms with 58 000-69 000 faults, 640-660 ms with none). A big allocation by
another call in the rotation (pytorch-grad-cam's) keeps the memory there, so in this script's
default rotation the forward runs at its fastest and the ratios are the conservative ones. On CUDA the peak memory of
each call over the model and input (``torch.cuda.max_memory_allocated``) is printed too; CPU memory
is in ``bench_methods.py``.

Then the accuracy of ``amp=True`` against fp32 on the real model and the sample photos: max
relative difference, Spearman rank correlation and whether any map has a NaN.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _mem_probe import make_call, release  # noqa: E402

import camlib  # noqa: E402
from camlib.device import full_fp32  # noqa: E402

try:
    import resource
except ImportError:  # Windows: no page-fault counts
    resource = None


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the OS does not say)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def model(name: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    if name == "resnet50":
        torch.manual_seed(0)
        return torchvision.models.resnet50(weights=None).eval().to(device), "layer4"
    return camlib.load_model("efficientnet_lite0", device).net, "bn2"


def calls(net: torch.nn.Module, layer: str, targets: list[int], device: torch.device) -> dict[str, Callable]:
    def forward(x: torch.Tensor) -> object:
        with torch.no_grad(), full_fp32():
            return net(x), None

    def forward_bf16(x: torch.Tensor) -> object:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return net(x), None

    def forward_tf32(x: torch.Tensor) -> object:  # PyTorch's default on CUDA; camlib's fp32 switches TF32 off
        conv = torch.backends.cudnn.conv
        saved, conv.fp32_precision = conv.fp32_precision, "tf32"
        try:
            with torch.no_grad():
                return net(x), None
        finally:
            conv.fp32_precision = saved

    out: dict[str, Callable] = {"fp32 forward": forward}
    if device.type == "cuda":
        out["TF32 forward"] = forward_tf32
        out["bf16 forward"] = forward_bf16
    out["camlib"] = lambda x: (camlib.gradcam(net, x, layer, targets), None)
    if device.type == "cuda":
        out["camlib amp"] = lambda x: (camlib.gradcam(net, x, layer, targets, amp=True), None)
        out["camlib++ amp"] = lambda x: (camlib.gradcam_pp(net, x, layer, targets, amp=True), None)
    for lib in ("pytorch-grad-cam", "torchcam"):
        call = make_call(lib, net, layer, targets)
        out[lib] = lambda x, call=call: (lambda r: (r[0], release(r[1])))(call(x))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_and_memory(fns: dict[str, Callable], x: torch.Tensor, repeat: int) -> tuple[dict, dict, dict, dict]:
    device = x.device
    for fn in fns.values():  # warm-up (cuDNN autotuning, allocator)
        fn(x)
        fn(x)
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, list[int]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            t0, c0, f0 = time.perf_counter(), time.process_time(), minor_faults()
            fns[name](x)
            sync(device)
            times[name].append(1000 * (time.perf_counter() - t0))
            cpu[name].append(1000 * (time.process_time() - c0))
            faults[name].append(minor_faults() - f0)
    mem: dict[str, float] = {}
    if device.type == "cuda":
        for name, fn in fns.items():
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(x)
            sync(device)
            mem[name] = (torch.cuda.max_memory_allocated() - base) / 2**30
    median = {k: statistics.median(v) for k, v in times.items()}
    cpu_median = {k: statistics.median(v) for k, v in cpu.items()}
    return median, mem, cpu_median, {k: statistics.median(v) for k, v in faults.items()}


def accuracy(device: torch.device) -> None:
    from camlib.metrics import spearman

    lite = camlib.load_model("efficientnet_lite0", device)
    names = camlib.sample_names()
    x = torch.cat([lite.preprocess(camlib.load_image(n).resize((224, 224))) for n in names]).to(device)
    print(f"\namp=True against fp32, EfficientNet-Lite0, the {len(names)} sample photos at 224 px:")
    for label, fn, layer in [
        ("Grad-CAM", camlib.gradcam, "bn2"),
        ("Grad-CAM++", camlib.gradcam_pp, "bn2"),
        ("Grad-CAM", camlib.gradcam, "blocks.5"),
    ]:
        ref, low = fn(lite.net, x, layer), fn(lite.net, x, layer, amp=True)
        rel = ((ref - low).abs().amax((1, 2)) / ref.abs().amax((1, 2)).clamp_min(1e-30)).max().item()
        rho = spearman(ref, low).min().item()
        nan = bool(torch.isnan(low).any())
        print(f"  {label:11s} {layer:9s} max rel diff {rel:.1e}  min Spearman {rho:.4f}  NaN: {nan}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=None, help="model:batch,... (default by device)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    default = (
        "resnet50:8,lite0:16,resnet50:1,lite0:1"
        if device.type == "cpu"
        else "resnet50:256,resnet50:64,resnet50:1,lite0:256,lite0:1"
    )
    what = device.type if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"{what} · torch {torch.__version__} · {torch.get_num_threads()} threads · {os.cpu_count()} cores · "
        f"load {os.getloadavg()[0]:.1f} · {time.strftime('%Y-%m-%d')}"
    )
    for case in (args.cases or default).split(","):
        name, batch = case.split(":")
        net, layer = model(name, device)
        targets = [(37 * i) % 1000 for i in range(int(batch))]
        torch.manual_seed(1)
        x = torch.randn(int(batch), 3, 224, 224, device=device)
        ms, mem, cpu, faults = time_and_memory(calls(net, layer, targets, device), x, args.repeat)
        base = ms["fp32 forward"]
        if device.type == "cpu":
            cpu_base = cpu["fp32 forward"]
            cells = [
                f"{k} {v:.1f} ms ({v / base:.2f}x); CPU time {cpu[k]:.0f} ms ({cpu[k] / cpu_base:.2f}x); "
                f"{faults[k]:.0f} page faults"
                for k, v in ms.items()
            ]
        else:
            cells = [
                f"{k} {v:.1f} ms ({v / base:.2f}x)" + (f" {mem[k]:.1f} GiB" if k in mem else "") for k, v in ms.items()
            ]
        print(f"\n{name} {layer}, batch {batch}:\n  " + "\n  ".join(cells))
        if "camlib amp" in ms:
            print(f"  throughput of amp vs fp32 camlib: Grad-CAM {ms['camlib'] / ms['camlib amp']:.2f}x")
    if device.type == "cuda":
        accuracy(device)


if __name__ == "__main__":
    main()
