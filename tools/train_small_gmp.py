"""Train the shipped SmallGmpNet (data/small_gmp_shapes*.{pt,json}): notebook 08's recipe, global max pooling.

Same data (4000 shapes, seed 1; scored on 500, seed 2), epochs, optimiser and seed as small_gap_shapes, on the
CPU with one thread (as the GAP net was trained). Run: PYTHONPATH=. python tools/train_small_gmp.py
"""

import torch

from camlib import smallnet, synthetic
from camlib.gmpnet import SmallGmpNet, class_maps

if __name__ == "__main__":
    torch.set_num_threads(1)
    train_x, train_y, _ = synthetic.shapes(4000, seed=1)
    test = synthetic.shapes(500, seed=2)
    run = smallnet.train_run(
        SmallGmpNet(seed=0),
        train_x,
        train_y,
        eval_data=test,
        explain=class_maps,
        epochs=10,
        device="cpu",
        progress=False,
    )
    print(smallnet.save_run(run, "small_gmp_shapes"), run.history[-1])
