"""Point every "Open in Colab" badge and Colab clone URL at a fork.

    python tools/retarget.py owner/name [--branch main]      (or: make retarget REPO=owner/name BRANCH=main)

The current target is read from notebook 01's setup cell (``REPO, BRANCH, DIR = "...", "...", ...``);
every notebook's badge and setup cell and the README's links are rewritten in place, nothing else.
Run it again with the original values to undo it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP = re.compile(r'REPO, BRANCH, DIR = \\"([\w.-]+/[\w.-]+)\\", \\"([\w./-]+)\\"')


def current(root: Path) -> tuple[str, str]:
    """``(owner/name, branch)`` the course points at now."""
    match = SETUP.search((root / "notebooks" / "01_gap_math.ipynb").read_text())
    if not match:
        raise SystemExit("Cannot find the REPO, BRANCH line in notebooks/01_gap_math.ipynb's setup cell.")
    return match[1], match[2]


def retarget_text(text: str, old: tuple[str, str], new: tuple[str, str]) -> str:
    (repo, branch), (repo2, branch2) = old, new
    text = text.replace(
        f"colab.research.google.com/github/{repo}/blob/{branch}/",
        f"colab.research.google.com/github/{repo2}/blob/{branch2}/",
    )
    text = text.replace(
        f'REPO, BRANCH, DIR = \\"{repo}\\", \\"{branch}\\"', f'REPO, BRANCH, DIR = \\"{repo2}\\", \\"{branch2}\\"'
    )
    return re.sub(rf"github\.com/{re.escape(repo)}\b", f"github.com/{repo2}", text)


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="the fork, as owner/name")
    parser.add_argument("--branch", default="main", help="the branch Colab opens and clones (default: main)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo):
        parser.error(f"repo must look like owner/name, got {args.repo!r}")
    old, new = current(root), (args.repo, args.branch)
    files = [*sorted((root / "notebooks").glob("[0-9]*.ipynb")), root / "README.md"]
    changed = 0
    for path in files:
        text = path.read_text()
        out = retarget_text(text, old, new)
        if out != text:
            path.write_text(out)
            changed += 1
    print(f"{old[0]}@{old[1]} -> {new[0]}@{new[1]}: {changed} files changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
