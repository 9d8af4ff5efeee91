"""Realized speedup: does measured latency follow MACs when channels are removed?

    python benchmarks/realized_speedup.py [--hw cpu-ort-1t] [--ratios 0.25 0.5 0.75] [--models ...]

For each model and uniform channel ratio, with kept channels rounded to 1 (no rounding) and to the
profile's multiple, prints the MACs ratio (pruned / dense) and the measured latency ratio on the
profile, and the realized speedup = dense latency / pruned latency. Where the latency ratio stays
well above the MACs ratio, latency stopped following FLOPs. Weights are random (latency does not
depend on their values); each model's dense latency is measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch_pruning as tp

from autoprune.hw import export_model, get_backend, load_profile
from autoprune.plan import PrunePlan
from autoprune.prune import ChannelPruner, output_layers
from autoprune.tasks import models, zoo

MODELS = {
    "resnet_small": (lambda: models.resnet_small(), (1, 32, 32)),
    "resnet18": (lambda: zoo.resnet18(), (3, 32, 32)),
    "vgg11_bn": (lambda: zoo.vgg11_bn(), (3, 32, 32)),
    "mobilenet_v2": (lambda: zoo.mobilenet_v2(), (3, 32, 32)),
    "cnn1d": (lambda: zoo.cnn1d(), (1, 40)),
}


def measure(model, example, profile, backend, workdir: Path) -> tuple[float, int]:
    macs, _ = tp.utils.count_ops_and_params(model, example)
    stats = backend.measure(export_model(model, example, workdir), profile, fresh=True)
    return stats.median_ms, int(macs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hw", default="cpu-ort-1t")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    args = parser.parse_args()
    profile = load_profile(args.hw)
    backend = get_backend(profile)
    print(f"profile {profile.name} (round_to {profile.round_to}); ratios are uniform over all groups")
    print(f"{'model':13} {'ratio':>5} {'round':>5} {'MACs ratio':>10} {'latency ratio':>13} {'speedup':>8} {'dense ms':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            make, shape = MODELS[name]
            torch.manual_seed(0)
            dense = make().eval()
            example = torch.randn(profile.batch_size, *shape)
            dense_ms, dense_macs = measure(dense, example, profile, backend, Path(tmp) / f"{name}-dense")
            for ratio in args.ratios:
                for round_to in sorted({1, profile.round_to}):
                    torch.manual_seed(0)
                    model = make().eval()
                    pruner = ChannelPruner(example, output_layers(model, example), round_to)
                    plan = PrunePlan.uniform([g.name for g in pruner.groups(model)], ratio)
                    pruner.apply(model, plan)
                    ms, macs = measure(model, example, profile, backend, Path(tmp) / f"{name}-{ratio}-{round_to}")
                    print(f"{name:13} {ratio:5.2f} {round_to:5d} {macs / dense_macs:10.3f} {ms / dense_ms:13.3f} "
                          f"{dense_ms / ms:7.2f}x {dense_ms:9.3f}")


if __name__ == "__main__":
    main()
