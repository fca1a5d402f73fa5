"""The workshop app (``make app``): app/explorer.ipynb served by Voilà, driven in a real browser.

Voilà is started on 127.0.0.1 (a free port, every Jupyter config/data folder in a temporary
directory); Debian's Chromium, driven by Playwright, opens the app with every request outside the
server blocked (the room may have no network). The test uploads a file that is not an image (the
app must say so and keep working), then a real photo (the heat map must change to it), then picks
another class in the explorer's class list (the map's pixels must change again). Screenshots go to
``test-output/``. Every process started here is stopped in the fixture's teardown.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, OUTPUT, free_port

from camlib.data import data_dir

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app" / "explorer.ipynb"
START_S = 120
RENDER_S = 300  # the kernel loads the model and computes the first maps on a busy 2-core machine
MOVE_S = 120

PIXELS = """() => {
    const img = document.querySelector('img.widget-image');
    if (!img || !img.complete || img.naturalWidth === 0) return '';
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    c.getContext('2d').drawImage(img, 0, 0);
    return c.toDataURL('image/png');
}"""


def stop_tree(proc: subprocess.Popen) -> None:
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in [psutil.Process(proc.pid), *family] if proc.poll() is None else family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(family, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "processes left behind"


@pytest.fixture
def voila(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "CAMLIB_DEVICE": "cpu",
        "JUPYTER_PATH": str(ROOT / "app"),  # the "offline" template: app/voila/templates/offline
    }
    cmd = [sys.executable, "-m", "voila", str(APP), "--template=offline", "--no-browser", f"--port={port}"]
    cmd += ["--Voila.ip=127.0.0.1"]
    cmd += ["--Voila.port_retries=0", "--show_tracebacks=True"]
    OUTPUT.mkdir(exist_ok=True)
    log = open(OUTPUT / "voila.log", "wb")  # noqa: SIM115 - closed in the finally
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, f"Voilà exited early; see {OUTPUT / 'voila.log'}"
            try:
                urllib.request.urlopen(f"{base}/voila/static/", timeout=5)  # noqa: S310 - localhost
                break
            except urllib.error.HTTPError:
                break  # an HTTP answer, even 403/404: the server is up (GET / would start a kernel)
            except OSError:
                assert time.monotonic() < deadline, f"Voilà did not answer in {START_S} s"
                time.sleep(0.5)
        yield base
    finally:
        stop_tree(proc)
        log.close()


def wait_for_new_pixels(page, old: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = page.evaluate(PIXELS)
        if new and new != old:
            return new
        page.wait_for_timeout(250)
    raise AssertionError(f"the heat map did not change within {timeout_s} s")


def test_app_upload_and_class_change_move_the_map(voila: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps)"
    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_bytes(b"this is not a picture")
    blocked: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1000})

        def route(r) -> None:
            if r.request.url.startswith(voila) or r.request.url.startswith("data:"):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        try:
            page.goto(voila, timeout=RENDER_S * 1000)
            status = page.locator(".widget-html-content", has_text="showing")
            status.first.wait_for(timeout=RENDER_S * 1000)
            first = wait_for_new_pixels(page, "", RENDER_S)
            assert "Egyptian cat" in page.locator("body").inner_text()
            page.screenshot(path=str(OUTPUT / "app_start.png"))

            def upload(path: Path) -> None:  # click the upload button, answer the file chooser
                with page.expect_file_chooser(timeout=MOVE_S * 1000) as chooser:
                    page.locator(".widget-upload").first.click()
                chooser.value.set_files(str(path))

            upload(not_an_image)
            page.get_by_text("holiday.png is not an image we can read").wait_for(timeout=MOVE_S * 1000)
            assert page.evaluate(PIXELS) == first  # the explorer is still there, unchanged

            upload(data_dir() / "coffee.png")
            page.get_by_text("showing coffee.png").wait_for(timeout=MOVE_S * 1000)
            second = wait_for_new_pixels(page, first, MOVE_S)
            assert "espresso" in page.locator("body").inner_text()
            page.screenshot(path=str(OUTPUT / "app_upload.png"))

            classes = page.locator(".widget-dropdown", has=page.locator("label", has_text="class")).locator("select")
            before = classes.input_value()
            classes.select_option(index=1)
            assert classes.input_value() != before
            wait_for_new_pixels(page, second, MOVE_S)
            page.screenshot(path=str(OUTPUT / "app_class.png"))
        except Exception:
            page.screenshot(path=str(OUTPUT / "app_failure.png"))
            raise
        finally:
            browser.close()
    assert blocked == [], f"the app asked for resources outside the server: {blocked}"
