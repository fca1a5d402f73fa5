"""Peak memory of one Grad-CAM call, measured in this (fresh) process. Used by bench_methods.py.

    python benchmarks/_mem_probe.py LIBRARY [--batch 16] [--size 224] [--layer layer4]

LIBRARY is ``forward`` (a plain ``torch.no_grad()`` forward, the yardstick), ``camlib``,
``pytorch-grad-cam`` or ``torchcam``. Prints one JSON line with MiB over the baseline
(resident memory once the model and the input exist):

* ``peak_cold``: the peak resident set (``VmHWM``) during the first call;
* ``peak_warm``: the peak during a second call (``VmHWM`` reset via ``/proc/self/clear_refs``);
* ``kept``: resident memory right after the second call returned, the library's objects
  (extractor, outputs) still alive, as in a loop or a notebook cell;
* ``freed``: resident memory after the extractor's ``with`` block is left and the objects
  are dropped;
* ``cache`` (camlib): what :func:`camlib.fold.forget` then releases, the convolution weights
  camlib keeps packed in oneDNN's layout for the next call (part of the three figures above).

Run it with ``MALLOC_MMAP_THRESHOLD_=65536`` (bench_methods.py does) so that glibc serves
large blocks with ``mmap`` and returns them on free: resident memory then follows the live
tensors instead of glibc's high-water mark.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
from typing import Any

import torch
import torchvision

LIBRARIES = ("forward", "camlib", "pytorch-grad-cam", "torchcam")


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)


def make_call(library: str, net: torch.nn.Module, layer: str, targets: list[int]) -> Any:
    """A function ``x -> (result, objects the caller would still hold)``."""
    if library == "forward":

        def call(x: torch.Tensor) -> Any:
            with torch.no_grad():
                return net(x), None

    elif library == "camlib":
        import camlib

        def call(x: torch.Tensor) -> Any:
            return camlib.gradcam(net, x, layer, targets), None

    elif library == "pytorch-grad-cam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def call(x: torch.Tensor) -> Any:
            extractor = GradCAM(model=net, target_layers=[net.get_submodule(layer)])
            maps = extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
            return maps, extractor

    elif library == "torchcam":
        from torchcam.methods import GradCAM

        def call(x: torch.Tensor) -> Any:
            extractor = GradCAM(net, layer)
            scores = net(x)
            maps = extractor(class_idx=targets, scores=scores)
            return maps, (extractor, scores)

    else:
        raise SystemExit(f"unknown library {library!r}; pick one of {', '.join(LIBRARIES)}")
    return call


def release(held: Any) -> None:
    """End the extractors' ``with`` blocks (removes their hooks and stored tensors)."""
    for obj in held if isinstance(held, tuple) else (held,):
        if hasattr(obj, "__exit__"):
            obj.__exit__(None, None, None)


def problem(batch: int, size: int) -> tuple[torch.nn.Module, torch.Tensor, list[int]]:
    """The benchmark's seeded inputs: resnet50(weights=None), a random batch, one distinct class per image."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    return net, torch.randn(batch, 3, size, size), [(37 * i) % 1000 for i in range(batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", choices=LIBRARIES)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    net, x, targets = problem(args.batch, args.size)
    call = make_call(args.library, net, args.layer, targets)
    gc.collect()
    base = _status_mib("VmRSS")

    _reset_peak()
    result, held = call(x)
    peak_cold = _status_mib("VmHWM") - base
    release(held)
    del result, held
    gc.collect()

    _reset_peak()
    result, held = call(x)
    peak_warm = _status_mib("VmHWM") - base
    kept = _status_mib("VmRSS") - base
    release(held)
    del result, held
    gc.collect()
    freed = _status_mib("VmRSS") - base
    cache = 0.0
    if args.library == "camlib":  # what camlib keeps for the next call: the packed convolution weights
        import camlib.fold

        camlib.fold.forget(net)
        gc.collect()
        cache = freed - (_status_mib("VmRSS") - base)

    print(
        json.dumps(
            {
                "library": args.library,
                "batch": args.batch,
                "baseline": round(base, 1),
                "peak_cold": round(peak_cold, 1),
                "peak_warm": round(peak_warm, 1),
                "kept": round(kept, 1),
                "freed": round(freed, 1),
                "cache": round(cache, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
