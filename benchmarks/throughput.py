"""Throughput of the default search: per-trial time breakdown and trials per minute with 1 vs 2
workers sharing one study on PostgreSQL.

    python benchmarks/throughput.py [--trials 16] [--pg postgresql://postgres@127.0.0.1:5432] [--threads 0]

Workers are real `python -m autoprune` processes in one run group (search.run_name) on a fresh
database, each group in a fresh study with the same sampler seed (so both do comparable work); the
baseline is trained and cached first. Trials/min is taken from the trials' own start
and end times (steady state, start-up excluded) and, in brackets, over the whole wall time.
--threads N sets OMP_NUM_THREADS for every worker (0 = torch's default, one per core).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy
from mlflow.tracking import MlflowClient


def database(pg: str) -> str:
    name = f"autoprune_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(f"{pg}/test", isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    return f"{pg}/{name}"


def drop(pg: str, url: str) -> None:
    admin = sqlalchemy.create_engine(f"{pg}/test", isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))


def launch(workdir: Path, url: str, group: str, trials: int, n: int, threads: int, extra: list[str]) -> float:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    base = [sys.executable, "-m", "autoprune", f"search.storage={url}", f"search.study_name=bench-{group}",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"cache_dir={workdir / 'cache'}", *extra]
    start = time.perf_counter()
    procs = [subprocess.Popen([*base, f"search.run_name={group}", f"search.n_trials={trials}",
                               "search.warm_start=[]", f"hydra.run.dir={workdir / f'{group}-{i}'}"],
                              cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed:\n{err[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--override", nargs="*", default=[])
    args = parser.parse_args()
    url = database(args.pg)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            warm = subprocess.run([sys.executable, "-m", "autoprune", f"search.storage={url}",
                                   "search.study_name=bench", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
                                   f"cache_dir={workdir / 'cache'}", "search.n_trials=0", *args.override,
                                   f"hydra.run.dir={workdir / 'warm'}"], cwd=workdir, capture_output=True, text=True)
            if warm.returncode:
                raise SystemExit(warm.stderr[-3000:])
            walls = {n: launch(workdir, url, f"w{n}", args.trials, n, args.threads, args.override) for n in (1, 2)}
            # each group has its own fresh study (same sampler seed): equal work, comparable rates
            trials = [t for n in (1, 2) for t in optuna.load_study(study_name=f"bench-w{n}", storage=url).get_trials()]
            client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
            exp = client.get_experiment_by_name("autoprune")
            runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
            breakdown = [runs[t.user_attrs["mlflow_run_id"]].data.metrics for t in trials
                         if t.user_attrs.get("run_group") == "w1" and t.state == optuna.trial.TrialState.COMPLETE]
    finally:
        drop(args.pg, url)
    print(f"\n{args.trials} trials per run group; OMP_NUM_THREADS={args.threads or 'default'}")
    print(f"{'workers':>7} {'trials':>6} {'trials/min (steady)':>20} {'(wall)':>8}")
    rates = {}
    for n in (1, 2):
        group = [t for t in trials if t.user_attrs.get("run_group") == f"w{n}"
                 and t.state == optuna.trial.TrialState.COMPLETE]
        span = (max(t.datetime_complete for t in group) - min(t.datetime_start for t in group)).total_seconds()
        rates[n] = 60 * len(group) / span
        print(f"{n:>7} {len(group):>6} {rates[n]:>20.1f} {60 * len(group) / walls[n]:>8.1f}")
    print(f"speed-up of 2 workers: {rates[2] / rates[1]:.2f}x (steady)")
    stages = ["prune", "measure", "finetune", "score", "export", "artifact", "log"]
    mean = {k: float(np.mean([r[f"seconds_{k}"] for r in breakdown])) for k in stages}
    total = sum(mean.values())
    print("\nper-trial time, 1 worker (mean seconds, share of the trial):")
    for k in stages:
        print(f"  {k:10} {mean[k]:7.3f}  {100 * mean[k] / total:5.1f} %")
    print(f"  {'total':10} {total:7.3f}   (export + measure: {100 * (mean['export'] + mean['measure']) / total:.1f} %)")


if __name__ == "__main__":
    main()
