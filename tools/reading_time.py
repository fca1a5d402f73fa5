"""Estimate how long a learner spends on each notebook: reading, running, exercises, questions.

    python tools/reading_time.py [NOTEBOOKS...] [--run-times times.json] [--markdown]

Nobody was timed: this is an ESTIMATE from a stated, simple model, counted from the notebooks' text.

    minutes = prose words / 200          (reading speed for technical prose, words per minute)
            + code lines / 4             (read a line, run the cell, look at the output: 15 s a line)
            + 10 x exercises             (each "**N.**" exercise after the "Exercises" heading)
            + 1 x questions              (each numbered question of the questionnaire)
            + run time / 60              (waiting for "Run All" once: measured, see below)

Prose is every word of the markdown cells, the exercise statements included, except inside
``<details>`` blocks (solutions, hints: read only by those who open them). Code lines are the
non-blank, non-comment lines of the code cells *before* the exercises, without the setup cell (cell 1)
and hidden ``# SOLUTION`` cells: exercise cells are covered by the 10 minutes per exercise. Run times
are the measured "Run All" times of the README ("Run times on a CPU", ``tools/time_notebooks.py`` on
the 2-core build machine), or those of a ``time_notebooks.py --json`` file; a notebook without a
measured time gets 60 s and a "?".

Prints one row per notebook: the parts and two totals, "core" (reading, code, questions, run time:
what a session in a room needs) and "with exercises". ``--markdown`` prints the table as Markdown.
Real groups will differ (by how much, nobody has measured): plan with the core time, adjust after a dry run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORDS_PER_MIN = 200
CODE_LINES_PER_MIN = 4
EXERCISE_MIN = 10
QUESTION_MIN = 1
UNKNOWN_RUN_S = 60

# "Run All" seconds, measured with tools/time_notebooks.py on the 2-core build machine (README, "Run times
# on a CPU"): 2026-11-27, the fourteen notebooks one after another, load average 0.8-1.5; 07, 08, 09 and 12
# again after their widget cells were added (load 1.1-1.6); 08, 09, 11 and 12 on 2026-11-28 after their by-hand
# checks were added (load 1.2-1.4); 01 after its widget and check cell were added (load 0.7-1.0).
RUN_TIMES_S = {
    "00": 9, "01": 11, "02": 12, "03": 11, "04": 13, "05": 12, "06": 10, "07": 12, "08": 24,
    "09": 26, "10": 15, "11": 17, "12": 9, "13": 17,
}  # fmt: skip

DETAILS = re.compile(r"<details>.*?</details>", re.DOTALL)
EXERCISE = re.compile(r"^\*\*(\d+)\.", re.MULTILINE)
QUESTIONS = re.compile(r"^#{1,6}\s+(Questionnaire|Questions)\b", re.IGNORECASE)
HEADING = re.compile(r"^#{1,6}\s")
EXERCISES_HEADING = re.compile(r"^#{1,6}\s+Exercises\b", re.MULTILINE)


@dataclass
class Estimate:
    notebook: str
    words: int
    code_lines: int
    exercises: int
    questions: int
    run_s: float
    run_measured: bool

    @property
    def core_min(self) -> float:
        return (
            self.words / WORDS_PER_MIN
            + self.code_lines / CODE_LINES_PER_MIN
            + self.questions * QUESTION_MIN
            + self.run_s / 60
        )

    @property
    def total_min(self) -> float:
        return self.core_min + self.exercises * EXERCISE_MIN


def count_questions(text: str) -> int:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if QUESTIONS.match(line):
            n = 0
            for rest in lines[i + 1 :]:
                if HEADING.match(rest):
                    break
                n += bool(re.match(r"^\d+\.\s", rest))
            return n
    return 0


def estimate(path: Path, run_times: dict[str, float]) -> Estimate:
    cells = json.loads(path.read_text())["cells"]
    words = code_lines = exercises = questions = 0
    in_exercises = False
    for i, cell in enumerate(cells):
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            prose = DETAILS.sub(" ", src)
            words += len(re.findall(r"\S+", prose))
            exercises += len(EXERCISE.findall(prose)) if in_exercises or EXERCISES_HEADING.search(src) else 0
            questions += count_questions(src)
            in_exercises = in_exercises or bool(EXERCISES_HEADING.search(src))
        elif cell["cell_type"] == "code" and i > 1 and not in_exercises:
            if src.lstrip().startswith("# SOLUTION"):
                continue
            code_lines += sum(1 for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#"))
    key = path.name[:2]
    run_s = run_times.get(key, UNKNOWN_RUN_S)
    return Estimate(path.stem, words, code_lines, exercises, questions, run_s, key in run_times)


def load_run_times(json_path: Path | None) -> dict[str, float]:
    if json_path is None:
        return dict(RUN_TIMES_S)
    rows = json.loads(json_path.read_text())["rows"]
    return {r["notebook"][:2]: float(r["seconds"]) for r in rows}


def table(rows: list[Estimate], markdown: bool) -> str:
    head = ["notebook", "words", "code lines", "exercises", "questions", "run", "core", "with exercises"]
    body = [
        [
            r.notebook,
            str(r.words),
            str(r.code_lines),
            str(r.exercises),
            str(r.questions),
            f"{r.run_s:.0f} s" + ("" if r.run_measured else " ?"),
            f"{r.core_min:.0f} min",
            f"{r.total_min:.0f} min",
        ]
        for r in rows
    ]
    total = sum(r.core_min for r in rows), sum(r.total_min for r in rows)
    body.append(["all", "", "", "", "", "", f"{total[0] / 60:.1f} h", f"{total[1] / 60:.1f} h"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:{'<' if j == 0 else '>'}{w}}}" for j, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [head, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--run-times", type=Path, default=None, help="a tools/time_notebooks.py --json file")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    rows = [estimate(p, load_run_times(args.run_times)) for p in paths]
    print(
        f"ESTIMATES, not timed learners: prose at {WORDS_PER_MIN} words/min, code at {CODE_LINES_PER_MIN} lines/min, "
        f"{EXERCISE_MIN} min per exercise, {QUESTION_MIN} min per question, plus the measured run time."
    )
    print(table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
