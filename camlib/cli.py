"""``python -m camlib``: explain your own images from the command line.

Three commands::

    python -m camlib explain photos/ cat.jpg --method gradcam --layer blocks.5 --out maps/
    python -m camlib methods                 # the method names --method accepts
    python -m camlib layers --model efficientnet_lite0   # the layer names --layer accepts

``explain`` expands folders (recursively, image suffixes only), loads every image, and runs the
method batch by batch on the device with a progress bar. For each image it writes
``<name>_<method>.png`` (the heat map over the photo, :func:`camlib.overlay`) and
``<name>_<method>.pt`` (or ``.npy``: the raw map as the method returns it, ``(h, w)``, or
``(3, H, W)`` for the guided methods), plus one ``explain.json`` that lists, per input, the
files written, the class explained and its probability, whether the map is zero everywhere
(``all_zero``: the summary then warns), or why the input was skipped.

A file that cannot be read (not an image, truncated, a folder, missing) is reported and
skipped; the run goes on. The exit status is 0 when at least one image was explained, 1 when
none was, 2 for a usage error (unknown method, model, layer or class, a bad number, an ``--out``
that is a file or cannot be created: nothing is read then). Existing files in ``--out`` are never
overwritten unless ``--overwrite`` is given: an image whose overlay or raw map exists is skipped,
and an ``explain.json`` already in ``--out`` (a previous run's record) is a usage error; pass
``--overwrite`` to replace them, or choose another ``--out``.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["main", "method_names", "expand_inputs", "explain_files", "ExplainReport"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MANIFEST = "explain.json"


class UsageError(ValueError):
    """A bad option: reported before any image is read (exit status 2)."""


def method_names() -> list[str]:
    """The map-producing functions of :mod:`camlib.methods`, looked up by signature.

    A method is a public function of ``camlib.methods`` that takes ``x`` and ``targets`` and
    returns one tensor (``cam``, ``gradcam``, ``gradcam_pp``, ``guided_backprop``,
    ``guided_gradcam``, and any method added there later).
    """
    from . import methods

    names = []
    for name in methods.__all__:
        fn = getattr(methods, name, None)
        if not callable(fn) or isinstance(fn, type):
            continue
        sig = inspect.signature(fn)
        returns = sig.return_annotation
        if {"x", "targets"} <= set(sig.parameters) and returns in ("Tensor", "torch.Tensor", _tensor_type()):
            names.append(name)
    return names


def _tensor_type() -> type:
    import torch

    return torch.Tensor


def _method(name: str) -> Callable[..., Any]:
    names = method_names()
    key = name.strip().lower().replace("-", "_").replace("+", "p")
    key = {"grad_campp": "gradcam_pp", "gradcampp": "gradcam_pp", "grad_cam": "gradcam"}.get(key, key)
    if key not in names:
        near = difflib.get_close_matches(key, names, n=2, cutoff=0.4)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UsageError(f"Unknown method {name!r}.{hint} Choose one of: {', '.join(names)}.")
    from . import methods

    return getattr(methods, key)


def expand_inputs(inputs: Sequence[str | os.PathLike], skip: Path | None = None) -> tuple[list[Path], list[Path]]:
    """``(files, ignored)``: each input file as given; each folder's image files (by suffix), recursively, sorted.

    Files under ``skip`` (the output folder) are left out, so a rerun does not explain its own
    overlays. Hidden files and non-image files inside folders are returned in ``ignored``;
    a path given explicitly is always tried, whatever its suffix.
    """
    files: list[Path] = []
    ignored: list[Path] = []
    skip = skip.resolve() if skip is not None else None
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if not p.is_file():
                    continue
                if skip is not None and (p.resolve() == skip or skip in p.resolve().parents):
                    continue
                hidden = any(part.startswith(".") for part in p.relative_to(path).parts)
                if hidden or p.suffix.lower() not in IMAGE_SUFFIXES:
                    ignored.append(p)
                else:
                    files.append(p)
        else:
            files.append(path)
    return files, ignored


@dataclass
class ExplainReport:
    """What :func:`explain_files` did: one entry per input, explained or skipped."""

    explained: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"settings": self.settings, "explained": self.explained, "skipped": self.skipped, "ignored": self.ignored},
            indent=1,
        )


def _target_index(target: str | int | None, classes: Sequence[str]) -> int | None:
    """``None`` (top-1), a class index, or a class name (case-insensitive) → an index into ``classes``."""
    if target is None:
        return None
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        idx = int(text)
        if not 0 <= idx < len(classes):
            raise UsageError(f"Class index {idx} is outside 0..{len(classes) - 1}.")
        return idx
    lower = [c.lower() for c in classes]
    if text.lower() in lower:
        return lower.index(text.lower())
    near = difflib.get_close_matches(text.lower(), lower, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(classes[lower.index(n)]) for n in near)}?" if near else ""
    raise UsageError(f"No class named {text!r}.{hint} Give a class name or an index 0..{len(classes) - 1}.")


def _unique_stems(files: Sequence[Path]) -> list[str]:
    """A file-name stem per input, made unique with ``-2``, ``-3``, ... when two inputs share one."""
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        stem = f.stem or "image"
        n = seen.get(stem.lower(), 0) + 1
        seen[stem.lower()] = n
        stems.append(stem if n == 1 else f"{stem}-{n}")
    return stems


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return f"{type(err).__name__}: {text}"


def explain_files(
    model: Any,
    files: Sequence[Path],
    out: Path,
    method: str = "gradcam",
    layer: str | None = None,
    target: str | int | None = None,
    batch_size: int = 8,
    raw_format: str = "pt",
    counterfactual: bool = False,
    amp: bool = False,
    alpha: float = 0.5,
    max_side: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ExplainReport:
    """Explain ``files`` with ``model`` (a :class:`camlib.LoadedModel`) and write the results into ``out``.

    Every option is checked and ``out`` created before any image is read (:class:`UsageError`: also
    for an ``out`` that is a file or cannot be created); then each image is
    loaded (a failure is logged and recorded in ``report.skipped``), the loaded images are run
    through the method ``batch_size`` at a time on the model's device, and each image's overlay
    and raw map are written. A batch that fails is retried image by image, so one bad image
    cannot take the others with it.
    """
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from .data import load_image
    from .hooks import LayerError, eval_mode, resolve_layer
    from .viz import overlay

    fn = _method(method)
    params = inspect.signature(fn).parameters
    if raw_format not in ("pt", "npy"):
        raise UsageError(f"--raw-format must be 'pt' or 'npy', not {raw_format!r}.")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must lie in [0, 1], not {alpha}.")
    if max_side < 0:
        raise UsageError(f"--max-side must be 0 (the input's size) or a positive number of pixels, not {max_side}.")
    if counterfactual and "counterfactual" not in params:
        raise UsageError(f"--counterfactual works with gradcam only, not with {fn.__name__}.")
    if amp and "amp" not in params:
        raise UsageError(f"--amp works with gradcam and gradcam_pp, not with {fn.__name__}.")
    if "layer" in params:
        layer = model.feature_layer if layer is None else layer
        try:
            resolve_layer(model.net, layer)
        except LayerError as err:
            raise UsageError(str(err)) from None
    elif fn.__name__ == "cam":
        if layer not in (None, model.feature_layer):
            raise UsageError(
                f"CAM is defined at the feature layer only ({model.feature_layer!r}), not at {layer!r}; "
                "use --method gradcam for other layers."
            )
        layer = model.feature_layer
    elif layer is not None:
        raise UsageError(f"{fn.__name__} has no layer (it explains the input pixels); leave out --layer.")
    target_idx = _target_index(target, model.classes)
    name = fn.__name__ + ("_counterfactual" if counterfactual else "")
    stems = _unique_stems(files)
    report = ExplainReport(
        settings={
            "model": model.name,
            "method": fn.__name__,
            "counterfactual": counterfactual,
            "amp": amp,
            "layer": layer,
            "target": "top-1" if target_idx is None else model.classes[target_idx],
            "device": str(model.device),
            "raw_format": raw_format,
        }
    )
    _make_folder(out)

    def write(entry: dict[str, Any], image: Image.Image, raw: torch.Tensor) -> None:
        stem = entry.pop("stem")
        png, raw_path = out / f"{stem}_{name}.png", out / f"{stem}_{name}.{raw_format}"
        if not overwrite and (png.exists() or raw_path.exists()):
            raise FileExistsError(f"{png.name} or {raw_path.name} exists in {out}; pass --overwrite to replace it")
        raw = raw.detach().float().cpu()
        shown = raw.abs().amax(0) if raw.dim() == 3 else raw  # guided methods: max |gradient| over channels
        picture = image.copy()
        if max_side and max(picture.size) > max_side:
            picture.thumbnail((max_side, max_side), Image.BILINEAR)
        Image.fromarray(overlay(picture, shown, alpha=alpha)).save(png)
        if raw_format == "pt":
            torch.save(raw.clone(), raw_path)
        else:
            np.save(raw_path, raw.numpy())
        entry.update(overlay=png.name, raw=raw_path.name, shape=list(raw.shape), all_zero=not bool(raw.any()))
        report.explained.append(entry)

    def skip(path: Path, reason: str) -> None:
        report.skipped.append({"input": str(path), "reason": reason})
        log(f"skipped {path}: {reason}")

    def run(batch: list[tuple[Path, str, Image.Image, torch.Tensor]]) -> None:
        x = torch.cat([item[3] for item in batch])
        with torch.no_grad(), eval_mode(model.net):
            probs = model.net(x).softmax(dim=1)
        idx = probs.argmax(dim=1) if target_idx is None else torch.full_like(probs[:, 0], target_idx).long()
        kwargs: dict[str, Any] = {"targets": idx.tolist()}
        if "layer" in params:
            kwargs["layer"] = layer
        if counterfactual:
            kwargs["counterfactual"] = True
        if amp:
            kwargs["amp"] = True
        first = model if next(iter(params)) == "model" else model.net
        maps = fn(first, x, **kwargs)
        for (path, stem, image, _), m, c, p in zip(batch, maps, idx.tolist(), probs, strict=True):
            entry = {"input": str(path), "stem": stem, "class": c, "label": model.classes[c]}
            entry["probability"] = round(float(p[c]), 4)
            try:
                write(entry, image, m)
            except Exception as err:  # a full disk, an existing file: this image only
                skip(path, _reason(err))

    bar = tqdm(total=len(files), desc=f"{name} ({model.device})", unit="img", disable=not progress, file=sys.stderr)
    try:
        for group in _batches(list(zip(files, stems, strict=True)), batch_size):
            loaded = []
            for path, stem in group:
                try:
                    image = load_image(path)
                    loaded.append((path, stem, image, model.preprocess(image)))
                except Exception as err:  # not an image, truncated, a folder, missing, too large
                    skip(path, _reason(err))
            if loaded:
                try:
                    run(loaded)
                except Exception:
                    for item in loaded:  # find the culprit: one image at a time
                        try:
                            run([item])
                        except Exception as err:
                            skip(item[0], _reason(err))
            bar.update(len(group))
    finally:
        bar.close()
    return report


def _make_folder(out: Path) -> None:
    """Create the output folder ``out`` (and its parents); a file in the way or no permission is a usage error."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: give a folder (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"Cannot create the output folder --out {out}: {_reason(err)}") from None


