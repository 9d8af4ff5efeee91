"""MNIST-1D (Greydanus, 2020): 10 classes of 40-sample 1-D signals, generated locally by the `mnist1d` package.

A CPU-friendly benchmark that still separates good from bad models. The data are *generated* with
`mnist1d.data.make_dataset` (no download, no cache file); install the generator with `pip install mnist1d`.
Pair it with `autoprune.tasks.zoo.cnn1d` (inputs are [1, 40]).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from autoprune.errors import ConfigError
from autoprune.tasks.data import DataSplits, Preprocessing, stratified_splits


def _generate(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ConfigError("the MNIST-1D task needs the mnist1d package: pip install mnist1d") from None
    args = get_dataset_args()  # the paper's settings (template_len 12, final_seq_length 40, noise, shear ...)
    args.num_samples, args.seed, args.train_split = num_samples, seed, 1.0  # we split ourselves
    # make_dataset seeds numpy's and Python's global RNGs: restore them so loading data has no side effects.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        dataset = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return dataset["x"], dataset["y"]


def load(num_samples: int = 4000, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> DataSplits:
    """Fixed stratified train/val/test splits of `num_samples` generated signals (rounded down to a multiple
    of 10: the generator makes the same number per class). Items are (float32 [1, 40], label in 0..9);
    the generator standardises the whole set to mean 0, std 1. Same arguments, same data."""
    if num_samples < 50:
        raise ConfigError(f"task.data.num_samples={num_samples} is too small for stratified splits: use at least 50")
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ConfigError(f"task.data.val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                          "with a sum below 1: use e.g. 0.2 and 0.2")
    xs, ys = _generate(int(num_samples), int(seed))
    x = torch.tensor(xs, dtype=torch.float32).unsqueeze(1)  # [N, 1, 40]
    y = torch.tensor(ys, dtype=torch.long)                  # [N]
    raw = Preprocessing("MNIST-1D signals as mnist1d.data.make_dataset returns them (already standardised): "
                        "float32 [N, 1, 40]")
    return stratified_splits(x, y, val_fraction, test_fraction, seed, raw)
