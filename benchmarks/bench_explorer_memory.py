"""Does the explorer's memory stay flat? 1000 random moves, then 10 re-creations (issue 10).

Run: ``MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python benchmarks/bench_explorer_memory.py``
(the environment variable makes glibc return large freed blocks, so the resident set follows
the live tensors). EfficientNet-Lite0, the "chelsea" photo at 224 px, all layers of the
default list and all four methods. Prints, per round of 100 moves and per re-creation, the
explorer's own count (``cache_bytes``, bounded by ``max_bytes``), the bytes of all tensors
alive in Python (``gc``) and the process's resident set. Not a timed test: a measurement.
"""

from __future__ import annotations

import argparse
import gc
import random
import re

import torch

import camlib
from camlib.widgets import Explorer

MB = 2**20


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024


def live_tensor_mb() -> float:
    """Bytes of the distinct storages of all tensors Python can reach (graphs' saved tensors excepted)."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / MB


def report(label: str, ex: Explorer) -> None:
    gc.collect()
    print(
        f"{label:>22}  cache {ex.cache_bytes / MB:7.1f} MB  tensors {live_tensor_mb():7.1f} MB  RSS {rss_mb():7.1f} MB"
    )


def random_moves(ex: Explorer, n: int, rng: random.Random) -> None:
    classes = [v for _, v in ex.class_control.options]
    for _ in range(n):
        control = rng.choice(["class", "class", "class", "layer", "method"])
        if control == "class":
            ex.class_control.value = rng.choice(classes)
        elif control == "layer":
            ex.layer_control.value = rng.choice(ex.layer_control.options)
        else:
            ex.method_control.value = rng.choice(ex.method_control.options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=1000)
    parser.add_argument("--recreations", type=int, default=10)
    parser.add_argument("--moves-after", type=int, default=30, help="moves after each re-creation (default 30)")
    parser.add_argument("--max-mb", type=int, default=256, help="Explorer(max_bytes=...) in MiB (default 256)")
    args = parser.parse_args()
    model = camlib.load_model("efficientnet_lite0", device="cpu")
    rng = random.Random(0)
    print(f"before any explorer: tensors {live_tensor_mb():.1f} MB, RSS {rss_mb():.1f} MB; bound {args.max_mb} MiB")
    ex = Explorer(model, "chelsea", max_bytes=args.max_mb * MB)
    report("created", ex)
    for r in range(0, args.moves, 100):
        random_moves(ex, min(100, args.moves - r), rng)
        report(f"{r + 100} moves", ex)
    for i in range(args.recreations):  # what re-running the notebook cell does
        ex = Explorer(model, "chelsea", max_bytes=args.max_mb * MB)
        random_moves(ex, args.moves_after, rng)
        report(f"re-created {i + 1}, {args.moves_after} moves", ex)
    ex.close()
    report("closed", ex)


if __name__ == "__main__":
    main()
