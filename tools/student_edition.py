"""Build the student edition: the course's notebooks without their solutions.

    python tools/student_edition.py                      # notebooks/[0-9]*.ipynb -> build/student/
    python tools/student_edition.py notebooks/02_manual_cam.ipynb --out /tmp/student

The convention (docs/instructors/exercises.md), applied to every notebook it is given:

- In markdown cells, each ``<details>`` block whose ``<summary>`` says "Solution" (any case) is
  cut out, from ``<details>`` to its ``</details>``; the text around it stays (the next exercise
  often follows in the same cell). A cell left empty is dropped. Other ``<details>`` blocks (a
  hint, say) are kept.
- Code cells tagged ``solution`` (cell metadata ``tags``), or whose first line is ``# SOLUTION``,
  are dropped.
- Everything else is kept as it is: the stub cells (``answer = None  # your code here``) and the
  check cells, which must print "not done yet" for an unsolved stub rather than raise
  (:func:`camlib.exercises.check` does that).
- Outputs and execution counts are cleared: the check cells' outputs would give the answers
  away, and learners run the notebooks themselves. Widget state metadata is dropped.

The tool refuses (exit status 1, nothing written for that notebook) when a solution block is
not closed, when "SOLUTION" tags a markdown cell, or when anything that looks like a solution
survives the cut. Files outside ``--out`` are never written; the course's notebooks are read only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_TAG = "solution"
SOLUTION_MARK = re.compile(r"^\s*#\s*SOLUTION\b")
DETAILS_OPEN = re.compile(r"<details\b[^>]*>", re.IGNORECASE)
DETAILS_CLOSE = re.compile(r"</details\s*>", re.IGNORECASE)
SUMMARY = re.compile(r"\s*<summary\b[^>]*>(.*?)</summary\s*>", re.IGNORECASE | re.DOTALL)
SOLUTION_SUMMARY = re.compile(r"<summary\b[^>]*>[^<]*solution", re.IGNORECASE)
# A stub line: an assignment marked "# your code here" whose right side holds a placeholder, None or ...
# ("my_tiger = None  # your code here"; "my_image, my_size = None, 448  # your code here: ..." keeps a default).
STUB = re.compile(
    r"^(?P<lhs>[^=#\n]*=)(?P<rhs>[^#\n]*(?:\bNone\b|\.\.\.)[^#\n]*)(?P<mark>#\s*your code here.*)$",
    re.IGNORECASE | re.MULTILINE,
)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


class ConventionError(ValueError):
    """A notebook that does not follow the exercise convention closely enough to strip it safely."""


@dataclass
class Stripped:
    notebook: dict
    details_removed: int = 0
    cells_removed: int = 0


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _blocks(text: str, where: str = "") -> Iterator[tuple[int, int, bool]]:
    """``(start, end, is_solution)`` of each outermost ``<details>`` block of ``text``, in order.

    Raises:
        ConventionError: a ``<details>`` without its ``</details>``.
    """
    pos = 0
    while (m := DETAILS_OPEN.search(text, pos)) is not None:
        depth, scan, end = 1, m.end(), m.end()
        while depth:
            o, c = DETAILS_OPEN.search(text, scan), DETAILS_CLOSE.search(text, scan)
            if c is None:
                raise ConventionError(f"{where}: <details> at offset {m.start()} is never closed with </details>")
            if o is not None and o.start() < c.start():
                depth, scan = depth + 1, o.end()
            else:
                depth, scan, end = depth - 1, c.end(), c.end()
        summary = SUMMARY.match(text, m.end())
        yield m.start(), end, bool(summary and "solution" in summary.group(1).lower())
        pos = end


def strip_details(text: str, where: str = "") -> tuple[str, int]:
    """``text`` without its ``<details>`` blocks whose summary says "Solution"; returns ``(text, count)``.

    Blocks may nest (a hint inside a solution); a solution block is cut with everything inside.

    Raises:
        ConventionError: a ``<details>`` without its ``</details>``.
    """
    out, pos, removed = [], 0, 0
    for start, end, solution in _blocks(text, where):
        if solution:
            out.append(text[pos:start])
            removed += 1
            # Swallow the line break after the block, so no blank line piles up where it was.
            pos = end + (1 if text[end : end + 1] == "\n" else 0)
    out.append(text[pos:])
    return "".join(out), removed


def is_solution_cell(cell: dict) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    first = _source(cell).lstrip("\n").split("\n", 1)[0]
    return SOLUTION_TAG in tags or bool(SOLUTION_MARK.match(first))


def student_notebook(nb: dict, where: str = "") -> Stripped:
    """The student edition of one notebook (a new dict; ``nb`` is not changed)."""
    nb = json.loads(json.dumps(nb))
    result = Stripped(nb)
    cells = []
    for i, cell in enumerate(nb["cells"]):
        here = f"{where} cell {i}"
        if is_solution_cell(cell):
            if cell["cell_type"] != "code":
                raise ConventionError(f"{here}: only code cells can be solution cells; use <details> in markdown")
            result.cells_removed += 1
            continue
        if cell["cell_type"] == "markdown":
            text, n = strip_details(_source(cell), here)
            result.details_removed += n
            if n and not text.strip():
                result.cells_removed += 1
                continue
            cell["source"] = _lines(text.lstrip("\n") if n else text)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
        cells.append(cell)
    nb["cells"] = cells
    nb.get("metadata", {}).pop("widgets", None)
    # An independent second look, by a plain search: no solution summary may be left anywhere.
    leftovers = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and SOLUTION_SUMMARY.search(_source(c))]
    if leftovers:
        raise ConventionError(f"{where}: solution blocks survived in cells {leftovers}")
    return result


def solution_code(text: str, where: str = "") -> list[str]:
    """The Python code of each ``<details>`` solution block in ``text``: its fenced ``python`` blocks, joined."""
    codes = ["\n".join(PYTHON_BLOCK.findall(text[a:b])) for a, b, solution in _blocks(text, where) if solution]
    return [code for code in codes if code.strip()]


def solved_notebook(nb: dict, where: str = "") -> tuple[dict, int]:
    """The course notebook with each markdown solution's code run as a cell right after its stub (the
    last stub cell before the solution block), outputs cleared: run top to bottom, every check should
    then say "correct". Returns ``(notebook, number of solutions inserted)``; ``nb`` is not changed.

    Raises:
        ConventionError: a solution block with no stub cell before it (since the last solution).
    """
    nb = json.loads(json.dumps(nb))
    cells: list[dict] = []
    stub, inserted = None, 0
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
        if cell["cell_type"] == "code" and STUB.search(_source(cell)):
            stub = len(cells) - 1
        if cell["cell_type"] != "markdown":
            continue
        for code in solution_code(_source(cell), f"{where} cell {i}"):
            if stub is None:
                raise ConventionError(f"{where} cell {i}: a solution with no stub cell before it")
            inserted += 1
            solution = {"cell_type": "code", "id": f"solution-{inserted}", "metadata": {}, "source": _lines(code)}
            cells.insert(stub + 1, {**solution, "outputs": [], "execution_count": None})
            stub = None
    nb["cells"] = cells
    nb.get("metadata", {}).pop("widgets", None)
    return nb, inserted


def build(notebooks: list[Path], out: Path) -> list[tuple[Path, Stripped]]:
    """Write the student edition of each notebook into ``out``; returns what was removed from each."""
    out = out.resolve()
    done = []
    for path in notebooks:
        if path.resolve().parent == out:
            raise ConventionError(f"{path} is inside the output folder {out}; refusing to overwrite a source")
        nb = json.loads(path.read_text(encoding="utf-8"))
        done.append((path, student_notebook(nb, str(path))))
    out.mkdir(parents=True, exist_ok=True)
    for path, result in done:
        target = out / path.name
        target.write_text(json.dumps(result.notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9]*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "student", help="default: build/student/")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    try:
        done = build(notebooks, args.out)
    except (ConventionError, OSError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path, result in done:
        print(f"{path.name}: {result.details_removed} solution block(s), {result.cells_removed} cell(s) removed")
    print(f"student edition of {len(done)} notebook(s) in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
