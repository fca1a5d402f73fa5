"""The explorer in a real browser: JupyterLab + Debian's Chromium driven by Playwright.

A copy of ``tests/browser/explorer.ipynb`` is opened in a JupyterLab server started on
127.0.0.1 (a free port, a random token, news and update checks off, every config/state folder in
a temporary directory). All cells run; the class list is opened with the mouse and moved with the
keyboard, then a method button is clicked; each time the pixels of the heat-map ``<img>`` must change. A
screenshot is left in ``test-output/`` for a person to look at. Every process started here (the
server, its kernels, the browser) is stopped in the fixture's teardown.

Chromium comes from the system (``apt-get install chromium``; ``make browser-deps``), never from
``playwright install``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "tests" / "browser" / "explorer.ipynb"
OUTPUT = ROOT / "test-output"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_S = 120
RUN_ALL_S = 300  # all attempts of "Run All Cells" together: model load + first maps on a loaded 2-core machine
MOVE_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str, method: str = "GET") -> object:
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def stop(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut kernels down through the API, then end the server's process group and every descendant."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        for kernel in api(base, token, "/api/kernels"):
            api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    except Exception:
        pass  # the server may already be gone; the signals below still apply
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in family:  # kernels run in their own session, outside the server's group
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        gone, alive = psutil.wait_procs([*family], timeout=wait)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not alive:
            break
    assert proc.poll() is not None, "the JupyterLab server did not stop"
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "processes left behind"


@contextlib.contextmanager
def jupyterlab(tmp_path: Path, notebook: Path = NOTEBOOK) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on 127.0.0.1 serving a temporary folder that holds a copy of the notebook."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(notebook, work / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "CAMLIB_DEVICE": "cpu",
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={work}",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    notification = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"checkForUpdates": False, "fetchNews": "false"}))
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
    OUTPUT.mkdir(exist_ok=True)
    log = open(OUTPUT / "jupyterlab.log", "wb")  # noqa: SIM115 - closed in the finally
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, f"JupyterLab exited early; see {OUTPUT / 'jupyterlab.log'}"
            try:
                api(base, token, "/api/status")
                break
            except OSError:
                assert time.monotonic() < deadline, f"JupyterLab did not answer in {SERVER_START_S} s"
                time.sleep(0.5)
        yield base, token
    finally:
        stop(proc, base, token)
        log.close()


def wait_for_kernel(page) -> None:
    """Wait until the notebook's kernel is idle, answering JupyterLab's "Select Kernel" dialog if it asks."""
    deadline = time.monotonic() + SERVER_START_S
    select = page.locator(".jp-Dialog button", has_text=re.compile(r"^\s*Select\s*$"))
    idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    while time.monotonic() < deadline:
        if select.count():
            select.first.click()
        elif idle.count():
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"the kernel was not ready within {SERVER_START_S} s")


def run_all_cells(page) -> None:
    """Run > Run All Cells until the explorer's image is shown.

    Right after a kernel starts, JupyterLab may reconnect its websocket; widgets created during
    that window show "Error displaying widget: model not found" (a front-end race, not ours), so
    we wait for a settled idle kernel and run everything again if it happens anyway.
    """
    image = page.locator(".jp-OutputArea img.widget-image")
    broken = page.get_by_text("Error displaying widget")
    deadline = time.monotonic() + RUN_ALL_S
    for _attempt in range(3):
        wait_for_kernel(page)
        page.wait_for_timeout(3000)
        wait_for_kernel(page)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()
        page.wait_for_function(  # a rerun first clears the old outputs
            "() => !document.body.innerText.includes('Error displaying widget')", timeout=60_000
        )
        while time.monotonic() < deadline and not broken.count():
            if image.count() and page.evaluate(
                "() => { const i = document.querySelector('.jp-OutputArea img.widget-image');"
                " return i.complete && i.naturalWidth > 0; }"
            ):
                return
            page.wait_for_timeout(250)
        outputs = page.locator(".jp-OutputArea").all_inner_texts()
        assert broken.count(), f"the explorer did not appear within {RUN_ALL_S} s; outputs: {outputs}"
    raise AssertionError("the widgets could not be displayed after three runs")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with jupyterlab(tmp_path) as server:
        yield server


def image_data(page) -> str:
    """The pixels of the explorer's heat-map <img>, as a PNG data URL drawn through a canvas."""
    return page.evaluate(
        """() => {
            const img = document.querySelector('.jp-OutputArea img.widget-image');
            const c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            c.getContext('2d').drawImage(img, 0, 0);
            return c.toDataURL('image/png');
        }"""
    )


def wait_for_new_image(page, old: str) -> str:
    deadline = time.monotonic() + MOVE_S
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        new = image_data(page)
        if new != old and len(new) > 1000:
            return new
    raise AssertionError(f"the heat map did not change within {MOVE_S} s")


def test_explorer_in_jupyterlab(lab: tuple[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps)"
    base, token = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            page.set_default_timeout(RUN_ALL_S * 1000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            run_all_cells(page)

            img = page.locator(".jp-OutputArea img.widget-image")
            message = page.locator(".jp-OutputArea .widget-html-content").first
            assert "Egyptian cat" in message.inner_text()
            first = image_data(page)
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "explorer_before.png"))

            # Mouse and keyboard: open the class list, go one entry down (the second-best class,
            # "tiger cat"), Enter. (ArrowDown on the *closed* list is taken by JupyterLab's command
            # mode, which moves the notebook's cell selection instead.)
            page.locator(".jp-OutputArea .widget-dropdown select").first.click()
            page.keyboard.press("ArrowDown")
            page.keyboard.press("Enter")
            second = wait_for_new_image(page, first)
            page.wait_for_function(
                "() => document.querySelector('.jp-OutputArea .widget-html-content').innerText.includes('tiger cat')",
                timeout=MOVE_S * 1000,
            )

            # Mouse: the "Grad-CAM" method button.
            buttons = page.locator(".jp-OutputArea .widget-toggle-button")
            buttons.filter(has_text=re.compile(r"^\s*Grad-CAM\s*$")).first.click()
            wait_for_new_image(page, second)
            page.wait_for_function(
                "() => document.querySelector('.jp-OutputArea .widget-html-content').innerText.includes('Grad-CAM')",
                timeout=MOVE_S * 1000,
            )
            page.screenshot(path=str(OUTPUT / "explorer_browser.png"))
            img.screenshot(path=str(OUTPUT / "explorer_heatmap.png"))
        except Exception:
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "explorer_failure.png"))
            raise
        finally:
            browser.close()
