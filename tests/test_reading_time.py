"""tools/reading_time.py runs and gives every notebook a positive estimate, with its model stated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import reading_time  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def test_every_notebook_gets_a_positive_estimate() -> None:
    for nb in NOTEBOOKS:
        e = reading_time.estimate(nb, reading_time.RUN_TIMES_S)
        assert e.words > 0 and e.run_s > 0, nb.name
        assert 0 < e.core_min <= e.total_min, (nb.name, e)
        assert e.total_min == e.core_min + reading_time.EXERCISE_MIN * e.exercises


def test_the_model_on_a_tiny_notebook(tmp_path: Path) -> None:
    import json

    cells = [
        {"cell_type": "markdown", "source": ["# 99 · t\n", "word " * 200]},
        {"cell_type": "code", "source": ["import camlib  # setup: not counted\n"]},
        {"cell_type": "code", "source": ["a = 1\n", "\n", "# a comment\n", "b = 2\n", "c = 3\n", "d = 4\n"]},
        {"cell_type": "markdown", "source": ["## Exercises\n", "\n", "**1.** Do it.\n"]},
        {"cell_type": "code", "source": ["x = None  # your code here\n"]},
        {
            "cell_type": "markdown",
            "source": ["<details><summary>Solution</summary>\n", "many words here\n", "</details>\n"],
        },
        {"cell_type": "markdown", "source": ["## Questionnaire\n", "\n", "1. Why?\n", "2. How?\n", "## References\n"]},
    ]
    path = tmp_path / "99_tiny.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    e = reading_time.estimate(path, {"99": 60})
    assert (e.code_lines, e.exercises, e.questions, e.run_s) == (4, 1, 2, 60)
    assert e.words == 4 + 200 + 2 + 3 + 8  # headings, prose, the exercise and the questions; not the solution
    # prose at 200 words/min; 4 code lines: 1 min; 2 questions: 2 min; run: 1 min; one exercise: 10 min
    assert abs(e.core_min - (e.words / 200 + 1 + 2 + 1)) < 1e-9
    assert abs(e.total_min - e.core_min - 10) < 1e-9


def test_the_script_prints_a_table_that_says_it_is_an_estimate() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "reading_time.py"), "--markdown"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ESTIMATES, not timed learners")
    for nb in NOTEBOOKS:
        assert f"| {nb.stem} |" in done.stdout


def _estimates() -> dict[str, reading_time.Estimate]:
    return {nb.name[:2]: reading_time.estimate(nb, reading_time.RUN_TIMES_S) for nb in NOTEBOOKS}


def test_the_instructors_tables_quote_the_tool() -> None:
    """docs/instructors/index.md and plans.md give each notebook's run time and estimates as the tool
    computes them (after a change to a notebook or a new timing, paste the tool's numbers there)."""
    import re

    est = _estimates()
    docs = ROOT / "docs" / "instructors"
    row = r"^\| (\d\d) \|.*\| (\d+) s \| (\d+)(?: / (\d+))? min \|$"
    index = re.findall(row, (docs / "index.md").read_text(), re.M)
    plans = (docs / "plans.md").read_text()
    table = re.findall(r"^\| (\d\d) [^|]+\| (\d+) s \| (\d+) min \| (\d+) min \|$", plans, re.M)
    assert sorted(n for n, *_ in index) == sorted(est), "index.md: one row per notebook"
    assert sorted(n for n, *_ in table) == sorted(est), "plans.md: one row per notebook"
    for n, run, core, total in index + table:
        e = est[n]
        want = (f"{e.run_s:.0f}", f"{e.core_min:.0f}", f"{e.total_min:.0f}")
        assert (run, core, total or core) == want, f"notebook {n}: docs say {run} s, {core}/{total} min; tool {want}"
    for n, core in re.findall(r"\b(\d\d) \((\d+) min\)", plans):  # the plans' slots: core estimates
        assert core == f"{est[n].core_min:.0f}", f"plans.md: {n} ({core} min), the tool says {est[n].core_min:.0f}"
