"""How a target's latency steps with a pruned layer's width: the evidence for a profile's `round_to`.

    python benchmarks/channel_granularity.py [--profiles cpu-ort-1t cpu-ort-int8-1t] [--widths 48 80]
                                              [--layer conv3x3] [--outer 64] [--size 16] [--rounds 5]

The block pruning changes: conv(outer -> C) + BN + ReLU + conv(C -> outer) (or the same with 1x1 convs,
or Linear(outer -> C) + ReLU + Linear(C -> outer) on --size tokens), for every width C in the range,
exported to ONNX, deployed as each profile deploys it (int8: static QDQ, calibrated on random inputs)
and timed with the profile's rules, every width once per round in shuffled order; a width's latency is
the median of its rounds.

For each step k (4, 8, 16, 32) the table says what rounding a width up to the next multiple of k costs:
`free` is the share of widths C (not multiples of k) whose next multiple m = ceil(C / k) * k runs no
slower than C itself (within --tolerance); `x` is the median latency ratio m / C. When rounding up is
free, a width between multiples of k buys nothing over the next multiple, so a search on that target
loses nothing by taking kept widths in multiples of k (the profile's `round_to`) and samples a smaller
space.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.hw.artifact import build_artifact
from autoprune.hw.backend import get_backend
from autoprune.hw.export import export_model
from autoprune.hw.profile import load_profile

STEPS = (4, 8, 16, 32)


def block(layer: str, width: int, outer: int, size: int) -> tuple[nn.Module, torch.Tensor]:
    """The block at one width, and its input (batch 1): `size` tokens for linear, size x size pixels else."""
    if layer == "linear":
        model = nn.Sequential(nn.Linear(outer, width), nn.ReLU(), nn.Linear(width, outer))
        return model.eval(), torch.randn(1, size, outer)
    k = 3 if layer == "conv3x3" else 1
    model = nn.Sequential(nn.Conv2d(outer, width, k, padding=k // 2), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, outer, k, padding=k // 2))
    return model.eval(), torch.randn(1, outer, size, size)


def measure_widths(args) -> dict[str, dict[int, float]]:
    torch.manual_seed(0)
    widths = list(range(args.widths[0], args.widths[1] + 1))
    profiles = [load_profile(name) for name in args.profiles]
    backends = {p.name: get_backend(p) for p in profiles}
    rng = random.Random(0)
    samples: dict[str, dict[int, list[float]]] = {p.name: {w: [] for w in widths} for p in profiles}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for w in widths:
            model, example = block(args.layer, w, args.outer, args.size)
            exported = export_model(model, example, Path(tmp) / str(w))
            calibration = [np.random.default_rng(i).standard_normal((8, *example.shape[1:]), dtype=np.float32)
                           for i in range(4)]
            for p in profiles:
                artifacts[p.name, w] = build_artifact(exported, p, calibration)
        for r in range(args.rounds):
            order = [(p, w) for p in profiles for w in widths]
            rng.shuffle(order)
            for p, w in order:
                samples[p.name][w].append(backends[p.name].measure(artifacts[p.name, w], p).median_ms)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    return {name: {w: float(np.median(s)) for w, s in by_width.items()} for name, by_width in samples.items()}


def rounding_cost(latency: dict[int, float], k: int, tolerance: float) -> tuple[float, float, int]:
    """(share of widths whose next multiple of k is no slower, median latency ratio next multiple / width,
    number of widths compared)."""
    pairs = [(latency[(w + k - 1) // k * k], latency[w]) for w in latency
             if w % k and (w + k - 1) // k * k in latency]
    if not pairs:
        return float("nan"), float("nan"), 0
    free = sum(up <= own * (1 + tolerance) for up, own in pairs) / len(pairs)
    return free, float(np.median([up / own for up, own in pairs])), len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", default=["cpu-ort-1t", "cpu-ort-int8-1t"])
    parser.add_argument("--widths", nargs=2, type=int, default=[48, 80], metavar=("FIRST", "LAST"))
    parser.add_argument("--layer", choices=["conv3x3", "conv1x1", "linear"], default="conv3x3")
    parser.add_argument("--outer", type=int, default=64, help="the block's input and output width")
    parser.add_argument("--size", type=int, default=16, help="feature map height and width (convs), tokens (linear)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.02, help="relative latency counted as 'no slower'")
    args = parser.parse_args()

    latency = measure_widths(args)
    names = list(latency)
    shape = f"{args.size} tokens" if args.layer == "linear" else f"{args.size}x{args.size}"
    print(f"\n{args.layer} block, outer width {args.outer}, {shape}; latency ms (median of {args.rounds} rounds)")
    print("width " + "".join(f"{n:>18}" for n in names))
    for w in sorted(latency[names[0]]):
        print(f"{w:5d} " + "".join(f"{latency[n][w]:18.4f}" for n in names))
    print("\nrounding a width up to the next multiple of k: share of widths where that is no slower, "
          f"(within {args.tolerance:.0%}), median latency ratio")
    print("    k " + "".join(f"{n:>28}" for n in names))
    for k in STEPS:
        cells = []
        for n in names:
            free, ratio, count = rounding_cost(latency[n], k, args.tolerance)
            cells.append(f"{free:6.0%} free, x{ratio:.3f} (n={count})" if count else "-")
        print(f"{k:5d} " + "".join(f"{c:>28}" for c in cells))


if __name__ == "__main__":
    main()
