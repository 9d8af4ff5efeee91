"""Search quality at equal trial budget on the default task: hypervolume and best speedup per method.

    python benchmarks/search_quality.py [--trials 24] [--seeds 0 1 2] [--methods tpe nsga2 random uniform flops]
                                        [--workdir DIR]

Every method runs the default search (digits ResNet, cpu-ort-1t) with the same budget, in one
process, sharing one cached baseline. Methods: tpe / nsga2 / random / gp / qmc (Optuna samplers,
objectives val accuracy and measured latency), uniform (same ratio everywhere, the baseline sweep),
flops (TPE with objectives val accuracy and MACs: a FLOPs-proxy search), tpe-1pt / tpe-2pt (TPE
with search.constraints.max_accuracy_drop=0.01 / 0.02: the search told how much accuracy it may
lose), nni-tpe (NNI's TPE tuner on the scalarised objective), tpe-mf (TPE with multi-fidelity candidates:
rung 0 first, full recovery for promoted ones; README "Multi-fidelity search"), allocate (the
latency-budgeted allocation searcher, search.sampler=allocate). All fully recovered
trials are evaluated on the test split.

Equal wall-clock time instead of equal trials: a large --trials and `--override search.timeout_s=<s>`
(no trial starts after that many seconds of each search), e.g. multi-fidelity against today's TPE:

    python benchmarks/search_quality.py --methods tpe tpe-mf --trials 500 --override search.timeout_s=300

`trials` in the per-run lines = fully recovered trials / candidates (Optuna trials; equal without
multi-fidelity).

Side by side: a search sees the latencies it measured itself, but comparing searches that ran minutes
apart on a shared machine would compare the machine's moods (the baseline alone drifted 30 % between
runs here). So after the searches of a seed, every trial's ONNX model of every method and the
baseline are measured again in one pass, in shuffled order, `--rounds` times (the baseline after
every 8 models); each model's latency is the median of its rounds, and all ratios are to the
baseline's median over the pass. The tables use these latencies.

Columns: HV val / HV test = normalised hypervolume of (accuracy, latency ratio) within 10 points of
the baseline accuracy (autoprune.search.pareto.normalized_hypervolume); best x = max speedup over
trials within 1 point of the baseline's val / test accuracy (1.00 where none is: the baseline stays);
wall = first trial start to last trial end. The row "union" pools every method's trials of a seed:
the front all methods together found, an upper reference for what any one search of this budget
could reach. The row "ceiling" is the HV of one imagined model as accurate as the most accurate
trial and as fast as the fastest (see `ceiling`): no front of this search space scores more,
unless it holds a model more accurate than every trial of every method.

Other tasks: --override applies Hydra overrides to every search, e.g. the 25-group MobileNetV2 run of
docs/BENCHMARKS.md:

    python benchmarks/search_quality.py --methods tpe uniform flops --workdir DIR \
        --override task.model._target_=autoprune.tasks.zoo.mobilenet_v2 '~task.model.widths' '~task.model.blocks'

With --workdir, a finished search is not run again (its study's budget is spent; see README,
"Crash and resume"): the side-by-side pass can be redone on the same models.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
from pathlib import Path

import numpy as np
import optuna
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from autoprune.baseline import load_baseline
from autoprune.cli import _quiet_libraries, run
from autoprune.context import build_context
from autoprune.hw import ExportedModel, export_onnx, get_backend, load_profile
from autoprune.plan import PrunePlan
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
    "tpe-1pt": ["search.sampler=tpe", "search.constraints.max_accuracy_drop=0.01"],
    "tpe-2pt": ["search.sampler=tpe", "search.constraints.max_accuracy_drop=0.02"],
    "nni-tpe": ["search.backend=nni", "search.nni.tuner=tpe"],
    "tpe-mf": ["search.sampler=tpe", "search.fidelity.rungs=[rung0,full]"],   # multi-fidelity (rung 0 first)
    "allocate": ["search.sampler=allocate"],   # HALP-style: importance-maximising widths under latency budgets
}


def one_search(workdir: Path, method: str, seed: int, trials: int, extra: list[str]) -> dict:
    """Run (or find finished) one search; its trials as (val acc, test acc, ONNX file, architecture key)."""
    overrides = [*METHODS[method], f"seed={seed}", f"search.n_trials={trials}",
                 f"search.study_name={method}-s{seed}", f"search.storage=sqlite:///{workdir / 'optuna.db'}",
                 f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"cache_dir={workdir / 'cache'}", *extra]
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = workdir / f"{method}-s{seed}"
    outcome = run(cfg, out)
    ctx = build_context(cfg)   # the baseline is cached: this only rebuilds the evaluator
    test = ctx.task.data.test
    study = optuna.load_study(study_name=f"{method}-s{seed}", storage=cfg.search.storage)
    plans = {t.number: PrunePlan.from_dict(t.user_attrs["plan"]) for t in study.trials if "plan" in t.user_attrs}
    rows = []
    for c in outcome.report.trials:
        folder = out / "trials" / f"{c.trial:04d}"
        model = ctx.evaluator.rebuild(plans[c.trial], folder / "model.pt")   # weights only
        rows.append((c.val_accuracy, evaluate(model, test), folder / "model.onnx", (c.params, c.macs)))
    all_trials = optuna.load_study(study_name=f"{method}-s{seed}", storage=cfg.search.storage).trials
    done = [t for t in all_trials if t.datetime_start and t.datetime_complete]
    wall = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    base = outcome.report.baseline
    return {"method": method, "seed": seed, "cfg": cfg, "rows": rows, "wall": wall, "own_base_ms": base.latency_ms,
            "base_val": base.val_accuracy, "base_test": base.test_accuracy, "n_candidates": len(done)}


def side_by_side(runs: list[dict], rounds: int, seed: int) -> tuple[dict[Path, float], list[float]]:
    """Median latency of every run's ONNX models and the baseline's measurements, from one pass. Models
    of one architecture (same params and MACs: the same plan found by several searches, or a warm start
    every search tries) share the median of all their measurements: their latency is one number, and
    timing copies apart would score identical models differently by the machine's noise."""
    cfg: DictConfig = runs[0]["cfg"]
    profile, task = load_profile(cfg.hw), build_task(cfg.task)
    measurer = get_backend(profile)
    baseline, _ = load_baseline(task, Path(cfg.cache_dir))
    models = [path for r in runs for _, _, path, _ in r["rows"]]
    arch = {path: key for r in runs for _, _, path, key in r["rows"]}
    times: dict[Path, list[float]] = {path: [] for path in models}
    base_ms: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_onnx = export_onnx(baseline, task.data.example_batch(profile.batch_size), Path(tmp) / "baseline.onnx")
        measure = lambda path: measurer.measure(ExportedModel(path), profile, fresh=True).median_ms  # noqa: E731
        order = random.Random(seed)
        for _ in range(rounds):
            order.shuffle(models)
            for i, path in enumerate(models):
                if i % 8 == 0:
                    base_ms.append(measure(base_onnx))
                times[path].append(measure(path))
            base_ms.append(measure(base_onnx))
    pooled: dict[tuple, list[float]] = {}
    for path, t in times.items():
        pooled.setdefault(arch[path], []).extend(t)
    print(f"seed {seed}: {len(models)} models, {len(pooled)} distinct architectures (params, MACs)", flush=True)
    return {path: float(np.median(pooled[arch[path]])) for path in times}, base_ms


