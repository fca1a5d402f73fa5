"""CAM and Eigen-CAM against the forward they explain, and against the libraries, CPU (not a test).

    .venv/bin/python benchmarks/bench_cam.py               # about 5 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_cam.py --threads 1 --repeat 15

``camlib.cam`` needs one forward; so does Eigen-CAM. Both run it through the batch-norm-folded
twin, channels-last (``camlib.hooks.forward_hooked``), so they can cost less than the model's own
forward. Rows: EfficientNet-Lite0 (real weights) at ``bn2`` (its CAM layer) and torchvision
``resnet50(weights=None)`` (seeded) at ``layer4``, 224 px, batches 1 and 8, the sample photo
``chelsea`` repeated. Columns, CPU time of the process in ms, wall time in brackets (median of
``--repeat`` interleaved rounds after two warm-up rounds; each call is timed right after an untimed
call of its own, since in a plain rotation the forward right after pytorch-grad-cam's call took 2×
its time alone): a plain fp32 forward of the contiguous batch under ``no_grad``, ``camlib.cam``,
torchcam's ``CAM`` (its hooks set up and removed inside the call, as a user writes it),
``camlib.eigencam`` and pytorch-grad-cam's ``EigenCAM``; × = relative to the forward. The maps are
checked against each other before timing (normalised, max difference printed; pytorch-grad-cam's
Eigen-CAM keeps whatever sign the SVD returns and takes its ReLU, camlib fixes the sign, so the
better of the two signs is compared).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision

import camlib


def models() -> dict[str, tuple[torch.nn.Module, str, str]]:
    torch.manual_seed(0)
    r50 = torchvision.models.resnet50(weights=None).eval()
    return {
        "Lite0": (camlib.load_model("efficientnet_lite0").net, "bn2", "classifier"),
        "ResNet-50": (r50, "layer4", "fc"),
    }


def calls(net: torch.nn.Module, layer: str, fc: str) -> dict:
    from pytorch_grad_cam import EigenCAM
    from torchcam.methods import CAM

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    def torchcam_cam(x: torch.Tensor) -> torch.Tensor:
        with CAM(net, target_layer=layer, fc_layer=fc) as extractor, torch.no_grad():
            out = net(x)
            return extractor(out.argmax(1).tolist(), out, normalized=False)[0]

    def pgc_eigencam(x: torch.Tensor) -> torch.Tensor:
        with EigenCAM(net, target_layers=[net.get_submodule(layer)]) as eigen:
            return torch.as_tensor(eigen(input_tensor=x, targets=None))

    return {
        "forward": forward,
        "camlib cam": lambda x: camlib.cam(net, x),
        "torchcam CAM": torchcam_cam,
        "camlib eigencam": lambda x: camlib.eigencam(net, x, layer, center=True),  # as pytorch-grad-cam
        "pytorch-grad-cam EigenCAM": pgc_eigencam,
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a = camlib.normalize(camlib.upsample(a, b.shape[-2:])) if a.shape[-2:] != b.shape[-2:] else camlib.normalize(a)
    return float((a - camlib.normalize(b)).abs().max())


def rel_either_sign(eig: torch.Tensor, theirs: torch.Tensor) -> float:
    """Eigen-CAM's map against pytorch-grad-cam's (which is ReLU'd): the better of the SVD's two signs."""
    return min(rel(eig.relu(), theirs), rel((-eig).relu(), theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    image = camlib.load_image("chelsea")
    print(f"CPU, {args.threads} threads, torch {torch.__version__}; CPU ms, median of {args.repeat} rounds")
    for model_name, (net, layer, fc) in models().items():
        fns = calls(net, layer, fc)
        for batch in (1, 8):
            x = camlib.load_model("efficientnet_lite0").preprocess(image).expand(batch, -1, -1, -1).contiguous()
            cam, tc = fns["camlib cam"](x), fns["torchcam CAM"](x)
            eig, pgc = fns["camlib eigencam"](x), fns["pytorch-grad-cam EigenCAM"](x)
            cpu: dict[str, list[float]] = {k: [] for k in fns}
            wall: dict[str, list[float]] = {k: [] for k in fns}
            names = list(fns)
            for r in range(args.repeat + 2):  # interleaved, rotated; rounds 0 and 1 are warm-up
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    fns[name](x)  # each call timed right after one of its own: no other library's state in caches
                    start, start_wall = time.process_time(), time.perf_counter()
                    fns[name](x)
                    if r > 1:
                        cpu[name].append(time.process_time() - start)
                        wall[name].append(time.perf_counter() - start_wall)
            med = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
            med_wall = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
            row = "  ".join(f"{k} {v:.1f} [{med_wall[k]:.1f}] ({v / med['forward']:.2f}×)" for k, v in med.items())
            print(f"{model_name} `{layer}`, batch {batch}: {row}")
            agree = f"cam vs torchcam {rel(cam, tc):.1e}, eigencam vs pytorch-grad-cam {rel_either_sign(eig, pgc):.1e}"
            print(f"    normalised maps: {agree}")


if __name__ == "__main__":
    main()
