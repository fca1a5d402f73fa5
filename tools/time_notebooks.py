"""Measure how long each notebook takes to run top to bottom (one at a time, a fresh kernel each).

    python tools/time_notebooks.py [NOTEBOOKS...] [--json out.json]

Prints one line per notebook: wall seconds for the whole run, the slowest cell and its seconds,
the load average before and after, the machine (CPU model, cores) and the date. The notebooks are
read only (executed in memory). Used for the workshop plans in docs/instructors/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_one(path: Path, timeout: int) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    starts: dict[int, float] = {}
    cells: list[tuple[float, int]] = []

    def before(cell, cell_index, **_kw):
        starts[cell_index] = time.perf_counter()

    def after(cell, cell_index, **_kw):
        cells.append((time.perf_counter() - starts[cell_index], cell_index))

    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=before, on_cell_executed=after,
    )  # fmt: skip
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - t0
    slow_s, slow_i = max(cells) if cells else (0.0, -1)
    return {
        "notebook": path.name,
        "seconds": round(wall, 1),
        "slowest_cell": slow_i,
        "slowest_cell_seconds": round(slow_s, 1),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--timeout", type=int, default=1800, help="per cell, seconds")
    args = parser.parse_args()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    machine = f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"{datetime.date.today()} on {machine}", flush=True)
    rows = []
    for p in paths:
        row = time_one(p, args.timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(
                json.dumps({"machine": machine, "date": str(datetime.date.today()), "rows": rows}, indent=1)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
