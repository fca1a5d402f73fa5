"""``python -m camlib explain``: folders, bad files, batching, exit codes, the files it writes.

The raw maps written are compared with an independent call of the camlib method on each image
alone (batch of one), so batching cannot silently give image 0's target to the others.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camlib
from camlib import cli
from camlib.data import data_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Two photos (one in a subfolder), a corrupt .png, a truncated .jpg, a text file and an empty folder."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "empty").mkdir()
    shutil.copy(data_dir() / "chelsea.png", folder / "chelsea.png")
    shutil.copy(data_dir() / "rocket.jpg", folder / "sub" / "rocket.jpg")
    (folder / "broken.png").write_bytes(b"this is not a PNG file")
    (folder / "truncated.jpg").write_bytes((data_dir() / "rocket.jpg").read_bytes()[:2000])
    (folder / "notes.txt").write_text("not an image")
    return folder


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAMLIB_DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "camlib", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_explain_folder_file_and_bad_inputs_end_to_end(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = tmp_path / "coffee.png"
    shutil.copy(data_dir() / "coffee.png", extra)
    done = run_cli(
        "explain", str(photos), str(extra), str(tmp_path / "missing.jpg"), str(photos / "empty"),
        "--layer", "blocks.5", "--batch-size", "2", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / cli.MANIFEST).read_text())
    explained = {Path(e["input"]).name: e for e in manifest["explained"]}
    assert set(explained) == {"chelsea.png", "rocket.jpg", "coffee.png"}
    skipped = {Path(s["input"]).name: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"broken.png", "truncated.jpg", "missing.jpg"}, skipped
    for name in skipped:
        assert f"skipped {photos if name != 'missing.jpg' else tmp_path}" in done.stderr, done.stderr
    assert manifest["ignored"] == [str(photos / "notes.txt")]
    assert "explained 3 of 6 image(s)" in done.stderr
    assert explained["chelsea.png"]["label"] == "Egyptian cat"
    for entry in explained.values():
        png = Image.open(out / entry["overlay"])
        assert png.format == "PNG" and png.mode == "RGB"
        raw = torch.load(out / entry["raw"], weights_only=True)
        assert raw.shape == (7, 7) and raw.dtype == torch.float32 and torch.isfinite(raw).all()
    assert Image.open(out / "chelsea_gradcam.png").size == camlib.load_image("chelsea").size
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [cli.MANIFEST] + [f"{s}_gradcam.{e}" for s in ("chelsea", "rocket", "coffee") for e in ("png", "pt")]
    )


def test_batched_maps_equal_one_image_calls(real_model: camlib.LoadedModel, photos: Path, tmp_path: Path) -> None:
    files = [photos / "chelsea.png", photos / "sub" / "rocket.jpg", data_dir() / "coffee.png"]
    report = cli.explain_files(
        real_model, files, tmp_path, method="gradcam", layer="blocks.5", batch_size=2, progress=False, log=print
    )
    assert [Path(e["input"]).name for e in report.explained] == ["chelsea.png", "rocket.jpg", "coffee.png"]
    labels = []
    for f, entry in zip(files, report.explained, strict=True):
        x = real_model.preprocess(camlib.load_image(f))
        ref = camlib.gradcam(real_model.net, x, "blocks.5")[0]
        got = torch.load(tmp_path / entry["raw"], weights_only=True)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
        assert entry["class"] == int(real_model.net(x).argmax())
        labels.append(entry["label"])
    assert len(set(labels)) == 3, labels  # three different top-1 classes: each image got its own target


def test_target_by_name_npy_and_cam(real_model: camlib.LoadedModel, tmp_path: Path) -> None:
    report = cli.explain_files(
        real_model, [data_dir() / "chelsea.png"], tmp_path, method="cam", target="Tiger Cat",
        raw_format="npy", progress=False,
    )  # fmt: skip
    (entry,) = report.explained
    assert entry["label"] == "tiger cat" and entry["raw"] == "chelsea_cam.npy"
    x = real_model.preprocess(camlib.load_image("chelsea"))
    ref = camlib.cam(real_model, x, targets=real_model.classes.index("tiger cat"))[0]
    np.testing.assert_allclose(np.load(tmp_path / entry["raw"]), ref.numpy(), rtol=1e-4, atol=1e-5)


def test_guided_method_writes_a_three_channel_map(real_model: camlib.LoadedModel, tmp_path: Path) -> None:
    report = cli.explain_files(
        real_model, [data_dir() / "chelsea.png"], tmp_path, method="guided_gradcam", progress=False
    )
    (entry,) = report.explained
    assert entry["shape"] == [3, 224, 224]
    raw = torch.load(tmp_path / entry["raw"], weights_only=True)
    assert raw.abs().amax() > 0


def test_existing_files_are_not_overwritten(real_model: camlib.LoadedModel, tmp_path: Path) -> None:
    mine = tmp_path / "chelsea_gradcam.png"
    mine.write_bytes(b"the user's file")
    report = cli.explain_files(real_model, [data_dir() / "chelsea.png"], tmp_path, progress=False, log=print)
    assert not report.explained and "--overwrite" in report.skipped[0]["reason"]
    assert mine.read_bytes() == b"the user's file"
    report = cli.explain_files(
        real_model, [data_dir() / "chelsea.png"], tmp_path, overwrite=True, progress=False, log=print
    )
    assert report.explained and Image.open(mine).format == "PNG"


def test_same_stem_in_two_folders_gets_two_names(real_model: camlib.LoadedModel, tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(data_dir() / "coffee.png", tmp_path / sub / "cup.png")
    files, _ = cli.expand_inputs([tmp_path / "a", tmp_path / "b"])
    report = cli.explain_files(real_model, files, tmp_path / "out", progress=False)
    assert [e["overlay"] for e in report.explained] == ["cup_gradcam.png", "cup-2_gradcam.png"]


def test_rerun_into_the_input_folder_does_not_explain_its_own_output(tmp_path: Path) -> None:
    shutil.copy(data_dir() / "coffee.png", tmp_path / "coffee.png")
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "old_gradcam.png").write_bytes((data_dir() / "coffee.png").read_bytes())
    files, _ = cli.expand_inputs([tmp_path], skip=tmp_path / "maps")
    assert files == [tmp_path / "coffee.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "gradcamm"], "Did you mean 'gradcam'?"),
        (["--layer", "blocks.55"], "Nearest names"),
        (["--target", "tigr cat"], "Did you mean 'tiger cat'"),
        (["--target", "1000"], "outside 0..999"),
        (["--method", "cam", "--layer", "blocks.4"], "feature layer only"),
        (["--method", "guided_backprop", "--layer", "blocks.4"], "leave out --layer"),
        (["--method", "cam", "--counterfactual"], "gradcam only"),
        (["--method", "guided_backprop", "--amp"], "--amp works with gradcam and gradcam_pp"),
        (["--model", "resnet-5"], "Did you mean 'resnet50'?"),
        (["--device", "cuda:99"], "not usable here"),
        (["--batch-size", "0"], "at least 1"),
        (["--max-side", "-1"], "--max-side must be 0"),
    ],
)
def test_usage_errors_exit_2_before_reading_images(
    args: list[str], message: str, tmp_path: Path, real_model: camlib.LoadedModel, monkeypatch, capsys
) -> None:
    load = cli._load_model

    # The session's model, unless the test is about the model or the device (those fail before loading).
    monkeypatch.setattr(
        cli, "_load_model", lambda name, dev: load(name, dev) if name != real_model.name or dev else real_model
    )
    out = tmp_path / "out"
    status = cli.main(["explain", str(data_dir() / "chelsea.png"), "--out", str(out), "-q", *args])
    err = capsys.readouterr().err
    assert status == 2, err
    assert message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_an_existing_manifest_is_kept_unless_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["explain", str(data_dir() / "chelsea.png"), "--model", "small_gap_shapes", "--out", str(out), "-q"]
    assert cli.main(args) == 0
    first = (out / cli.MANIFEST).read_text()
    capsys.readouterr()
    assert cli.main(args) == 2  # a usage error, before any image is read
    err = capsys.readouterr().err
    assert str(out / cli.MANIFEST) in err and "--overwrite" in err, err
    assert (out / cli.MANIFEST).read_text() == first
    assert cli.main([*args, "--overwrite"]) == 0
    assert json.loads((out / cli.MANIFEST).read_text())["explained"][0]["overlay"] == "chelsea_gradcam.png"


def test_out_that_is_a_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("the user's file")
    args = ["explain", str(data_dir() / "chelsea.png"), "--model", "small_gap_shapes", "--out", str(afile), "-q"]
    assert cli.main(args) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "the user's file"


def test_explain_files_leaves_a_training_net_and_its_batch_norm_statistics_alone(tmp_path: Path) -> None:
    model = camlib.load_model("small_gap_shapes", device="cpu")
    model.net.train()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    report = cli.explain_files(model, [data_dir() / "chelsea.png"], tmp_path, progress=False)
    assert len(report.explained) == 1
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training for m in model.net.modules())
    with torch.no_grad():
        p = model.net.eval()(model.preprocess(camlib.load_image(data_dir() / "chelsea.png"))).softmax(1)
    assert report.explained[0]["probability"] == round(float(p.max()), 4)  # the eval-mode prediction


def test_nothing_explained_exits_1(photos: Path, tmp_path: Path) -> None:
    done = run_cli("explain", str(photos / "broken.png"), str(photos / "empty"), "--out", str(tmp_path / "o"), "-q")
    assert done.returncode == 1, done.stderr
    assert "explained 0 of 1 image(s)" in done.stderr and "broken.png" in done.stderr


def test_methods_are_looked_up_by_name() -> None:
    names = cli.method_names()
    assert {"cam", "gradcam", "gradcam_pp", "guided_backprop", "guided_gradcam"} <= set(names)
    assert "layer_gradients" not in names and "find_gap_head" not in names
    assert cli._method("Grad-CAM++").__name__ == "gradcam_pp"
    done = run_cli("methods")
    assert done.returncode == 0 and done.stdout.split() == names


def test_amp_maps_follow_the_float32_ones(real_model: camlib.LoadedModel, tmp_path: Path) -> None:
    files = [data_dir() / "chelsea.png", data_dir() / "coffee.png"]
    report = cli.explain_files(real_model, files, tmp_path, method="gradcam_pp", amp=True, progress=False)
    assert report.settings["amp"] is True and len(report.explained) == 2
    for f, entry in zip(files, report.explained, strict=True):
        x = real_model.preprocess(camlib.load_image(f))
        ref = camlib.gradcam_pp(real_model.net, x, real_model.feature_layer)[0]
        got = torch.load(tmp_path / entry["raw"], weights_only=True)
        assert got.dtype == torch.float32 and bool(got.isfinite().all())
        assert float((got - ref).abs().max() / ref.abs().max()) < 0.1
        assert float(camlib.metrics.spearman(got[None], ref[None])[0]) > 0.98


def test_maps_zero_everywhere_are_flagged_and_warned_about(tmp_path: Path, capsys) -> None:
    """The course's class-token ViT at its last block gives maps that are zero everywhere: the manifest says
    so per image and the summary warns; the model's default layer, the block before, gives real maps."""
    images, _, _ = camlib.synthetic.shapes(2, seed=1)
    folder = tmp_path / "shapes"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"s{i}.png")
    for layer, zero in (("blocks.3", True), (None, False)):  # the default: blocks.2
        out = tmp_path / f"out_{layer}"
        args = ["explain", str(folder), "--model", "small_vit_shapes", "--out", str(out), "-q"]
        assert cli.main(args + (["--layer", layer] if layer else [])) == 0
        err = capsys.readouterr().err
        entries = json.loads((out / cli.MANIFEST).read_text())["explained"]
        assert [e["all_zero"] for e in entries] == [zero, zero]
        for e in entries:
            assert bool(torch.load(out / e["raw"]).any()) is not zero
        assert ("warning: 2 of the 2 map(s) are zero everywhere" in err) is zero, err
        assert ("blocks.3 raises" in err) is zero, err
