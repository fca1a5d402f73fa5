"""A non-editable install (``pip install .``, ``pip install git+URL`` on Colab) works on its own.

The wheel is built from the repository, installed into a fresh virtual environment that
sees this environment's dependencies (torch, timm, ...) but neither the repository nor
its editable install, and run from a folder outside the repository: the sample photos
and both models' weights must come from inside the installed package. Building the
wheel must not print setuptools deprecation warnings about the project's metadata.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import camlib
    from camlib.data import data_dir

    root = Path(sys.argv[1])
    assert root not in Path(camlib.__file__).resolve().parents, camlib.__file__
    assert data_dir().resolve() == Path(camlib.__file__).resolve().parent / "_data", data_dir()
    print("samples", ",".join(camlib.sample_names()))
    print("chelsea", camlib.load_image("chelsea").size)
    small = camlib.load_model("small_gap_shapes", device="cpu")
    lite = camlib.load_model("efficientnet_lite0", device="cpu")
    x = lite.preprocess(camlib.load_image("chelsea"))
    print("top1", lite.predict(x, k=1)[0][0][0], type(small.net).__name__)
    """
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (whl,) = out.glob("camlib-*.whl")
    return whl, build.stdout + build.stderr


def test_wheel_metadata_has_no_deprecation_warnings(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    assert "deprecated" not in log.lower(), log


def test_wheel_carries_the_data(wheel: tuple[Path, str]) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel[0]).namelist())
    for f in ("chelsea.png", "small_gap_shapes.pt", "small_flat_shapes.pt", "small_vit_shapes.pt", "CREDITS.md"):
        assert f"camlib/_data/{f}" in names, sorted(n for n in names if "_data" in n)


def test_non_editable_install_finds_samples_and_weights(wheel: tuple[Path, str], tmp_path: Path) -> None:
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    # The dependencies come from this environment, as a plain path: its .pth files (the editable
    # camlib among them) are not processed, so only the wheel can provide camlib.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel[0])], check=True
    )
    run = subprocess.run(
        [python, "-c", PROBE, str(ROOT)], cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "chelsea" in run.stdout.split("samples ")[1].split("\n")[0].split(",")
    assert "top1 Egyptian cat SmallGapNet" in run.stdout, run.stdout
