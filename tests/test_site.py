"""The course website: built offline by mkdocs, then read in a real browser with the network cut off.

``mkdocs build --strict`` builds the site from ``mkdocs.yml`` into a temporary folder (the
notebooks in ``notebooks/`` at test time, with their committed outputs; the API reference from
camlib's docstrings). A local HTTP server on 127.0.0.1 serves it; Debian's Chromium, driven by
Playwright, opens a notebook page and the API page. Every request that would leave 127.0.0.1
is blocked and recorded, and the test fails if a page asked for any that it needs: figures
(``<img>`` with a nonzero natural size) and formulas (typeset by MathJax from ``site/assets``,
no raw TeX left, no MathJax error) must come from the site itself.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, OUTPUT

ROOT = Path(__file__).resolve().parent.parent
BUILD_S = 900
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
# Links that are meant to point outside (a reader online follows them); never needed to render a page.
EXTERNAL_OK = ("https://colab.research.google.com/assets/colab-badge.svg",)

WAIT_FOR_MATHJAX = """() => new Promise((resolve, reject) => {
    const start = Date.now();
    (function poll() {
        if (window.MathJax && window.MathJax.Hub && window.MathJax.Hub.Queue) {
            window.MathJax.Hub.Queue(() => resolve(true));
        } else if (Date.now() - start > 60000) {
            reject(new Error("MathJax did not load"));
        } else {
            setTimeout(poll, 100);
        }
    })();
})"""

MATH_REPORT = """() => {
    const frames = [...document.querySelectorAll('.MathJax, .MathJax_Display, .MathJax_SVG, .MathJax_CHTML')];
    const visible = frames.filter(e => e.getBoundingClientRect().width > 0).length;
    const scripts = document.querySelectorAll('script[type^="math/tex"]').length;
    const errors = document.querySelectorAll('.MathJax_Error, merror, .mjx-merror').length;
    const text = document.querySelector('article, .md-content').innerText;
    return {frames: frames.length, visible, scripts, errors, rawTex: /\\\\(frac|sum|alpha)\\b/.test(text)};
}"""

FIGURES = """() => [...document.querySelectorAll('.md-content img')]
    .filter(i => !i.src.startsWith('https://colab.research.google.com/'))
    .map(i => ({src: i.src.slice(0, 40), w: i.naturalWidth, h: i.naturalHeight, done: i.complete}))"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_offline(browser, base: str, path: str, shot: str):
    """Open ``base + path`` with every request outside ``base`` blocked; returns (page, blocked URLs)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    blocked: list[str] = []

    def route(r) -> None:
        url = r.request.url
        if url.startswith(base) or url.startswith("data:"):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    page.route("**/*", route)
    page.goto(base + path, wait_until="load", timeout=120_000)
    page.evaluate(WAIT_FOR_MATHJAX)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / shot))
    return page, blocked


def test_site_has_every_notebook_and_the_api(site: Path) -> None:
    for nb in NOTEBOOKS:
        assert (site / "notebooks" / nb.stem / "index.html").is_file(), nb.name
    api = (site / "api" / "index.html").read_text()
    for module in ("camlib.methods", "camlib.viz", "camlib.cli", "camlib.exercises"):
        assert f'id="{module}"' in api, module
    assert (site / "assets" / "mathjax" / "MathJax.js").is_file()


def test_notebook_page_renders_figures_and_formulas_offline(browser, server: str) -> None:
    first = NOTEBOOKS[0].stem
    page, blocked = open_offline(browser, server, f"/notebooks/{first}/", "site_notebook.png")
    try:
        figures = page.evaluate(FIGURES)
        data_figs = [f for f in figures if f["src"].startswith("data:image/")]
        assert data_figs, f"no figures on the page: {figures}"
        assert all(f["done"] and f["w"] > 0 and f["h"] > 0 for f in figures), figures
        math = page.evaluate(MATH_REPORT)
        assert math["frames"] >= 5 and math["visible"] >= 5, math
        assert math["errors"] == 0 and not math["rawTex"], math
        assert [u for u in blocked if not u.startswith(EXTERNAL_OK)] == [], blocked
    finally:
        page.close()


def test_api_page_renders_docstring_formulas_offline(browser, server: str) -> None:
    page, blocked = open_offline(browser, server, "/api/", "site_api.png")
    try:
        assert page.locator("h2#camlib\\.methods").count() == 1
        math = page.evaluate(MATH_REPORT)
        # Every formula of every docstring was typeset: one rendered frame per TeX script.
        assert math["scripts"] >= 10 and math["visible"] >= math["scripts"], math
        assert math["errors"] == 0 and not math["rawTex"], math
        gradcam = page.locator("[id='camlib.methods.gradcam']").locator("xpath=..")
        assert gradcam.count() == 1
        assert blocked == [], blocked
    finally:
        page.close()
