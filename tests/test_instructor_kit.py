"""The instructor's kit keeps up with the notebooks: every questionnaire has its expected answers.

Each notebook's questionnaire is a markdown heading "Questionnaire" or "Questions" followed by a numbered
list. ``docs/instructors/answers.md`` has one section per notebook, headed ``## NN · title``, with a
numbered list of the same length. A question added to a notebook without an answer fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
ANSWERS = ROOT / "docs" / "instructors" / "answers.md"
HEADING = re.compile(r"^#{1,6}\s")
QUESTIONS = re.compile(r"^#{1,6}\s+(Questionnaire|Questions)\b", re.IGNORECASE)
ITEM = re.compile(r"^(\d+)\.\s")  # a top-level numbered item (no indentation)


def numbered_items(lines: list[str]) -> list[int]:
    """The numbers of the top-level numbered items in ``lines``, up to the next heading."""
    found = []
    for line in lines:
        if HEADING.match(line):
            break
        if m := ITEM.match(line):
            found.append(int(m.group(1)))
    return found


def questions(notebook: Path) -> list[int] | None:
    """The question numbers of a notebook's questionnaire, or None if it has none."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        lines = "".join(cell["source"]).splitlines()
        for i, line in enumerate(lines):
            if QUESTIONS.match(line):
                return numbered_items(lines[i + 1 :])
    return None


def answer_sections() -> dict[str, list[int]]:
    """``{"01": [1, 2, ...], ...}`` from the ``## NN · title`` sections of answers.md."""
    lines = ANSWERS.read_text().splitlines()
    sections = {}
    for i, line in enumerate(lines):
        if m := re.match(r"^##\s+(\d\d)\b", line):
            sections[m.group(1)] = numbered_items(lines[i + 1 :])
    return sections


def test_parser_on_a_small_example() -> None:
    assert numbered_items(["1. a", "   more of a", "2. b", "  3. nested", "", "## next", "4. c"]) == [1, 2]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_question_has_an_answer(notebook: Path) -> None:
    asked = questions(notebook)
    if asked is None:
        pytest.skip(f"{notebook.name} has no questionnaire")
    assert asked == list(range(1, len(asked) + 1)), f"{notebook.name}: questions numbered {asked}"
    number = notebook.name[:2]
    answers = answer_sections()
    assert number in answers, f"{ANSWERS.name} has no section '## {number} · ...' for {notebook.name}"
    assert answers[number] == asked, (
        f"{notebook.name} asks {len(asked)} questions, {ANSWERS.name} answers {len(answers[number])}"
    )


def test_no_answers_without_a_questionnaire() -> None:
    by_number = {nb.name[:2]: nb for nb in NOTEBOOKS}
    for number in answer_sections():
        assert number in by_number, f"answers for notebook {number}, which does not exist"
        assert questions(by_number[number]) is not None, f"answers for {number}, which has no questionnaire"


def test_the_kit_links_the_answers() -> None:
    assert "(answers.md)" in (ROOT / "docs" / "instructors" / "index.md").read_text()
