"""Search quality at equal trial budget on the default task: hypervolume and best speedup per method.

    python benchmarks/search_quality.py [--trials 24] [--seeds 0 1 2] [--methods tpe nsga2 random uniform flops]

Every method runs the default search (digits ResNet, cpu-ort-1t) with the same budget, in one
process, sharing one cached baseline; each run re-measures the baseline, so latencies are compared
as ratios. Methods: tpe / nsga2 / random / gp / qmc (Optuna samplers, objectives val accuracy and
measured latency), uniform (same ratio everywhere, the baseline sweep), flops (TPE with objectives
val accuracy and MACs: a FLOPs-proxy search, its models measured afterwards like all others),
nni-tpe (NNI's TPE tuner on the scalarised objective). All trials are evaluated on the test split.

Columns: HV val / HV test = normalised hypervolume of (accuracy, measured latency) within 10 points
of the baseline accuracy (autoprune.search.pareto.normalized_hypervolume); best speedup at <=1 pt
test drop = max baseline latency / latency over trials whose test accuracy is within 1 point of the
baseline's; wall = seconds for the whole search. The row "union" pools every method's trials of a
seed (latencies as ratios to each run's own baseline): the front all methods together found, an
upper reference for what any one search of this budget could reach.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from autoprune.cli import _quiet_libraries, run
from autoprune.recover import evaluate
from autoprune.resources import resource_dir
from autoprune.search.pareto import normalized_hypervolume
from autoprune.tasks import build_task

METHODS = {
    "tpe": ["search.sampler=tpe"],
    "nsga2": ["search.sampler=nsga2"],
    "random": ["search.sampler=random"],
    "gp": ["search.sampler=gp"],
    "qmc": ["search.sampler=qmc"],
    "uniform": ["search.sampler=uniform", "search.warm_start=[]"],
    "flops": ["search.sampler=tpe", "search.objectives=[val_accuracy,macs]"],
    "nni-tpe": ["search.backend=nni", "search.nni.tuner=tpe"],
}


def one_search(workdir: Path, method: str, seed: int, trials: int, extra: list[str]) -> dict:
    overrides = [*METHODS[method], f"seed={seed}", f"search.n_trials={trials}",
                 f"search.study_name={method}-s{seed}", f"search.storage=sqlite:///{workdir / 'optuna.db'}",
                 f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"cache_dir={workdir / 'cache'}", *extra]
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = workdir / f"{method}-s{seed}"
    start = time.perf_counter()
    outcome = run(cfg, out)
    wall = time.perf_counter() - start
    test = build_task(cfg.task).data.test
    base = outcome.report.baseline
    rows = []
    for c in outcome.report.trials:
        model = torch.load(out / "trials" / f"{c.trial:04d}" / "model.pt", map_location="cpu", weights_only=False)
        rows.append((c.val_accuracy, evaluate(model, test), c.latency_ms))
    val_hv = normalized_hypervolume([(v, lat) for v, _, lat in rows], base.val_accuracy, base.latency_ms)
    test_hv = normalized_hypervolume([(t, lat) for _, t, lat in rows], base.test_accuracy, base.latency_ms)
    ok = [base.latency_ms / lat for _, t, lat in rows if t >= base.test_accuracy - 0.01]
    val_ok = [base.latency_ms / lat for v, _, lat in rows if v >= base.val_accuracy - 0.01]
    return {"method": method, "seed": seed, "hv_val": val_hv, "hv_test": test_hv,
            "best_test": max(ok, default=float("nan")), "best_val": max(val_ok, default=float("nan")),
            "wall": wall, "base_ms": base.latency_ms, "base_test": base.test_accuracy, "base_val": base.val_accuracy,
            "points": [(v, t, lat / base.latency_ms) for v, t, lat in rows]}


def union(results: list[dict], seed: int) -> dict:
    """All methods' trials of one seed as one pool (latency as a ratio to each run's baseline)."""
    runs = [x for x in results if x["seed"] == seed]
    points = [p for x in runs for p in x["points"]]
    base_val, base_test = runs[0]["base_val"], runs[0]["base_test"]
    return {"method": "union", "seed": seed,
            "hv_val": normalized_hypervolume([(v, r) for v, _, r in points], base_val, 1.0),
            "hv_test": normalized_hypervolume([(t, r) for _, t, r in points], base_test, 1.0),
            "best_val": max((1 / r for v, _, r in points if v >= base_val - 0.01), default=float("nan")),
            "best_test": max((1 / r for _, t, r in points if t >= base_test - 0.01), default=float("nan")),
            "wall": sum(x["wall"] for x in runs), "base_ms": runs[0]["base_ms"], "base_test": base_test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["tpe", "nsga2", "random", "uniform", "flops"],
                        choices=sorted(METHODS))
    parser.add_argument("--workdir", type=Path, default=None, help="keep results here (default: a temp dir)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every search")
    args = parser.parse_args()
    logging.getLogger("autoprune").setLevel(logging.WARNING)
    _quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        results = [one_search(workdir, m, s, args.trials, args.override) for s in args.seeds for m in args.methods]
    results += [union(results, s) for s in args.seeds]
    print(f"\n{args.trials} trials per search, seeds {args.seeds}; mean ± std over seeds")
    print(f"{'method':10} {'HV val':>14} {'HV test':>14} {'best x (val<=1pt)':>18} {'best x (test<=1pt)':>19} {'wall s':>8}")
    for m in [*args.methods, "union"]:
        r = [x for x in results if x["method"] == m]
        f = lambda k: f"{np.mean([x[k] for x in r]):.3f} ± {np.std([x[k] for x in r]):.3f}"  # noqa: E731
        print(f"{m:10} {f('hv_val'):>14} {f('hv_test'):>14} {f('best_val'):>18} {f('best_test'):>19} "
              f"{np.mean([x['wall'] for x in r]):8.0f}")
    for ref in ("uniform", "flops"):
        if ref not in args.methods:
            continue
        print(f"\nHV ratio to {ref} (val / test), mean over seeds:")
        for m in [*args.methods, "union"]:
            pairs = [(x, next(y for y in results if y["method"] == ref and y["seed"] == x["seed"]))
                     for x in results if x["method"] == m]
            ratio = lambda k: np.mean([x[k] / y[k] if y[k] else float("nan") for x, y in pairs])  # noqa: E731
            print(f"  {m:10} {ratio('hv_val'):.3f} / {ratio('hv_test'):.3f}")
    print("\nper run:")
    for x in results:
        print(f"  {x['method']:10} seed {x['seed']}: HV val {x['hv_val']:.3f}, HV test {x['hv_test']:.3f}, best x val "
              f"{x['best_val']:.2f}, test {x['best_test']:.2f} (baseline {x['base_ms']:.3f} ms, test acc "
              f"{100 * x['base_test']:.2f} %), {x['wall']:.0f} s")


if __name__ == "__main__":
    main()
