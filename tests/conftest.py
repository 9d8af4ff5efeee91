"""Shared fixtures: the real Hydra config, composed once per test and shrunk for speed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from autoprune.resources import resource_dir
from autoprune.tasks.models import resnet_small

DATA = Path(__file__).parent / "data"

if os.environ.get("PYTEST_XDIST_WORKER"):   # `pytest -n`: the workers share the cores, one thread each (and the
    os.environ["OMP_NUM_THREADS"] = "1"      # processes they start); torch's own pool would oversubscribe them
    torch.set_num_threads(1)

# A tiny but real setup: ResNet (8/16/16 channels) on 16x16 digits, 2 baseline epochs, 1 fine-tune epoch,
# no pre-flight (seconds per context; tests/test_preflight.py covers it).
FAST = [
    f"hw={DATA / 'fast-cpu.yaml'}",
    "task.model.widths=[8,16,16]",
    "task.data.size=16",
    "task.train.epochs=2",
    "recover.epochs=1",
    "search.warm_start=[0.5]",
    "prune.preflight=false",   # its own tests (test_preflight.py, the bad-input catalogue) turn it on
]


def compose_config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        return compose("config", overrides=[
            *FAST,
            f"search.storage=sqlite:///{tmp_path / 'optuna.db'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"cache_dir={tmp_path / 'cache'}",
            *overrides,
        ])


@pytest.fixture(scope="session", autouse=True)
def measurement_lock_of_this_run(tmp_path_factory):
    """The machine-wide measurement lock (autoprune.hw.lock) in this run's temp root, shared by its xdist workers
    and the processes they start: a benchmark measuring on the same machine never holds a test up."""
    root = tmp_path_factory.getbasetemp()
    os.environ["AUTOPRUNE_LOCK_DIR"] = str(root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root)
    yield


@pytest.fixture(scope="session")
def forked_cli():
    """`python -m autoprune ...` as a fresh process per call, forked from one server that imported the
    libraries once (forked_cli.py); shared by the tests that run the CLI as a user does."""
    from forked_cli import ForkedCli

    server = ForkedCli()
    yield server
    server.close()


@pytest.fixture
def make_cfg(tmp_path):
    return lambda *overrides: compose_config(tmp_path, *overrides)


@pytest.fixture
def model():
    """The default task's ResNet (32/64/128), seeded, in eval mode."""
    torch.manual_seed(0)
    return resnet_small(widths=(32, 64, 128)).eval()


@pytest.fixture
def example():
    return torch.randn(1, 1, 32, 32)
