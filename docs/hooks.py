"""mkdocs hooks for the course site (mkdocs.yml ``hooks:``).

- ``api.md``: the line ``<!-- camlib modules -->`` becomes one ``::: camlib.<module>`` block per
  module that exists in camlib/ at build time (a module added later is documented without edits).
- After the build, MathJax 2.7 (the PyPI package jupyter-server-mathjax) is copied into
  ``site/assets/mathjax`` so formulas render without a network.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"__init__", "__main__"}


def camlib_modules() -> list[str]:
    pkg = ROOT / "camlib"
    names = sorted(p.stem for p in pkg.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_"))
    names += sorted(f"{p.name}" for p in pkg.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_"))
    return names


def on_page_markdown(markdown: str, page: Any, **_kw: Any) -> str:
    if page.file.src_uri != "api.md":
        return markdown
    blocks = "\n\n".join(f"::: camlib.{name}" for name in camlib_modules())
    return markdown.replace("<!-- camlib modules -->", blocks)


def on_post_build(config: Any, **_kw: Any) -> None:
    try:
        import jupyter_server_mathjax
    except ModuleNotFoundError as err:
        raise RuntimeError(
            "The site needs MathJax from the package jupyter-server-mathjax (pip install -e '.[site]')."
        ) from err
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dst = Path(config["site_dir"]) / "assets" / "mathjax"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
