"""Memory over a long search: resident set size after every trial of one search, in one process.

    python benchmarks/memory.py [--trials 200] [--override key=value ...]

Runs a real search (Optuna on SQLite, MLflow sqlite store, ONNX Runtime measurement) on a tiny
model so that many trials fit in minutes: the digits ResNet at widths 8/16/16 on 16x16 inputs,
1 fine-tuning epoch per trial. The RSS of this process (VmRSS) is read when each trial's log line
is written. Printed: RSS at a few trial counts, the growth from the warm-up point (trial 20) to the
end, and the least-squares slope over that range in MB per 100 trials. A leak shows as a slope
that stays positive however long the search runs; allocator noise shows as a few MB either way.
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from autoprune.cli import _quiet_libraries, run
from autoprune.resources import resource_dir

TINY = ["task.model.widths=[8,16,16]", "task.data.size=16", "task.train.epochs=5", "recover.epochs=1",
        "search.warm_start=[]"]
TRIAL_LINE = re.compile(r"trial (\d+)/\d+")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


class RssPerTrial(logging.Handler):
    """Records (trial count, RSS MB, seconds) whenever the search logs a finished trial."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[int, float, float]] = []
        self.start = time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        found = TRIAL_LINE.match(record.getMessage())
        if found:
            self.samples.append((int(found.group(1)), rss_mb(), time.perf_counter() - self.start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="trials before growth is counted")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    args = parser.parse_args()
    _quiet_libraries()
    logger = logging.getLogger("autoprune")
    logger.setLevel(logging.INFO)
    probe = RssPerTrial()
    logger.addHandler(probe)
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(resource_dir("conf")),
                                                                     version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"search.n_trials={args.trials}",
                                           f"search.storage=sqlite:///{tmp}/optuna.db",
                                           f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"cache_dir={tmp}/cache",
                                           *args.override])
        before = rss_mb()
        run(cfg, Path(tmp) / "out")
    samples = probe.samples
    if len(samples) <= args.warmup:
        raise SystemExit(f"only {len(samples)} trials logged: run more than --warmup {args.warmup}")
    n, rss, _ = map(np.array, zip(*samples))
    late = n >= args.warmup
    slope = np.polyfit(n[late], rss[late], 1)[0] * 100
    print(f"\n{len(samples)} trials in {samples[-1][2]:.0f} s; RSS before the search {before:.0f} MB")
    print(f"{'after trial':>12} {'RSS MB':>8}")
    for k in sorted(k for k in {1, 10, args.warmup, len(samples) // 2, len(samples)} if k in n):
        print(f"{k:12d} {rss[n == k][0]:8.0f}")
    print(f"growth trial {args.warmup} -> {len(samples)}: {rss[-1] - rss[late][0]:+.1f} MB; "
          f"max {rss[late].max():.0f} MB; slope {slope:+.2f} MB per 100 trials")


if __name__ == "__main__":
    main()