def hv(points: list[tuple[float, float]], base_accuracy: float) -> float:
    """Normalised hypervolume of (accuracy, latency ratio to the baseline) points."""
    return normalized_hypervolume([{"val_accuracy": a, "latency_ms": r} for a, r in points],
                                  ["val_accuracy", "latency_ms"], {"val_accuracy": base_accuracy, "latency_ms": 1.0})


def scores(points: list[tuple[float, float, float]], base_val: float, base_test: float) -> dict:
    """HV and best speedups of (val acc, test acc, latency ratio to the baseline) points."""
    return {"hv_val": hv([(v, r) for v, _, r in points], base_val),
            "hv_test": hv([(t, r) for _, t, r in points], base_test),
            "best_val": max((1 / r for v, _, r in points if v >= base_val - 0.01), default=1.0),
            "best_test": max((1 / r for _, t, r in points if t >= base_test - 0.01), default=1.0)}


def score_seed(runs: list[dict], rounds: int, seed: int) -> list[dict]:
    """One result per run of this seed, plus the union row, all on the side-by-side latencies."""
    latency, base_ms = side_by_side(runs, rounds, seed)
    base = float(np.median(base_ms))
    spread = 100 * (max(base_ms) - min(base_ms)) / base
    print(f"seed {seed}: side by side, baseline {base:.3f} ms (spread of its {len(base_ms)} measurements "
          f"{spread:.1f} %, CV {100 * np.std(base_ms) / np.mean(base_ms):.1f} %); each search's own baseline: "
          + ", ".join(f"{r['method']} {r['own_base_ms']:.3f}" for r in runs), flush=True)
    base_val, base_test = runs[0]["base_val"], runs[0]["base_test"]
    points = {r["method"]: [(v, t, latency[path] / base) for v, t, path, _ in r["rows"]] for r in runs}
    points["union"] = [p for r in runs for p in points[r["method"]]]
    walls = {r["method"]: r["wall"] for r in runs} | {"union": sum(r["wall"] for r in runs)}
    counts = {r["method"]: (len(r["rows"]), r["n_candidates"]) for r in runs}
    counts["union"] = (sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))
    results = [{"method": m, "seed": seed, "wall": walls[m], "base_ms": base, "trials": counts[m],
                **scores(pts, base_val, base_test)} for m, pts in points.items()]
    results.append({"method": "ceiling", "seed": seed, "wall": float("nan"), "base_ms": base, "trials": (0, 0),
                    **ceiling(points["union"], base_val, base_test)})
    return results


