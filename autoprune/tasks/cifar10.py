"""CIFAR-10 from the standard local python-pickle batches (cifar-10-python.tar.gz, extracted). Never downloads.

Expected files, in `root` or in `root/cifar-10-batches-py`: data_batch_1 ... data_batch_5 and test_batch.
Each is a pickled dict with b"data" (uint8 [10000, 3072]: 1024 red, 1024 green, 1024 blue values, each a
row-major 32x32 plane) and b"labels" (10000 ints in 0..9). They are read with a restricted unpickler
that builds only plain containers and numpy arrays: a crafted file cannot run code (it is refused).

Memory: the full set as float32 is about 0.7 GB (60,000 x 3 x 32 x 32 x 4 bytes); `limit` caps it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import TensorDataset

from autoprune.errors import ConfigError
from autoprune.tasks.data import DataSplits, Preprocessing

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of the CIFAR-10 training set
STD = (0.2470, 0.2435, 0.2616)
HOW_TO_GET = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into "
              "<dir> (torchvision.datasets.CIFAR10('<dir>', download=True) does the same), then set "
              "task.data.root=<dir>/cifar-10-batches-py or CIFAR10_ROOT")


def find_batches(root: Union[str, Path]) -> Path:
    """The folder holding all six batch files: `root` itself or `root/cifar-10-batches-py`."""
    root = Path(root).expanduser()
    for folder in (root, root / "cifar-10-batches-py"):
        if all((folder / name).is_file() for name in (*TRAIN_FILES, TEST_FILE)):
            return folder
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (root / name).is_file()]
    which = "" if len(missing) == len(TRAIN_FILES) + 1 else f" (missing {', '.join(missing)})"
    raise ConfigError(f"CIFAR-10 python batches not found in {root}{which}: {HOW_TO_GET}")


class _BatchUnpickler(pickle.Unpickler):
    """Only what a CIFAR-10 batch holds: dicts, lists, bytes, numbers and numpy arrays. Any other global
    (os.system, builtins.eval, ...) is refused before it is looked up."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (not part of a CIFAR-10 batch)")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # truncated file, wrong format, missing keys
        reason = f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"{path} is not a CIFAR-10 python batch ({reason}): {HOW_TO_GET}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ConfigError(f"{path} holds data of shape {data.shape} with {len(labels)} labels, expected "
                          f"[N, 3072] with N labels: {HOW_TO_GET}")
    return data, labels


def _read(folder: Path, names: tuple[str, ...], limit: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate batches in order, stopping once `limit` images are read; normalised [N, 3, 32, 32]."""
    datas, labels, n = [], [], 0
    for name in names:
        data, label = _read_batch(folder / name)
        datas.append(data)
        labels.append(label)
        n += len(data)
        if limit is not None and n >= limit:
            break
    x = torch.from_numpy(np.concatenate(datas)[:limit]).view(-1, 3, 32, 32)  # uint8 [N, 3, 32, 32]
    y = torch.from_numpy(np.concatenate(labels)[:limit])
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float().div_(255.0) - mean).div_(std), y


def load(root: Union[str, Path], val_fraction: float = 0.1, seed: int = 0, limit: Optional[int] = None) -> DataSplits:
    """Train/val split of the five training batches (fixed by `seed`), test = test_batch.

    Images are float32 [3, 32, 32], normalised per channel with the training-set mean and std.
    `limit` keeps only the first `limit` training images (before the split) and the first `limit`
    test images, for quick runs. Raises ConfigError naming the folder when the files are missing."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"task.data.val_fraction={val_fraction} must be in (0, 1): use e.g. 0.1")
    if limit is not None and int(limit) < 2:
        raise ConfigError(f"task.data.limit={limit} must be at least 2 (or null for the full data set)")
    limit = None if limit is None else int(limit)
    folder = find_batches(root)
    x, y = _read(folder, TRAIN_FILES, limit)
    x_test, y_test = _read(folder, (TEST_FILE,), limit)
    n_val = min(len(y) - 1, max(1, round(len(y) * val_fraction)))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    raw = Preprocessing("RGB pixel values 0-255, channels first: [N, 3, 32, 32]", 255.0, MEAN, STD)
    return DataSplits(TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), TensorDataset(x_test, y_test),
                      raw)