def _parser() -> argparse.ArgumentParser:
    from .models import model_names

    parser = argparse.ArgumentParser(
        prog="python -m camlib",
        description="Class activation maps for your own images (camlib).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{explain,methods,layers}")

    ex = sub.add_parser(
        "explain",
        help="write heat-map overlays and raw maps for images and folders",
        description="Write a heat-map overlay (PNG) and the raw map (.pt or .npy) for each image; "
        "folders are searched recursively for image files. Unreadable files are reported and skipped. "
        "Exit status: 0 if at least one image was explained, 1 if none, 2 for a usage error.",
    )
    ex.add_argument("images", nargs="+", help="image files and/or folders")
    ex.add_argument("--out", "-o", required=True, type=Path, help="output folder (created if missing)")
    ex.add_argument("--model", default="efficientnet_lite0", help=f"one of {', '.join(model_names())}")
    ex.add_argument("--method", default="gradcam", help="a camlib method: see `python -m camlib methods`")
    ex.add_argument("--layer", default=None, help="dotted layer name (default: the model's feature layer)")
    ex.add_argument("--target", default=None, help="class name or index for every image (default: each top-1)")
    ex.add_argument("--counterfactual", action="store_true", help="gradcam only: regions that lower the score")
    ex.add_argument(
        "--amp", action="store_true", help="gradcam, gradcam_pp: forward in bfloat16/float16, for big batches on a GPU"
    )
    ex.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    ex.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: camlib.get_device())")
    ex.add_argument("--raw-format", choices=("pt", "npy"), default="pt", help="raw map file format (default pt)")
    ex.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity in the overlay (default 0.5)")
    ex.add_argument("--max-side", type=int, default=1024, help="longest side of the overlay PNG (0: as the input)")
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace existing output files, {MANIFEST} included (without it an existing {MANIFEST} is an error)",
    )
    ex.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    sub.add_parser("methods", help="list the method names --method accepts")
    la = sub.add_parser("layers", help="list the layers --layer accepts: feature maps, and a ViT's token layers")
    la.add_argument("--model", default="efficientnet_lite0")
    la.add_argument("--max-depth", type=int, default=None, help="at most this many dots in a name")
    return parser


