"""CIFAR-10 (tiny batch files in the real pickle format) and MNIST-1D loaders, and their task configs."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from autoprune.errors import ConfigError
from autoprune.resources import resource_dir
from autoprune.tasks import build_task, cifar10, mnist1d_data

PER_BATCH, N_TEST = 4, 6  # 5 training batches of 4 images, a test batch of 6


def _write_batch(path, first_index: int, n: int) -> None:
    """A batch as the official archive stores it; pixel 0 of image i holds its global index i."""
    rng = np.random.default_rng(first_index)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(first_index, first_index + n)
    labels = [(first_index + i) % 10 for i in range(n)]
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"labels": labels, b"data": data, b"filenames": [b"x"] * n}, f)


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(5):
        _write_batch(folder / f"data_batch_{i + 1}", i * PER_BATCH, PER_BATCH)
    _write_batch(folder / "test_batch", 100, N_TEST)
    return tmp_path


def _indices(dataset) -> list[int]:
    """Recover each image's global index from its first (normalised) red pixel."""
    x = dataset.tensors[0][:, 0, 0, 0]
    return sorted(round(float(v)) for v in (x * cifar10.STD[0] + cifar10.MEAN[0]) * 255)


def test_cifar_loads_normalised_images_and_a_fixed_split(cifar_root):
    splits = cifar10.load(cifar_root, val_fraction=0.25, seed=0)  # finds root/cifar-10-batches-py
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, N_TEST)
    assert splits.example_batch(1).shape == (1, 3, 32, 32) and splits.train[0][0].dtype == torch.float32
    assert sorted(_indices(splits.train) + _indices(splits.val)) == list(range(20))  # a partition of all 20
    assert _indices(splits.test) == list(range(100, 106))
    # exact normalisation of one pixel: green channel, row 2, column 5 of the first test image
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    expected = (raw[b"data"][0, 1024 + 2 * 32 + 5] / 255.0 - cifar10.MEAN[1]) / cifar10.STD[1]
    assert splits.test[0][0][1, 2, 5].item() == pytest.approx(expected, abs=1e-5)
    assert [int(splits.test[i][1]) for i in range(N_TEST)] == raw[b"labels"]
    # the recorded preprocessing (what `pick` registers) turns the raw uint8 images into exactly the inputs
    raw_test = np.asarray(raw[b"data"], np.uint8).reshape(-1, 3, 32, 32)[:N_TEST]
    np.testing.assert_allclose(splits.preprocessing.apply(raw_test), splits.test.tensors[0].numpy(), atol=1e-5)
    x, y = splits.train.tensors
    index = (x[:, 0, 0, 0] * cifar10.STD[0] + cifar10.MEAN[0]) * 255
    assert torch.equal(y, torch.tensor([round(float(v)) % 10 for v in index]))  # labels follow their images

    again = cifar10.load(cifar_root / "cifar-10-batches-py", val_fraction=0.25, seed=0)  # the folder itself
    assert _indices(again.val) == _indices(splits.val)
    assert torch.equal(again.train.tensors[0], splits.train.tensors[0])
    other = [_indices(cifar10.load(cifar_root, val_fraction=0.25, seed=s).val) for s in (1, 2, 3)]
    assert any(v != _indices(splits.val) for v in other)


def test_cifar_limit_reads_only_the_first_images(cifar_root):
    splits = cifar10.load(cifar_root, val_fraction=0.3, limit=7)
    assert sorted(_indices(splits.train) + _indices(splits.val)) == list(range(7))
    assert len(splits.val) == 2 and len(splits.test) == N_TEST  # round(7 * 0.3); the test batch has only 6


def test_cifar_missing_files_name_the_folder_and_the_fix(tmp_path, cifar_root):
    empty = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="cifar-10-python.tar.gz") as info:
        cifar10.load(empty)
    message = str(info.value)
    assert str(empty) in message and "task.data.root=" in message and "\n" not in message
    (cifar_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="data_batch_3"):
        cifar10.load(cifar_root / "cifar-10-batches-py")


