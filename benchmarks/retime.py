"""Does the end-of-search re-timing (search.retime) repair a front that busy moments mis-timed?

    python benchmarks/retime.py [--trials 24] [--seed 0] [--duty 0.3] [--period 20] [--rounds 3]

One search of the default task, pinned to core 0, while a disturber process pinned to the same core burns
CPU for `duty` of every `period` seconds: models timed in those windows share the core and come out slow
(a backup, a browser, another job on the machine). Then, with the disturber stopped, every completed
trial's model and the baseline are timed side by side (`--rounds` shuffled rounds): the truth. Printed
for the front the search measured (Optuna's best trials: what autoprune reported before search.retime)
and for the re-timed front autoprune reports now:
- how many of its models are on the true front, and how many models of the true front it misses;
- its hypervolume with the true latencies (val accuracy, latency ratio to the baseline);
- the largest error of the speedups it reports against the true speedups.
`--duty 0` runs the same search undisturbed (what the re-timing costs and changes on a quiet machine).
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
import optuna
from hydra import compose, initialize_config_dir

from autoprune.cli import _quiet_libraries, run
from autoprune.hw import ExportedModel, get_backend, load_profile
from autoprune.resources import resource_dir
from autoprune.search.pareto import non_dominated, normalized_hypervolume
from autoprune.search.retime import front_numbers, retime_summary, retimed_latencies
from autoprune.track import Tracker


def disturb(core: int, duty: float, period: float, stop) -> None:
    """Burn CPU on `core` for `duty` of every `period` seconds until `stop` is set."""
    os.sched_setaffinity(0, {core})
    while not stop.is_set():
        if time.time() % period < duty * period:
            end = time.perf_counter() + 0.01
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(0.02)


def hv(points: list[tuple[float, float]], base_accuracy: float) -> float:
    return normalized_hypervolume([{"val_accuracy": a, "latency_ms": r} for a, r in points],
                                  ["val_accuracy", "latency_ms"], {"val_accuracy": base_accuracy, "latency_ms": 1.0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duty", type=float, default=0.3, help="share of each period the disturber runs")
    parser.add_argument("--period", type=float, default=20.0, help="seconds")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds of the truth")
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for the search")
    args = parser.parse_args()
    _quiet_libraries()
    os.sched_setaffinity(0, {args.core})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="retime-"))
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = [f"seed={args.seed}", f"search.n_trials={args.trials}", "search.study_name=retime",
                 f"search.storage=sqlite:///{workdir / 'optuna.db'}", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
                 f"cache_dir={workdir / 'cache'}", *args.override]
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = workdir / "search"

    stop = mp.Event()
    disturber = mp.Process(target=disturb, args=(args.core, args.duty, args.period, stop), daemon=True)
    if args.duty > 0:
        disturber.start()
    started = time.perf_counter()
    try:
        outcome = run(cfg, out)
    finally:
        stop.set()
        if disturber.is_alive():
            disturber.join()
    wall = time.perf_counter() - started

    study = optuna.load_study(study_name="retime", storage=cfg.search.storage)
    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])}
    retimed = retimed_latencies(study)
    base_search = Tracker(cfg.tracking.uri, cfg.tracking.experiment).baseline_run("retime").data.metrics["latency_ms"]

    # the truth: every model and the baseline side by side, nothing else running
    profile = load_profile(cfg.hw)
    measurer = get_backend(profile)
    files = {n: out / "trials" / f"{n:04d}" / "model.onnx" for n in complete} | {-1: out / "baseline" / "model.onnx"}
    times: dict[int, list[float]] = {n: [] for n in files}
    order, rng = list(files), random.Random(args.seed)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for n in order:
            times[n].append(measurer.measure(ExportedModel(files[n]), profile, fresh=True).median_ms)
    true_ms = {n: float(np.median(t)) for n, t in times.items()}
    base_true = true_ms.pop(-1)
    accuracy = {n: float(t.user_attrs["val_accuracy"]) for n, t in complete.items()}
    base_val = outcome.report.baseline.val_accuracy
    truth = non_dominated({n: {"val_accuracy": accuracy[n], "latency_ms": true_ms[n]} for n in complete},
                          ["val_accuracy", "latency_ms"])

    search_front = {t.number for t in study.best_trials}
    fronts = {
        "measured in the search": (search_front, {n: float(complete[n].user_attrs["latency_ms"]) for n in complete},
                                   base_search),
        "re-timed (search.retime)": (front_numbers(study),
                                     {n: retimed.get(str(n), float(complete[n].user_attrs["latency_ms"]))
                                      for n in complete}, retimed.get("baseline", base_search)),
    }
    print(f"\n{len(complete)} trials in {wall:.0f} s (disturber: {args.duty:.0%} of every {args.period:g} s on core "
          f"{args.core}); truth: {args.rounds} rounds side by side, baseline {base_true:.3f} ms; true front "
          f"{sorted(truth)}\nre-timed at the end: {retime_summary(outcome.report.retime) or 'nothing'}")
    print(f"{'front':<26} {'models':>6} {'on true front':>14} {'missed':>7} {'HV (true ms)':>13} "
          f"{'max speedup error':>18}")
    for name, (front, reported, base) in fronts.items():
        errors = [(base / reported[n]) / (base_true / true_ms[n]) - 1 for n in front]
        worst = max(errors, key=abs) if errors else 0.0
        print(f"{name:<26} {len(front):>6} {len(front & truth):>14} {len(truth - front):>7} "
              f"{hv([(accuracy[n], true_ms[n] / base_true) for n in front], base_val):>13.4f} {100 * worst:>+17.1f}%")
    print(f"{'true front':<26} {len(truth):>6} {len(truth):>14} {0:>7} "
          f"{hv([(accuracy[n], true_ms[n] / base_true) for n in truth], base_val):>13.4f}")
    print("fronts: measured " + str(sorted(search_front)) + ", re-timed " + str(sorted(front_numbers(study))))


if __name__ == "__main__":
    main()