def ceiling(points: list[tuple[float, float, float]], base_val: float, base_test: float) -> dict:
    """HV of one imagined model as accurate as the most accurate trial and as fast as the fastest one.

    No front of these trials can score more. The fastest trial is the space's corner (every group at
    its highest ratio, which the uniform sweep always tries), so a search of this space cannot be
    faster (latency falls as channels go); it could only be more accurate than every trial of every method at that latency. A
    ceiling below 1.10x the uniform sweep's HV means no search of this space reaches that ratio."""
    fastest = min(r for _, _, r in points)
    return {"hv_val": hv([(max(v for v, _, _ in points), fastest)], base_val),
            "hv_test": hv([(max(t for _, t, _ in points), fastest)], base_test),
            "best_val": float("nan"), "best_test": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["tpe", "nsga2", "random", "uniform", "flops"],
                        choices=sorted(METHODS))
    parser.add_argument("--workdir", type=Path, default=None, help="keep results here (default: a temp dir)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every search")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side measurements of every model")
    args = parser.parse_args()
    logging.getLogger("autoprune").setLevel(logging.WARNING)
    _quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        results = []
        for s in args.seeds:
            runs = [one_search(workdir, m, s, args.trials, args.override) for m in args.methods]
            for x in score_seed(runs, args.rounds, s):
                results.append(x)
                print(f"done: {_run_line(x)}", flush=True)  # a cut-off run keeps what it measured
    print(f"\n{args.trials} trials per search, seeds {args.seeds}; mean ± std over seeds")
    print(f"{'method':10} {'HV val':>14} {'HV test':>14} {'best x (val<=1pt)':>18} {'best x (test<=1pt)':>19} {'wall s':>8}")
    for m in [*args.methods, "union", "ceiling"]:
        r = [x for x in results if x["method"] == m]
        f = lambda k: f"{np.mean([x[k] for x in r]):.3f} ± {np.std([x[k] for x in r]):.3f}"  # noqa: E731
        print(f"{m:10} {f('hv_val'):>14} {f('hv_test'):>14} {f('best_val'):>18} {f('best_test'):>19} "
              f"{np.mean([x['wall'] for x in r]):8.0f}")
    for ref in ("uniform", "flops"):
        if ref not in args.methods:
            continue
        print(f"\nHV ratio to {ref} (val / test), mean over seeds:")
        for m in [*args.methods, "union", "ceiling"]:
            pairs = [(x, next(y for y in results if y["method"] == ref and y["seed"] == x["seed"]))
                     for x in results if x["method"] == m]
            ratio = lambda k: np.mean([x[k] / y[k] if y[k] else float("nan") for x, y in pairs])  # noqa: E731
            print(f"  {m:10} {ratio('hv_val'):.3f} / {ratio('hv_test'):.3f}")
    print("\nper run:")
    for x in results:
        print(f"  {_run_line(x)}")


def _run_line(x: dict) -> str:
    return (f"{x['method']:10} seed {x['seed']}: HV val {x['hv_val']:.3f}, HV test {x['hv_test']:.3f}, best x val "
            f"{x['best_val']:.2f}, test {x['best_test']:.2f} (baseline {x['base_ms']:.3f} ms), {x['wall']:.0f} s, "
            f"trials {x['trials'][0]} / {x['trials'][1]}")


if __name__ == "__main__":
    main()
