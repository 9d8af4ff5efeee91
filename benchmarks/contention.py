"""Does another worker's training disturb a measurement? One model timed while a second process trains on
the other core, with the machine-wide locks (training steps pause while a model is timed) and without.

    python benchmarks/contention.py [--model transformer|resnet] [--rounds 5] [--hw cpu-ort-1t]

Conditions, each once per round in shuffled order:
- quiet:           nothing else runs;
- trainer:         a child process pinned to another core runs SGD steps on the same architecture in a loop
                   without taking any lock (a second worker of a search, by default);
- trainer, locked: the same child with every step inside `compute_share(pause=True)`, as autoprune's
                   fine-tuning does with AUTOPRUNE_PAUSE_TRAINING=1, so it pauses while a model is timed.
The measurement itself runs in this process, pinned to core 0, with the profile's rules (a fresh
measurement each time). Printed per condition: the median over rounds of the measured median latency,
its ratio to quiet, and the trainer's steps per second while it ran.

Models: `transformer` is MiniLM-L6's shape (6 layers, width 384, 12 heads, FFN 1536) on 32 tokens;
`resnet` is the default task's ResNet (widths 32/64/128) on 32x32 images. Random weights.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.hw import export_model, get_backend, load_profile
from autoprune.hw.lock import compute_share
from autoprune.tasks.models import resnet_small

CONDITIONS = ("quiet", "trainer", "trainer, locked")


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(384, 12, 1536, dropout=0.0, batch_first=True)
        self.encoder, self.head = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False), nn.Linear(384, 4)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model and one input of batch size 1."""
    torch.manual_seed(0)
    if name == "transformer":
        return Encoder().eval(), torch.randn(1, 32, 384)
    return resnet_small().eval(), torch.randn(1, 1, 32, 32)


def train_forever(name: str, locked: bool, core: int, ready, stop, steps) -> None:
    """The second worker: SGD steps on batches of 16 until `stop`; `steps` counts them."""
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    model, example = build(name)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = example.repeat(16, *[1] * (example.dim() - 1)), torch.zeros(16, dtype=torch.long)
    ready.set()
    while not stop.is_set():
        with compute_share(pause=locked):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        with steps.get_lock():
            steps.value += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("transformer", "resnet"), default="transformer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hw", default="cpu-ort-1t")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("contention.py needs two cores: one measures, the other trains")
    os.sched_setaffinity(0, {cores[0]})
    torch.set_num_threads(1)
    profile, ctx = load_profile(args.hw), mp.get_context("spawn")
    backend = get_backend(profile)
    model, example = build(args.model)
    latency: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    rate: dict[str, list[float]] = {c: [] for c in CONDITIONS[1:]}
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_model(model, example, Path(tmp))
        for r in range(args.rounds):
            for condition in rng.sample(CONDITIONS, len(CONDITIONS)):
                child = None
                if condition != "quiet":
                    ready, stop, steps = ctx.Event(), ctx.Event(), ctx.Value("l", 0)
                    child = ctx.Process(target=train_forever,
                                        args=(args.model, condition.endswith("locked"), cores[1], ready, stop, steps))
                    child.start()
                    ready.wait()
                    time.sleep(1.0)   # the trainer in its steady state
                    start, first = time.perf_counter(), steps.value
                latency[condition].append(backend.measure(exported, profile, fresh=True).median_ms)
                if child is not None:
                    rate[condition].append((steps.value - first) / (time.perf_counter() - start))
                    stop.set()
                    child.join()
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    quiet = float(np.median(latency["quiet"]))
    print(f"\n{args.model}, {profile.name}, median of {args.rounds} rounds (each a full measurement)")
    print(f"{'condition':16} {'latency ms':>11} {'vs quiet':>9} {'trainer steps/s':>16}")
    for condition in CONDITIONS:
        ms = float(np.median(latency[condition]))
        steps_s = f"{np.median(rate[condition]):.1f}" if condition in rate else "-"
        print(f"{condition:16} {ms:11.3f} {ms / quiet:8.3f}x {steps_s:>16}")


if __name__ == "__main__":
    main()
