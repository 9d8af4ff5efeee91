"""The machine-wide locks: a measurement pauses every training step on the machine, and new steps cannot
starve it. Threads stand in for processes (each lock call opens its own file description, so flock treats them as
separate holders); the last test runs the real fine-tuning loop."""

import fcntl
import os
import threading
import time

import pytest
import torch
from torch.utils.data import TensorDataset

from autoprune.errors import ConfigError
from autoprune.hw.lock import MEASURE, compute_share, lock_dir, measurement_lock
from autoprune.recover import TrainConfig, finetune
from autoprune.tasks.models import resnet_small

HANG = 60   # seconds before a thread that should have finished counts as stuck (never reached when it works)


@pytest.fixture(autouse=True)
def own_lock_dir(tmp_path, monkeypatch):
    """Locks of this test only (other tests of the run are not paused), and training that pauses for them."""
    monkeypatch.setenv("AUTOPRUNE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("AUTOPRUNE_PAUSE_TRAINING", "1")


class Trainer(threading.Thread):
    """Takes steps (each holding compute_share for `hold_s`) until stopped; counts them."""

    def __init__(self, hold_s: float = 0.0):
        super().__init__(daemon=True)
        self.steps, self.hold_s = 0, hold_s
        self.stop, self.stepped = threading.Event(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            with compute_share():
                time.sleep(self.hold_s)
                self.steps += 1
            self.stepped.set()

    def wait_for_steps(self) -> None:
        self.stepped.clear()
        assert self.stepped.wait(HANG), "the trainer took no step"


def test_a_measurement_pauses_training_steps():
    trainer = Trainer(hold_s=0.001)
    trainer.start()
    trainer.wait_for_steps()
    with measurement_lock():
        before = trainer.steps
        time.sleep(0.3)   # ~100 steps' worth: long enough for a step to show if the lock let one through
        assert trainer.steps == before, "a training step ran during the measurement"
    trainer.wait_for_steps()   # and training resumes afterwards
    trainer.stop.set()
    trainer.join(HANG)


def test_a_waiting_measurement_keeps_new_steps_out():
    """A measurement waits for the steps already running, but no new step may start meanwhile: otherwise
    back-to-back steps of several trainers could hold the shared lock for ever (starvation)."""
    order, in_step, release = [], threading.Event(), threading.Event()

    def long_step():
        with compute_share():
            in_step.set()
            release.wait(HANG)

    def measure():
        with measurement_lock():
            order.append("measurement")

    def new_step():
        with compute_share():
            order.append("step")

    threads = [threading.Thread(target=f, daemon=True) for f in (long_step, measure, new_step)]
    threads[0].start()
    assert in_step.wait(HANG)
    threads[1].start()
    wait_until_held(MEASURE)   # the measurement holds the turnstile and waits for the running step
    threads[2].start()
    time.sleep(0.3)            # room for the new step to slip in if it could
    assert order == []
    release.set()
    for t in threads:
        t.join(HANG)
    assert order == ["measurement", "step"]


def wait_until_held(name: str) -> None:
    """Until some holder has `name` exclusively (a shared attempt fails)."""
    path = lock_dir() / name
    for _ in range(HANG * 100):
        if path.exists():
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            finally:
                os.close(fd)
        time.sleep(0.01)
    raise AssertionError(f"nobody took {name}")


def test_measurements_exclude_each_other():
    inside = threading.Event()
    second_done = threading.Event()

    def second():
        with measurement_lock():
            second_done.set()

    with measurement_lock():
        inside.set()
        worker = threading.Thread(target=second, daemon=True)
        worker.start()
        assert not second_done.wait(0.3), "two measurements ran at once"
    assert second_done.wait(HANG)


def test_finetuning_waits_while_a_model_is_timed():
    with measurement_lock():
        done = finetune_in_thread()
        assert not done.wait(1.0), "fine-tuning ran while a measurement held the machine"
    assert done.wait(HANG)

def finetune_in_thread() -> threading.Event:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,)))
    model = resnet_small(widths=(8, 16, 16))
    done = threading.Event()
    threading.Thread(target=lambda: (finetune(model, data, TrainConfig(epochs=1, batch_size=8)), done.set()),
                     daemon=True).start()
    return done


def test_training_goes_on_during_measurements_by_default(monkeypatch):
    monkeypatch.delenv("AUTOPRUNE_PAUSE_TRAINING")
    with measurement_lock():
        assert finetune_in_thread().wait(HANG), "fine-tuning waited for a measurement without being asked to"


@pytest.mark.parametrize("value", ["2", "maybe"])
def test_a_bad_switch_names_the_fix(monkeypatch, value):
    monkeypatch.setenv("AUTOPRUNE_PAUSE_TRAINING", value)
    with pytest.raises(ConfigError, match="AUTOPRUNE_PAUSE_TRAINING=.* use 1"):
        with compute_share():
            pass
