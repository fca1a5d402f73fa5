"""tools/retarget.py rewrites every badge and clone URL to a fork, and back."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("retarget", ROOT / "tools" / "retarget.py")
retarget = importlib.util.module_from_spec(spec)
spec.loader.exec_module(retarget)


def copy_course(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def test_every_badge_and_setup_cell_points_at_the_fork_and_back(tmp_path: Path) -> None:
    root = copy_course(tmp_path)
    before = {p: p.read_text() for p in root.rglob("*") if p.suffix in (".ipynb", ".md")}
    old = retarget.current(root)
    assert retarget.main(["someone/my-cams", "--branch", "dev"], root=root) == 0
    assert retarget.current(root) == ("someone/my-cams", "dev")
    for path in sorted((root / "notebooks").glob("[0-9]*.ipynb")):
        nb = json.loads(path.read_text())  # still valid JSON
        badge, setup = "".join(nb["cells"][0]["source"]), "".join(nb["cells"][1]["source"])
        assert f"colab.research.google.com/github/someone/my-cams/blob/dev/notebooks/{path.name}" in badge
        assert 'REPO, BRANCH, DIR = "someone/my-cams", "dev"' in setup
        assert old[0] not in path.read_text()
    assert retarget.main([old[0], "--branch", old[1]], root=root) == 0
    assert {p: p.read_text() for p in before} == before


def test_a_malformed_repo_is_refused(tmp_path: Path, capsys) -> None:
    root = copy_course(tmp_path)
    with pytest.raises(SystemExit) as err:
        retarget.main(["not a repo"], root=root)
    assert err.value.code == 2
    assert "owner/name" in capsys.readouterr().err
