"""Train notebook 12's two nets and write their weights into data/ (shortcut_biased.pt, shortcut_fixed.pt).

    python tools/train_shortcut.py

One CPU thread, as the shipped weights were made (another thread count rounds differently and lands
on slightly different weights). Prints each run's last epoch and wall time, the total, and the load
average the machine had (other jobs on a shared machine slow a run down). The recipes
(``camlib.shortcut.RECIPES``) are sized to take under two minutes together on one thread.
"""

from __future__ import annotations

import os
import time

import torch

from camlib import shortcut, smallnet

if __name__ == "__main__":
    torch.set_num_threads(1)
    start = time.perf_counter()
    for name in shortcut.RECIPES:
        t0 = time.perf_counter()
        run = shortcut.train(name, device="cpu", progress=False)
        path = smallnet.save_run(run, name)
        print(f"{name}: {run.history[-1]} in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"both nets: {time.perf_counter() - start:.0f} s on one thread (load average {load}, {os.cpu_count()} cores)")
