"""One image on CUDA: can Grad-CAM replayed as a CUDA graph cost ≤ 1.2× a forward? (not a test)

    python benchmarks/bench_graphs.py                 # needs a CUDA GPU; exits 2 without one
    python benchmarks/bench_graphs.py --repeat 51 --cases resnet50,lite0

Issue 15's batch-1 goal: at batch 1 a camlib Grad-CAM call cost 1.27–1.40× an eager float32
forward on ResNet-50 and 1.40–1.66× on EfficientNet-Lite0 (H100, 2026-11-26). The forward there is
launch-bound: Python and kernel launches set its time, not arithmetic, and camlib's hooks, backward
and map add launches. A CUDA graph (``torch.cuda.graph``) records the kernels of one call once and
replays them with one launch, so the question is how much of the gap it closes.

What is captured is camlib's own call, unchanged: ``camlib.gradcam(net, x, layer, target)`` on
static buffers, with the class given as a callable that gathers from a device tensor (an ``int``
target is copied from the CPU during the call, which a capture cannot replay with another class).
Replay reads whatever the buffers hold, so the script checks the replayed map against an eager
call on *another* image and class than the one captured.

Rows, median milliseconds per call of ``--repeat`` interleaved rounds, each call followed by a
``torch.cuda.synchronize()`` (latency, not throughput), ratio to the eager forward:
eager fp32 forward · the same forward replayed as a graph · eager ``camlib.gradcam`` · replayed
Grad-CAM (copy in, replay, clone out).

Prepared on 2026-11-27 without a GPU: the step that is captured is checked on the CPU
(``tests/test_speed_paths.py::test_the_graphed_step_is_camlibs_gradcam``); the capture and the
timings have not run yet.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_speed import model  # noqa: E402

import camlib  # noqa: E402
from camlib.device import full_fp32  # noqa: E402


def gradcam_step(net: torch.nn.Module, layer: str, x: torch.Tensor, idx: torch.Tensor) -> Callable[[], torch.Tensor]:
    """camlib's Grad-CAM of image ``x[b]`` for class ``idx[b]``, reading both buffers when called."""
    target = lambda logits: logits.gather(1, idx[:, None])[:, 0]  # noqa: E731 (no copy from the CPU)
    return lambda: camlib.gradcam(net, x, layer, target)


def forward_step(net: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        with torch.no_grad(), full_fp32():
            return net(x)

    return step


def graphed(step: Callable[[], torch.Tensor], warmup: int = 3) -> Callable[[], torch.Tensor]:
    """``step`` recorded as a CUDA graph: calling the result replays it and returns a copy of its output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture (cuDNN's choices, the allocator)
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return out.clone()

    return replay


def timed(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
        fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fns[name]()
            torch.cuda.synchronize()
            times[name].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def case(name: str, repeat: int, device: torch.device) -> None:
    net, layer = model(name, device)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224, device=device)
    idx = torch.tensor([281], device=device)
    fns: dict[str, Callable[[], object]] = {
        "eager forward": forward_step(net, x),
        "eager Grad-CAM": gradcam_step(net, layer, x, idx),
    }
    steps = {"graphed forward": forward_step(net, x), "graphed Grad-CAM": gradcam_step(net, layer, x, idx)}
    for label, step in steps.items():
        try:
            fns[label] = graphed(step)
        except Exception as err:  # report and go on: this is the experiment
            print(f"  {label}: capture failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
    if "graphed Grad-CAM" in fns:  # the replay follows the buffers: another image, another class
        x.copy_(torch.randn(1, 3, 224, 224, device=device))
        idx.fill_(7)
        ref = camlib.gradcam(net, x.clone(), layer, 7)
        got = fns["graphed Grad-CAM"]()
        diff = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        print(f"  replayed map vs eager on a new image and class: max rel diff {diff:.1e}")
    ms = timed(fns, repeat)
    base = ms["eager forward"]
    print(f"\n{name} {layer}, batch 1:\n  " + "\n  ".join(f"{k} {v:.2f} ms ({v / base:.2f}x)" for k, v in ms.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="resnet50,lite0")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_graphs.py needs a CUDA GPU (CUDA graphs); none here.")
        sys.exit(2)
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)} · torch {torch.__version__} · {time.strftime('%Y-%m-%d')}")
    for name in args.cases.split(","):
        case(name, args.repeat, device)


if __name__ == "__main__":
    main()
