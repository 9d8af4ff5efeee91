"""Does rung 0 rank candidates like the full recovery does? Kendall τ between rung-0 val accuracy and
full-fidelity val accuracy over random plans.

    python benchmarks/rung0_tau.py [--plans 20] [--seed 0] [--workdir DIR] [--label digits]
                                   [--override KEY=VALUE ...]

Each plan's scores are appended to DIR/rung0_tau-<label>-s<seed>.json as they come; with --workdir, a
second run continues where the first stopped (same seed and --plans: the same plans), and --plans 0
only prints the table of what is there. On a shared machine, OMP_NUM_THREADS=1 keeps PyTorch from oversubscribing it.

For each of `--plans` random plans (every searched dimension an independent ratio on the search space's
grid), on the task of the default config (plus `--override`s):

- raw:   the pruned model's val accuracy, no recovery at all;
- rung 0 (autoprune.rung0.Rung0Scorer): adaptive BN for models with BatchNorm, a short fine-tune without;
- full:  the search's own evaluation (CandidateEvaluator.evaluate: recover.epochs of fine-tuning, 3 by default).

Columns: τ (Kendall's tau-b, scipy) of raw and of rung 0 against full, its p-value, the share of the
full-fidelity top quarter that survives when rung 0 promotes its best half, and the mean seconds per
plan of each fidelity. MobileNetV2 (25 groups), as in docs/BENCHMARKS.md:

    python benchmarks/rung0_tau.py --label mobilenetv2 --override \
        task.model._target_=autoprune.tasks.zoo.mobilenet_v2 '~task.model.widths' '~task.model.blocks'
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from scipy.stats import kendalltau

from autoprune.cli import _quiet_libraries
from autoprune.context import build_context
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.recover import evaluate
from autoprune.resources import resource_dir
from autoprune.rung0 import Rung0Config, Rung0Scorer


def random_plan(space, rng: random.Random) -> PrunePlan:
    groups = {}
    for d in space.dimensions:
        n = int(round((d.range.high - d.range.low) / d.range.step))
        ratio = round(d.range.low + rng.randint(0, n) * d.range.step, 10)
        groups.update({g: GroupPlan(ratio) for g in d.groups})
    return PrunePlan(groups, space.importances[0])


def promoted_recall(rung0: list[float], full: list[float]) -> float:
    """Share of the full-fidelity top quarter among the rung-0 top half (what successive halving keeps)."""
    n = len(full)
    top = set(sorted(range(n), key=lambda i: -full[i])[:max(1, n // 4)])
    kept = set(sorted(range(n), key=lambda i: -rung0[i])[:max(1, n // 2)])
    return len(top & kept) / len(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--label", default="digits")
    parser.add_argument("--bn-batches", type=int, default=8)
    parser.add_argument("--override", nargs="*", default=[])
    args = parser.parse_args()
    _quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        record = workdir / f"rung0_tau-{args.label}-s{args.seed}.json"
        rows = json.loads(record.read_text()) if record.is_file() else []
        if args.plans > len(rows):
            rows = score_plans(args, workdir, record, rows)
    print_table(args, rows)


def score_plans(args, workdir: Path, record: Path, rows: list[dict]) -> list[dict]:
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=[f"seed={args.seed}", f"cache_dir={workdir / 'cache'}", *args.override])
    ctx = build_context(cfg)
    ev = ctx.evaluator
    scorer = Rung0Scorer(ev, Rung0Config(bn_batches=args.bn_batches, measure=False))
    rng = random.Random(args.seed)
    plans = [random_plan(ctx.space, rng) for _ in range(args.plans)]   # the same plans on every run of a seed
    for i, plan in enumerate(plans[len(rows):], start=len(rows)):
        t0 = time.perf_counter()
        raw = _raw_accuracy(ev, plan)
        t1 = time.perf_counter()
        r0 = scorer.score(plan)
        t2 = time.perf_counter()
        full = ev.evaluate(plan, workdir / "trials" / f"{i:03d}")
        t3 = time.perf_counter()
        rows.append({"plan": plan.to_dict(), "raw": raw, "rung0": r0.val_accuracy, "method": r0.method,
                     "full": full.val_accuracy, "epochs": ev.recover.train.epochs, "params": full.params,
                     "seconds_raw": t1 - t0, "seconds_rung0": t2 - t1, "seconds_full": t3 - t2})
        record.write_text(json.dumps(rows, indent=1))
        print(f"plan {i + 1}/{args.plans}: raw {100 * raw:.2f}% | rung0 {100 * r0.val_accuracy:.2f}% "
              f"({t2 - t1:.1f}s) | full {100 * full.val_accuracy:.2f}% ({t3 - t2:.1f}s) | {full.params:,} params",
              flush=True)
    return rows


def print_table(args, rows: list[dict]) -> None:
    if len(rows) < 2:
        raise SystemExit(f"{len(rows)} plan(s) scored: Kendall's τ needs at least 2 (raise --plans)")
    full = [r["full"] for r in rows]
    method = rows[-1].get("method", "rung 0")
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    print()
    print(f"task {args.label}, seed {args.seed}, {len(rows)} random plans, rung 0 = {method}; "
          f"val accuracy full: {100 * min(full):.1f}-{100 * max(full):.1f}%")
    print("| score | τ vs full | p | top-25 % kept by best-50 % | s / plan |")
    print("| --- | --- | --- | --- | --- |")
    for key, name in (("raw", "raw (pruned, no recovery)"), ("rung0", f"rung 0 ({method})")):
        tau, p = kendalltau([r[key] for r in rows], full)
        print(f"| {name} | {tau:.3f} | {p:.2g} | {100 * promoted_recall([r[key] for r in rows], full):.0f} % | "
              f"{mean('seconds_' + key):.2f} |")
    print(f"| full ({rows[-1].get('epochs', 3)}-epoch fine-tune, measured) | 1 | — | — | {mean('seconds_full'):.2f} |")


def _raw_accuracy(ev, plan: PrunePlan) -> float:
    torch.manual_seed(ev.recover.seed)
    model = copy.deepcopy(ev.start_model())
    ev.engine.apply(model, plan)
    return evaluate(model.eval(), ev.data.val)


if __name__ == "__main__":
    main()