def test_cifar_rejects_corrupt_files_and_bad_arguments(cifar_root):
    (cifar_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="test_batch is not a CIFAR-10 python batch"):
        cifar10.load(cifar_root)
    with pytest.raises(ConfigError, match="val_fraction"):
        cifar10.load(cifar_root, val_fraction=1.0)


def test_mnist1d_splits_are_deterministic_and_stratified():
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    a = mnist1d_data.load(num_samples=500, seed=0)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before  # no side effects
    assert (len(a.train), len(a.val), len(a.test)) == (300, 100, 100)
    assert a.example_batch(1).shape == (1, 1, 40) and a.train[0][0].dtype == torch.float32
    assert torch.bincount(a.test.tensors[1], minlength=10).tolist() == [10] * 10
    b = mnist1d_data.load(num_samples=500, seed=0)
    for split in ("train", "val", "test"):
        assert all(torch.equal(s, t) for s, t in zip(getattr(a, split).tensors, getattr(b, split).tensors))
    c = mnist1d_data.load(num_samples=500, seed=1)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    with pytest.raises(ConfigError, match="test_fraction"):
        mnist1d_data.load(num_samples=500, val_fraction=0.5, test_fraction=0.5)


def _task(*overrides):
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        return build_task(compose("config", overrides=list(overrides)).task)


@pytest.mark.parametrize("name", ["cifar10-resnet18", "cifar10-vgg11", "cifar10-vgg16", "cifar10-mobilenetv2"])
def test_cifar_task_configs_build_from_CIFAR10_ROOT(name, cifar_root, monkeypatch):
    monkeypatch.setenv("CIFAR10_ROOT", str(cifar_root / "cifar-10-batches-py"))
    task = _task(f"task={name}")
    assert task.name == name and task.checkpoint is None and task.train.epochs > 0
    assert len(task.data.train) + len(task.data.val) == 5 * PER_BATCH
    x, _ = task.data.test[0]
    assert task.make_model().eval()(x.unsqueeze(0)).shape == (1, 10)


def test_cifar_task_config_without_data_raises_the_loaders_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path / "absent"))
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=["task=cifar10-vgg11"])
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.task.data)
    assert isinstance(info.value.__cause__, ConfigError)
    assert f"not found in {tmp_path / 'absent'}:" in str(info.value.__cause__)


def test_mnist1d_task_config_builds():
    task = _task("task=mnist1d", "task.data.num_samples=200")
    assert task.name == "mnist1d" and task.data.example_batch(1).shape == (1, 1, 40)
    x, _ = task.data.train[0]
    assert task.make_model().eval()(x.unsqueeze(0)).shape == (1, 10)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))   # creating the marker file = code ran


def test_cifar_batch_with_a_payload_is_refused_not_executed(cifar_root, tmp_path):
    marker = tmp_path / "pwned"
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"labels": [0], b"data": _Payload(marker)}, f)
    with pytest.raises(ConfigError, match="refused global"):
        cifar10._read_batch(cifar_root / "cifar-10-batches-py" / "test_batch")
    assert not marker.exists()


def test_cifar_batch_of_the_official_protocol_2_layout_loads(tmp_path):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({b"labels": [1, 2], b"data": data}, f, protocol=2)
    got, labels = cifar10._read_batch(path)
    assert (got == data).all() and labels.tolist() == [1, 2]


def test_preprocessing_takes_mean_and_std_together():
    from autoprune.tasks.data import Preprocessing

    with pytest.raises(ConfigError, match="give mean and std together"):
        Preprocessing("pixels", 255.0, mean=(0.5,))
    with pytest.raises(ConfigError, match="one value per channel"):
        Preprocessing("pixels", 255.0, mean=(0.5, 0.5), std=(0.25,))
    prep = Preprocessing("pixels", 2.0, (0.5,), (0.25,))
    assert prep.apply(np.full((1, 1, 2), 2.0)).tolist() == [[[2.0, 2.0]]]