def _load_model(name: str, device: str | None) -> Any:
    import torch

    from .models import load_model

    if device is not None:
        try:
            torch.empty(0, device=device)
        except Exception as err:
            raise UsageError(f"--device {device!r} is not usable here: {_reason(err)}") from None
    try:
        return load_model(name, device=device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    except RuntimeError as err:  # weights not available offline
        raise UsageError(str(err)) from None


def _log(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)  # above the progress bar, not through it


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m camlib``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "methods":
            print("\n".join(method_names()))
            return 0
        if args.command == "layers":
            from .hooks import layer_names

            model = _load_model(args.model, "cpu")
            print("\n".join(layer_names(model.net, size=model.input_size, max_depth=args.max_depth)))
            return 0
        _method(args.method)  # fail fast, before loading a model
        out = args.out.expanduser()
        if (out / MANIFEST).exists() and not args.overwrite:
            raise UsageError(
                f"{out / MANIFEST} exists (a previous run's record); pass --overwrite to replace it and the "
                "overlays and maps of the same names, or choose another --out."
            )
        model = _load_model(args.model, args.device)
        files, ignored = expand_inputs(args.images, skip=out if out.exists() else None)
        report = explain_files(
            model,
            files,
            out,
            method=args.method,
            layer=args.layer,
            target=args.target,
            batch_size=args.batch_size,
            raw_format=args.raw_format,
            counterfactual=args.counterfactual,
            amp=args.amp,
            alpha=args.alpha,
            max_side=args.max_side,
            overwrite=args.overwrite,
            progress=not args.quiet,
            log=_log,
        )
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report.ignored = [str(p) for p in ignored]
    (out / MANIFEST).write_text(report.to_json() + "\n")
    n_ok, n_bad = len(report.explained), len(report.skipped)
    print(
        f"explained {n_ok} of {len(files)} image(s) with {report.settings['method']} at "
        f"{report.settings['layer'] or 'the input'}; {n_bad} skipped; results in {out}",
        file=sys.stderr,
    )
    zero = sum(entry["all_zero"] for entry in report.explained)
    if zero:
        print(
            f'warning: {zero} of the {n_ok} map(s) are zero everywhere ("all_zero" in {MANIFEST}): nothing at '
            f"{report.settings['layer'] or 'the input'} raises the class's score; at a class-token ViT's last block "
            "nothing can. Try an earlier --layer (python -m camlib layers lists them).",
            file=sys.stderr,
        )
    if ignored:
        print(f"ignored {len(ignored)} non-image file(s) in the folders (listed in {out / MANIFEST})", file=sys.stderr)
    return 0 if n_ok else 1
