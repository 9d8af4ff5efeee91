"""Import latencies that `trtexec --exportTimes=times.json` measured on a device, so a user can time
on a target that has TensorRT but no Python:

    trtexec --onnx=model.onnx --fp16 --exportTimes=times.json
    python -m autoprune.hw.trtexec times.json            # prints the LatencyStats JSON

The file is a JSON list with one record per timed iteration, e.g. {"startComputeMs": ...,
"computeMs": 0.41, "latencyMs": 0.52, ...}: computeMs is GPU compute only (what the tensorrt
backend times), latencyMs adds host<->device copies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autoprune.errors import AutopruneError, MeasurementError
from autoprune.hw.stats import LatencyStats

METRICS = ("computeMs", "latencyMs")


def load_trtexec_times(path: Path, metric: str = "auto", fingerprint: dict | None = None) -> LatencyStats:
    """LatencyStats of a trtexec `--exportTimes` file. `metric` is computeMs, latencyMs or auto
    (computeMs where the records have it, else latencyMs); records without the metric (a header
    record some versions write) are skipped."""
    if metric not in ("auto", *METRICS):
        raise MeasurementError(f"unknown trtexec metric '{metric}': use one of {['auto', *METRICS]}")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise MeasurementError(f"cannot read trtexec times {path} ({exc}): pass the file written by "
                               "trtexec --exportTimes=<file>") from None
    records = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
    if metric == "auto":
        metric = next((m for m in METRICS if any(m in r for r in records)), METRICS[0])
    samples = [r[metric] for r in records if isinstance(r.get(metric), (int, float))]
    if not samples:
        seen = sorted({k for r in records for k in r})
        raise MeasurementError(f"{path} has no '{metric}' timings (fields seen: {seen}): pass the JSON list "
                               "written by trtexec --exportTimes=<file>")
    env = {"runtime": "tensorrt", "source": "trtexec --exportTimes", "metric": metric, "file": Path(path).name,
           **(fingerprint or {})}
    return LatencyStats.from_samples(samples, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoprune.hw.trtexec", description=__doc__.split("\n\n")[0])
    parser.add_argument("times", type=Path, help="file written by trtexec --exportTimes")
    parser.add_argument("--metric", default="auto", choices=["auto", *METRICS])
    args = parser.parse_args(argv)
    try:
        stats = load_trtexec_times(args.times, args.metric)
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
