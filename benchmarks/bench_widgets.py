"""How long a move of the explorer's controls takes, redraw included (issue 4's latency targets).

Run: ``.venv/bin/python benchmarks/bench_widgets.py [--repeats N]``. EfficientNet-Lite0, the
"chelsea" photo at 224 px, torch's default CPU threads. Each timed move sets a control's ``.value``
and returns once the observer has computed the map and put the encoded image into the widget,
exactly what a user's move costs in the kernel. Moves are made uncached: a class change goes to a
class not seen before at that layer; a layer change drops the cached gradients first. Medians are
printed next to the issue's targets; on a shared machine, timings are noisy: run it alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

import camlib
from camlib.widgets import Explorer

TARGETS_MS = {"class, feature layer": 30, "class, intermediate layer": 150, "layer": 400}


def timed(moves: list[Callable[[], None]]) -> list[tuple[float, float]]:
    """(wall ms, process CPU ms) per move; CPU time shows the work when other processes share the cores."""
    out = []
    for move in moves:
        t, c = time.perf_counter(), time.process_time()
        move()
        out.append(((time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000))
    return out


def setter(control, value) -> Callable[[], None]:
    def move() -> None:
        control.value = value

    return move


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="moves per measurement (default 15)")
    parser.add_argument("--layer", default="blocks.4", help="the intermediate layer (default blocks.4)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument(
        "--move-threads", type=int, default=0, help="Explorer(threads=...) in a move; 0 (default): as torch is set"
    )
    args = parser.parse_args()
    n = args.repeats
    if args.threads:
        torch.set_num_threads(args.threads)

    device = camlib.get_device()
    model = camlib.load_model("efficientnet_lite0", device=device)
    ex = Explorer(model, "chelsea", threads=args.move_threads or None)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device {device}, torch threads {torch.get_num_threads()} ({ex.threads or 'same'} during a move), "
        f"{os.cpu_count()} CPUs, {n} moves each"
    )
    classes = [v for _, v in ex.class_control.options]  # top predictions first, then the rest
    fresh = iter(classes[1:])  # classes not yet seen anywhere: every class move below is uncached

    results: dict[str, list[tuple[float, float]]] = {}
    gradient_methods = ("Grad-CAM", "HiResCAM", "XGrad-CAM", "LayerCAM")  # the last three reuse Grad-CAM's cache
    for method in ("CAM", "Grad-CAM", "Grad-CAM++", "HiResCAM", "XGrad-CAM", "LayerCAM"):
        ex.method_control.value = method
        ex.layer_control.value = model.feature_layer
        timed([setter(ex.class_control, next(fresh)) for _ in range(2)])  # warm-up
        results[f"class, feature layer ({method})"] = timed([setter(ex.class_control, next(fresh)) for _ in range(n)])

    ex.layer_control.value = args.layer
    for method in gradient_methods:
        ex.method_control.value = method
        timed([setter(ex.class_control, next(fresh)) for _ in range(2)])
        results[f"class, intermediate layer ({method}, {args.layer})"] = timed(
            [setter(ex.class_control, next(fresh)) for _ in range(n)]
        )
    # switching method at the same class and layer: the activations and gradients are cached
    switches = [setter(ex.method_control, gradient_methods[i % 4]) for i in range(1, n + 1)]
    results[f"method switch (gradient family, {args.layer})"] = timed(switches)
    ex.method_control.value = "Grad-CAM"

    layers = [name for name in ex.layer_control.options if name != ex.layer_control.value]

    def layer_move(name: str) -> Callable[[], None]:
        def move() -> None:
            # uncached: one forward and one backward, as on a first visit
            ex._cache = type(ex._cache)()
            ex._graph, ex._graph_bytes = None, 0
            ex.layer_control.value = name

        return move

    def redraw() -> None:
        ex._on_opacity({})  # the opacity observer: a redraw only

    cycle = [layers[i % len(layers)] for i in range(n + 2)]
    results["layer (Grad-CAM, uncached)"] = timed([layer_move(name) for name in cycle])[2:]

    rgb_map = ex.current_map
    results["redraw only (overlay + encode)"] = timed([redraw for _ in range(n)])
    after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = max(load, after) > (os.cpu_count() or 1)
    note = "above the CPU count: timings inflated" if busy else "machine quiet"
    print(f"load average {load:.1f} before, {after:.1f} after ({note})")

    print(f"{'move':48s} {'median':>9s} {'min':>9s} {'max':>9s} {'CPU median':>11s}  target (wall median)")
    for name, pairs in results.items():
        ms, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        kind = next((k for k in TARGETS_MS if name.startswith(k + " (")), None)
        target = f"<= {TARGETS_MS[kind]} ms" if kind else ""
        verdict = "" if not kind else (" ok" if statistics.median(ms) <= TARGETS_MS[kind] else " MISSED")
        print(
            f"{name:48s} {statistics.median(ms):7.1f}ms {min(ms):7.1f}ms {max(ms):7.1f}ms "
            f"{statistics.median(cpu):9.1f}ms  {target}{verdict}"
        )
    assert rgb_map is ex.current_map


if __name__ == "__main__":
    main()
