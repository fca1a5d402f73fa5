"""A griffe extension for the API reference: camlib's reST math in docstrings becomes MathJax.

camlib's docstrings write formulas as ``.. math:: ...`` blocks and ``:math:`...``` roles (what
Sphinx reads); mkdocstrings renders Markdown, so each block becomes ``$$ ... $$`` and each role
``$...$``, which pymdownx.arithmatex hands to MathJax; Sphinx cross-reference roles
(``:func:`camlib.cam```) become inline code. Nothing else in a docstring changes.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":math:`([^`]+)`")
XREF = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)\n(?P<body>(?:(?P=indent)[ \t]+.*\n|[ \t]*\n)*)", re.M
)


def convert(text: str) -> str:
    """``.. math::`` blocks to ``$$...$$``, ``:math:`x``` to ``$x$``, ``:func:`f``` and the like to code."""

    def block(m: re.Match) -> str:
        body = textwrap.dedent(m.group("body")).strip()
        formula = "\n".join(part for part in (m.group("first").strip(), body) if part)
        return f"{m.group('indent')}$$\n{formula}\n$$\n\n"

    text = ROLE.sub(lambda m: f"${m.group(1)}$", BLOCK.sub(block, text + "\n")).rstrip("\n")
    return XREF.sub(lambda m: f"`{m.group(1)}`", text)  # :func:`camlib.cam` -> `camlib.cam`


class MathDocstrings(griffe.Extension):
    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
