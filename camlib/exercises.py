r"""Exercise checks that fail politely: a hint instead of a traceback.

The course's exercise convention (``docs/instructors/exercises.md``; the student edition is built by
``tools/student_edition.py``):

- a **stub cell** sets the answer to ``None``: ``my_tiger = None  # your code here``;
- a **check cell** calls :func:`check` (or prints "not done yet" itself when the answer is ``None``);
  it must never raise, so the student edition runs top to bottom with every stub unsolved;
- **solutions** are a markdown block ``<details><summary>Solution</summary> ... </details>`` and/or
  a code cell tagged ``solution`` (or whose first line is ``# SOLUTION``); both are removed from the
  student edition. A solution code cell runs in the course's own notebooks, so nbval proves that
  the solution passes its check.

>>> check("Exercise 1", None, lambda v: v == 4, hint="2 + 2")
Exercise 1: not done yet. Hint: 2 + 2
>>> check("Exercise 1", 5, lambda v: v == 4, hint="2 + 2")
Exercise 1: not right yet. Hint: 2 + 2
>>> def test(v):
...     assert v == 4, "add the two numbers"
...     return f"{v} it is"
>>> check("Exercise 1", 4, test)
Exercise 1: correct (4 it is)

It returns nothing: the printed line is the verdict (a notebook's check cell then shows that line
alone, not a stray ``True``/``False`` under it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["check", "unsolved"]


def unsolved(answer: Any) -> bool:
    """True for a stub's placeholder: ``None`` or ``...`` (also inside a tuple, ``(None, None)``)."""
    if answer is None or answer is Ellipsis:
        return True
    return isinstance(answer, tuple) and len(answer) > 0 and all(a is None or a is Ellipsis for a in answer)


def check(name: str, answer: Any, test: Callable[[Any], Any], hint: str = "") -> None:
    """Run ``test(answer)`` and print one line about it. Never raises; returns nothing.

    - ``answer`` still a placeholder (:func:`unsolved`): "*name*: not done yet", with the hint.
    - ``test`` raises ``AssertionError``: "not right yet" with the assertion's message and the hint.
    - ``test`` raises anything else (the answer has the wrong type or shape, say): "your answer
      raised *Error*: *message*" with the hint, never a traceback.
    - ``test`` returns ``False``: "not right yet"; a string: "correct (*string*)"; anything else: "correct".
    """
    tail = f" Hint: {hint}" if hint else ""
    if unsolved(answer):
        print(f"{name}: not done yet.{tail}")
        return
    try:
        result = test(answer)
    except AssertionError as err:
        first = str(err).strip().split("\n")[0].rstrip(".")  # the message, without pytest's rewritten comparison
        why = f": {first}." if first else "."
        print(f"{name}: not right yet{why}{tail}")
        return
    except Exception as err:  # a wrong type, shape or device in the answer: explain, don't crash
        print(f"{name}: your answer raised {type(err).__name__}: {str(err).rstrip('.')}.{tail}")
        return
    if result is False:
        print(f"{name}: not right yet.{tail}")
        return
    print(f"{name}: correct ({result})" if isinstance(result, str) and result else f"{name}: correct")
