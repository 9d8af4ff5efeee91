"""Measurement quality on this machine: repeatability and cost of cpu-ort-1t, and predictor error.

    python benchmarks/measurement.py [--hw cpu-ort-1t] [--repeats 5] [--validate 20]

Model: the default task's ResNet (widths 32/64/128, 1x32x32 input, batch 1). Prints a table:
- CV of N independent measurements: std/mean of the medians of N full measurements (new session each)
- cost per measurement: wall seconds of one measure() call (session, warm-up, timed runs)
- predictor share within ±10 %: latency table built by `calibrate` (search-space ratios 0-0.85 step
  0.05), checked against real measurements of randomly pruned models
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.hw import export_model, get_backend, load_profile
from autoprune.calibrate import calibrate
from autoprune.prune import ChannelPruner, output_layers
from autoprune.tasks.models import resnet_small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hw", default="cpu-ort-1t")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--validate", type=int, default=20,
                        help="randomly pruned models checked against the predictor (0: no predictor rows)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    profile = load_profile(args.hw)
    backend = get_backend(profile)  # no cache: every call measures
    torch.manual_seed(0)
    model = resnet_small(widths=(32, 64, 128)).eval()
    x = torch.randn(profile.batch_size, 1, 32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_model(model, x, Path(tmp) / "baseline")
        medians, costs, runs, within = [], [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            stats = backend.measure(exported, profile)
            costs.append(time.perf_counter() - t0)
            medians.append(stats.median_ms)
            runs.append(stats.n)
            within.append(stats.cv)
        predictor_rows = predictor(model, x, profile, backend, Path(tmp) / "cal", args.validate) if args.validate else []

    m = np.asarray(medians)
    rows = [
        ("profile", profile.name),
        ("machine", f"{stats.fingerprint['cpu']}, {stats.fingerprint['cores']} cores, "
                    f"onnxruntime {stats.fingerprint['runtime_version']}" if profile.runtime == "onnxruntime"
         else f"{stats.fingerprint['cpu']}, {stats.fingerprint['runtime']} {stats.fingerprint['runtime_version']}"),
        ("model", "resnet_small 32/64/128, input 1x1x32x32"),
        (f"medians of {args.repeats} measurements (ms)", " ".join(f"{v:.4f}" for v in m)),
        (f"CV of {args.repeats} independent measurements", f"{100 * m.std(ddof=1) / m.mean():.2f} %"),
        ("within-measurement CV (mean)", f"{100 * np.mean(within):.2f} %"),
        ("timed runs per measurement (mean)", f"{np.mean(runs):.0f}"),
        ("cost per measurement", f"{np.mean(costs):.2f} s (min {min(costs):.2f}, max {max(costs):.2f})"),
        *predictor_rows,
        ("load average (1 min) before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f} "
                                                f"on {os.cpu_count()} cores"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'quantity'.ljust(width)} | value |")
    print(f"| {'-' * width} | ----- |")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


def predictor(model, x, profile, backend, workdir: Path, n_validate: int) -> list[tuple[str, str]]:
    """Build the latency table over the search space's ratios and check it on `n_validate` pruned models."""
    pruner = ChannelPruner(x, output_layers(model, x), profile.round_to)
    ratios = [round(r, 2) for r in np.arange(0.0, 0.851, 0.05)]
    t0 = time.perf_counter()
    cal = calibrate(model, pruner, ratios, profile, backend, workdir, n_validate=n_validate)
    seconds = time.perf_counter() - t0
    entries = sum(len(v) for v in cal.table.entries.values())
    return [("predictor table", f"{len(cal.table.layers)} layers, {entries} entries, built and checked in {seconds:.0f} s"),
            ("predictor share within ±10 %", f"{100 * cal.report.share_within_10pct:.0f} % of {cal.report.n} "
                                             f"pruned models (mean abs. error {100 * cal.report.mean_abs_rel_error:.1f} %, "
                                             f"max {100 * cal.report.max_abs_rel_error:.1f} %)")]


if __name__ == "__main__":
    main()
