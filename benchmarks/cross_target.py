"""Does the target change the model worth deploying? The same task searched on several targets, every
front model measured on every target side by side.

    python benchmarks/cross_target.py [--trials 24] [--seeds 0 1 2] [--targets cpu-ort-1t cpu-ort-int8-1t cpu-ort-b32]
                                      [--workdir DIR] [--override task.model...=...]

Searches: one per target (objectives val accuracy and latency measured on that target, the int8
target scoring its int8 artifact), plus `flops`: the FLOPs-proxy search (objectives val accuracy and
MACs) on the int8 target, so its models are int8 too.

Side by side: after the searches of a seed, every front model of every search (its fp32 export and
weights) and the baseline are deployed on every target as that target deploys them (int8: quantized,
calibrated on the train split), timed there in one pass, in shuffled order (`--rounds` times, median),
and scored on the test split by running that target's artifact with ONNX Runtime.

Tables:
- cross-target matrix (one per `--drops`, default 1 and 2 points): row = search target A, column =
  deploy target B. Each cell: the latency on B of the fastest front model of search A within that many
  points of the baseline's test accuracy on B, divided by the same for search B's front. > 1: searching on B found a faster model for B than searching on A
  (the diagonal is 1). "-" where a front has no model within 1 point.
- int8: normalised hypervolume (test accuracy on int8 vs int8 latency ratio to the baseline) of the
  measured-latency int8 search's front and of the FLOPs-proxy search's front, and their ratio.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from autoprune.cli import _quiet_libraries, run
from autoprune.context import build_context
from autoprune.hw import ExportedModel, export_onnx, get_backend, load_profile
from autoprune.hw.artifact import FP32_NAME, artifact_accuracy, build_artifact
from autoprune.hw.quantize import calibration_arrays
from autoprune.resources import resource_dir
from autoprune.search.pareto import normalized_hypervolume

FLOPS = "flops"


@dataclass
class Model:
    """One front model of one search: its fp32 export, then per deploy target its latency and test accuracy."""

    search: str
    trial: int
    onnx: Path
    latency: dict = field(default_factory=dict)     # target -> median ms (side by side)
    test: dict = field(default_factory=dict)        # target -> test accuracy of that target's artifact


def one_search(workdir: Path, name: str, hw: str, seed: int, trials: int, extra: list[str]):
    overrides = [f"hw={hw}", f"seed={seed}", f"search.n_trials={trials}", f"search.study_name={name}-s{seed}",
                 f"search.storage=sqlite:///{workdir / 'optuna.db'}", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
                 f"cache_dir={workdir / 'cache'}", *extra]
    if name == FLOPS:
        overrides.append("search.objectives=[val_accuracy,macs]")
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = workdir / f"{name}-s{seed}"
    outcome = run(cfg, out)
    models = []
    for c in outcome.report.front:
        folder = out / "trials" / f"{c.trial:04d}"
        fp32 = folder / FP32_NAME if (folder / FP32_NAME).is_file() else folder / "model.onnx"
        models.append(Model(name, c.trial, fp32))
    return cfg, models


def side_by_side(cfg, models: list[Model], targets: list[str], rounds: int, seed: int) -> Model:
    """Every model and the baseline on every target: latency (median of rounds) and test accuracy."""
    ctx = build_context(cfg)    # the cached baseline and the task's data
    data, calibration = ctx.task.data, calibration_arrays(ctx.task.data.train)
    tmp = Path(tempfile.mkdtemp())
    base = Model("baseline", -1, export_onnx(ctx.baseline, data.example_batch(1), tmp / "baseline" / "model.onnx"))
    everything = [base, *models]
    artifacts: dict[tuple[int, str], ExportedModel] = {}
    for i, m in enumerate(everything):
        for t in targets:
            profile = load_profile(t)
            src = tmp / f"m{i}" / t / "model.onnx"   # a folder per (model, target): int8 files never collide
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(m.onnx.read_bytes())
            art = build_artifact(ExportedModel(src), profile, calibration if profile.precision == "int8" else None)
            artifacts[(i, t)] = art
            m.test[t] = artifact_accuracy(art, profile, data.test)
    order = random.Random(seed)
    times: dict[tuple[int, str], list[float]] = {k: [] for k in artifacts}
    keys = list(artifacts)
    for _ in range(rounds):
        order.shuffle(keys)
        for i, t in keys:
            profile = load_profile(t)
            times[(i, t)].append(get_backend(profile).measure(artifacts[(i, t)], profile).median_ms)
    for (i, t), values in times.items():
        everything[i].latency[t] = float(np.median(values))
    return base


def fastest_within(models: list[Model], base: Model, target: str, drop: float = 0.01):
    ok = [m for m in models if m.test[target] >= base.test[target] - drop]
    return min(ok, key=lambda m: m.latency[target]) if ok else None


def hv(models: list[Model], base: Model, target: str) -> float:
    points = [{"val_accuracy": m.test[target], "latency_ms": m.latency[target] / base.latency[target]} for m in models]
    return normalized_hypervolume(points, ["val_accuracy", "latency_ms"],
                                  {"val_accuracy": base.test[target], "latency_ms": 1.0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=["cpu-ort-1t", "cpu-ort-int8-1t", "cpu-ort-b32"])
    parser.add_argument("--flops-target", default="cpu-ort-int8-1t", help="the FLOPs-proxy search's target")
    parser.add_argument("--workdir", type=Path, default=None, help="keep results here (default: a temp dir)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every search")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side measurements of every model")
    parser.add_argument("--drops", type=float, nargs="+", default=[1.0, 2.0],
                        help="test accuracy drops (points) for the cross-target matrix: one matrix each")
    args = parser.parse_args()
    logging.getLogger("autoprune").setLevel(logging.WARNING)
    _quiet_libraries()
    targets = args.targets
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for seed in args.seeds:
            fronts: dict[str, list[Model]] = {}
            cfg = None
            for t in targets:
                cfg, fronts[t] = one_search(workdir, t, t, seed, args.trials, args.override)
            _, fronts[FLOPS] = one_search(workdir, FLOPS, args.flops_target, seed, args.trials, args.override)
            base = side_by_side(cfg, [m for ms in fronts.values() for m in ms], targets, args.rounds, seed)
            report(seed, targets, fronts, base, args.flops_target, args.drops)


def report(seed: int, targets: list[str], fronts: dict[str, list[Model]], base: Model, flops_target: str,
           drops: list[float]) -> None:
    print(f"\nseed {seed}: baseline on each target: " + ", ".join(
        f"{t} {base.latency[t]:.3f} ms, test {100 * base.test[t]:.2f}%" for t in targets))
    print("\nfront models, measured side by side (latency ms / test accuracy % on each target):")
    print(f"  {'search':16} {'trial':>5} " + " ".join(f"{t:>22}" for t in targets))
    for name, models in fronts.items():
        for m in sorted(models, key=lambda m: m.trial):
            print(f"  {name:16} {m.trial:5d} " + " ".join(
                f"{m.latency[t]:>12.3f} /{100 * m.test[t]:>7.2f}" for t in targets))
    for drop in drops:
        print(f"\ncross-target matrix: latency on B of search A's fastest front model within {drop:g} pt test on B, "
              "divided by search B's (>1: searching on B pays)")
        print(f"  {'search A, deploy B:':22} " + " ".join(f"{t:>16}" for t in targets))
        for a in [*targets, FLOPS]:
            cells = []
            for b in targets:
                mine = fastest_within(fronts[a], base, b, drop / 100)
                theirs = fastest_within(fronts[b], base, b, drop / 100)
                cells.append("-" if mine is None or theirs is None else
                             f"{mine.latency[b] / theirs.latency[b]:.2f} (#{mine.trial}/#{theirs.trial})")
            print(f"  {a:22} " + " ".join(f"{c:>16}" for c in cells))
    measured, proxy = hv(fronts[flops_target], base, flops_target), hv(fronts[FLOPS], base, flops_target)
    ratio = f"{measured / proxy:.3f}" if proxy else "inf"
    print(f"\n{flops_target}: HV (test acc, latency ratio) of the measured-latency search's front {measured:.3f}, "
          f"of the FLOPs-proxy search's front {proxy:.3f}: ratio {ratio}")


if __name__ == "__main__":
    main()
