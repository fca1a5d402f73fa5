"""Grad-CAM speed and memory: camlib against pytorch-grad-cam and torchcam (not a test).

    .venv/bin/python benchmarks/bench_methods.py            # about 3 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_methods.py --repeat 9 --threads 1

Same model (torchvision ``resnet50(weights=None)``, seeded), same layer (``layer4``), same
batch (8 images, 224x224, one target class per image), CPU. Each library's call is what a
user writes: pytorch-grad-cam's and torchcam's extractors are built and left (their ``with``
block) inside the timed call; camlib's is timed raw and with ``upsample`` + ``normalize``
(pytorch-grad-cam returns maps resized to the input and min-max normalised). Calls are
interleaved round by round (A B C D, B C D A, ...) after warm-up calls, so a load change on
a shared machine hits every library alike; the median is reported, the minimum in brackets.

Peak memory: each library runs in a fresh process (``_mem_probe.py``), batch 16 by default,
as MiB over the resident memory once model and input exist: the first call, a second call,
what stays resident right after the call while the extractor is alive, and after release.
camlib's figures include the convolution weights it keeps packed in oneDNN's layout from the
first call for the next (``camlib.fold.forget`` drops them); the size of that copy is printed too.

The issue's goal: camlib at least 2x faster than pytorch-grad-cam and no slower than
torchcam, and a Grad-CAM call peaking at about the memory of a plain no-grad forward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _mem_probe import make_call, problem, release  # noqa: E402

import camlib  # noqa: E402

LIBS = ("forward", "camlib", "camlib+viz", "pytorch-grad-cam", "torchcam")
LABELS = {
    "forward": "plain no_grad forward (yardstick)",
    "camlib": "camlib.gradcam (raw maps)",
    "camlib+viz": "camlib.gradcam + upsample + normalize",
    "pytorch-grad-cam": "pytorch-grad-cam GradCAM",
    "torchcam": "torchcam GradCAM",
}


def build_calls(net: torch.nn.Module, layer: str, targets: list[int], size: int) -> dict:
    names = ("forward", "camlib", "pytorch-grad-cam", "torchcam")
    calls = {name: make_call(name, net, layer, targets) for name in names}

    def camlib_viz(x: torch.Tensor) -> tuple:
        return camlib.normalize(camlib.upsample(camlib.gradcam(net, x, layer, targets), size)), None

    calls["camlib+viz"] = camlib_viz
    return calls


def agreement(calls: dict, x: torch.Tensor) -> tuple[float, float]:
    """Max |difference| of camlib's normalised maps from the two other libraries' (a sanity check)."""
    ours, _ = calls["camlib+viz"](x)
    theirs, held = calls["pytorch-grad-cam"](x)
    release(held)
    d_pgc = float((ours - torch.from_numpy(theirs)).abs().max())
    raw, _ = calls["camlib"](x)
    tc, held = calls["torchcam"](x)
    release(held)
    d_tc = float((camlib.normalize(raw) - tc[0]).abs().max())
    return d_pgc, d_tc


def time_calls(calls: dict, x: torch.Tensor, warmup: int, repeat: int) -> dict[str, list[float]]:
    names = list(LIBS)
    for _ in range(warmup):
        for name in names:
            release(calls[name](x)[1])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            _, held = calls[name](x)
            release(held)
            times[name].append(time.perf_counter() - t0)
    return times


def probe_memory(batch: int, threads: int) -> dict[str, dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    out = {}
    for name in ("forward", "camlib", "pytorch-grad-cam", "torchcam"):
        cmd = [sys.executable, str(HERE / "_mem_probe.py"), name, "--batch", str(batch), "--threads", str(threads)]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mem-batch", type=int, default=16)
    parser.add_argument("--no-mem", action="store_true", help="skip the fresh-process memory probes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    net, x, targets = problem(args.batch, args.size)
    calls = build_calls(net, args.layer, targets, args.size)
    print(
        f"resnet50(weights=None), {args.layer}, batch {args.batch}, {args.size}x{args.size}, CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    d_pgc, d_tc = agreement(calls, x)
    print(f"agreement of normalised maps: max |camlib - pytorch-grad-cam| = {d_pgc:.1e}, - torchcam = {d_tc:.1e}")

    times = time_calls(calls, x, args.warmup, args.repeat)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\ntime per call: median of {args.repeat} interleaved rounds after {args.warmup} warm-up(s) [min]")
    for name in LIBS:
        print(f"  {LABELS[name]:<40} {med[name]:7.3f} s  [{min(times[name]):.3f}]")
    vs_pgc = med["pytorch-grad-cam"] / med["camlib+viz"]
    vs_tc = med["torchcam"] / med["camlib"]
    print(f"  camlib vs pytorch-grad-cam (same output form): {vs_pgc:.2f}x faster (goal >= 2x)")
    print(f"  camlib vs torchcam: {vs_tc:.2f}x faster (goal >= 1x, i.e. no slower)")
    print(f"  camlib vs a plain forward: {med['camlib'] / med['forward']:.2f}x its time")

    if args.no_mem:
        return
    print(f"\npeak memory, resnet50 batch {args.mem_batch}, one fresh process per library, MiB over the baseline")
    print(f"  {'':<40} {'1st call':>9} {'2nd call':>9} {'kept':>7} {'released':>9}")
    mem = probe_memory(args.mem_batch, args.threads)
    for name, m in mem.items():
        label = LABELS[name]
        print(f"  {label:<40} {m['peak_cold']:9.0f} {m['peak_warm']:9.0f} {m['kept']:7.0f} {m['freed']:9.0f}")
    fwd = max(mem["forward"]["peak_cold"], 1.0)
    for name in ("camlib", "pytorch-grad-cam", "torchcam"):
        worst = max(mem[name]["peak_cold"], mem[name]["peak_warm"])
        line = f"  {name}: peak {worst / fwd:.1f}x a plain forward's"
        cache = mem[name].get("cache", 0.0)
        if cache > 0:  # camlib's packed weights, kept from the first call for the next (camlib.fold.forget)
            line += f"; {(worst - cache) / fwd:.1f}x without the {cache:.0f} MiB of packed weights it keeps"
        print(line)


if __name__ == "__main__":
    main()
