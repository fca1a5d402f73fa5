"""Check that the packages Python imports are the pinned ones: ``make colab-stack`` runs this before
its tests, so they cannot pass on the venv's own torch or ipywidgets by mistake (a PYTHONPATH that
did not take). It checks here and in a Python started in ``notebooks/``, where nbval starts its
kernels (a relative PYTHONPATH would not reach them).

    PYTHONPATH=.colab/site python tools/colab_stack.py torch==2.11.0 torchvision==0.26.0 ipywidgets==7.7.1
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

MODULES = {"ipython-genutils": "ipython_genutils"}  # pip names whose module is named otherwise


def mismatches(pins: list[str]) -> list[str]:
    """``name: imported X from PATH, pinned Y`` for each pin whose imported version differs (a local
    build tag such as ``+cu130`` is ignored)."""
    wrong = []
    for pin in pins:
        name, _, version = pin.partition("==")
        module = importlib.import_module(MODULES.get(name, name))
        found = str(getattr(module, "__version__", "?")).split("+")[0]
        print(f"{name} {found} ({module.__file__})")
        if found != version:
            wrong.append(f"{name}: imported {found} from {module.__file__}, pinned {version}")
    return wrong


if __name__ == "__main__":
    pins = [a for a in sys.argv[1:] if a != "--here"]
    problems = mismatches(pins)
    if "--here" not in sys.argv:  # the same check where the notebooks' kernels start
        where = Path(__file__).resolve().parents[1] / "notebooks"
        kernel = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--here", *pins], cwd=where)
        problems += [f"in a Python started in {where}: see above"] if kernel.returncode else []
    if problems:
        fix = "Put the absolute path of .colab/site on PYTHONPATH (make colab-stack does)."
        sys.exit("Not Colab's stack:\n  " + "\n  ".join(problems) + "\n" + fix)
