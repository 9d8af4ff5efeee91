"""Architecture coverage: does autoprune prune, export, check and time every torchvision classifier?

    python benchmarks/architectures.py [--models resnet18,shufflenet_v2_x0_5] [--jobs 2] [--out results.jsonl]
    python benchmarks/architectures.py --table results.jsonl [--markdown]     # print a finished run again
    python benchmarks/architectures.py --table a=first.jsonl b=later.jsonl    # runs merged: the latest per model

Needs torchvision (`pip install 'autoprune[zoo]'`, see docs/ARCHITECTURES.md). For every builder in
`torchvision.models.list_models(module=torchvision.models)` (the classification zoo), with random
weights and no training: build it at its minimum input size (from its weights' metadata, at least
`--min-size` pixels a side), find its groups exactly as a search does (`make_pruner` with the output
layers ignored, the `default` search space), prune a copy uniformly at each ratio with the search's
PruningEngine, export it to ONNX, check that ONNX Runtime's outputs equal PyTorch's, and time it on
the hardware profile (default cpu-ort-1t; `--quick` lowers warm-up and repeats). The groups the
pre-flight (autoprune.preflight.probe) finds prunable are counted too.

Each model runs in its own child process with a wall-clock limit and a memory limit (RLIMIT_DATA), so
one pathological model ends as a failure with its reason instead of taking the machine down. The
models of one run time one at a time (a lock of their own, not the machine-wide one). Results
go to `--out` (one JSON line per model) as they finish; the table and the summary line are printed
at the end (and by --table).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATIOS = (0.25, 0.5, 0.75)
ONNX_LIMIT = 2 * 1024 ** 3   # protobuf's limit: autoprune writes one self-contained ONNX file


def zoo_models() -> list[tuple[str, int, tuple[int, int]]]:
    """(name, parameters, minimum input size) of every torchvision classification builder, smallest first."""
    import torchvision.models as models

    out = []
    for name in models.list_models(module=models):
        meta = list(models.get_model_weights(name))[0].meta
        out.append((name, int(meta["num_params"]), tuple(meta.get("min_size", (1, 1)))))
    return sorted(out, key=lambda row: (row[1], row[0]))


# ------------------------------------------------------------------------------------ one model
def calibrate_norms(model, example, batches: int = 2, batch_size: int = 8) -> None:
    """Give BatchNorm the running statistics of its real inputs (random ones here), then eval mode.
    Untrained BatchNorm (mean 0, variance 1) lets activations drift through deep nets to denormal floats,
    which CPUs compute many times slower: the dense latencies, and so the speedups, would be wrong."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.eval()  # only the norms train: auxiliary heads (inception_v3) and dropout stay as in inference
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
        m.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch_size, *example.shape[1:]))
    for m in norms:
        m.momentum = 0.1
    model.eval()


def run_model(name: str, size: int, profile_overrides: dict, ratios, out: Path, preflight_s: float,
              rounds: int = 1) -> None:
    """Everything for one model, in this (child) process; writes the result JSON after every step.
    `rounds`: dense and pruned model are timed alternately this many times per ratio, the fastest of
    each counts (a shared machine's load spikes then hit both)."""
    import torch
    import torch_pruning as tp
    import torchvision.models as models

    from autoprune.hw import export_model, get_backend, load_profile
    from autoprune.preflight import check_model, output_of, probe
    from autoprune.prune import PruningEngine, make_pruner, output_layers
    from autoprune.search.space import load_space

    torch.set_num_threads(1)
    result: dict = {"model": name, "input": size, "ratios": {}}

    def save(**kw):
        result.update(kw)
        out.write_text(json.dumps(result))

    save(stage="build")
    torch.manual_seed(0)
    model = models.get_model(name, weights=None)
    example = torch.randn(1, 3, size, size)
    calibrate_norms(model, example)
    profile = dataclasses.replace(load_profile("cpu-ort-1t"), **profile_overrides)
    backend = get_backend(profile)
    save(stage="trace")
    pruner = make_pruner(model, example, output_layers(model, example), profile.round_to)
    groups = pruner.groups(model)
    space = load_space("default", groups)
    macs, params = tp.utils.count_ops_and_params(model, example)
    expected = tuple(output_of(model, example).shape)
    save(groups=len(groups), macs=int(macs), params=int(params), stage="dense")
    with tempfile.TemporaryDirectory() as tmp:
        failure = check_model(model, example, Path(tmp) / "check.onnx")
        if failure:
            save(stage="dense", error=f"unpruned model: {failure}")
            return
        dense = export_model(model, example, Path(tmp) / "dense")
        dense_ms = [backend.measure(dense, profile).median_ms]  # again before each ratio: the fastest counts
        save(dense_ms=min(dense_ms))
        for ratio in ratios:
            row: dict = {}
            result["ratios"][str(ratio)] = row
            save(stage=f"prune {ratio}")
            pruned = copy.deepcopy(model)
            try:
                PruningEngine(pruner).apply(pruned, space.uniform(ratio))
            except Exception as exc:  # noqa: BLE001  recorded, the next ratio goes on
                row["error"] = f"prune: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                save()
                continue
            row["macs"] = int(tp.utils.count_ops_and_params(pruned, example)[0])
            save(stage=f"check {ratio}")
            failure = check_model(pruned, example, Path(tmp) / "check.onnx", expected)
            if failure:
                row["error"] = failure
                save()
                continue
            save(stage=f"measure {ratio}")
            artifact = export_model(pruned, example, Path(tmp) / f"r{ratio}")
            pruned_ms = []
            for _ in range(rounds):   # dense and pruned alternate; each keeps its fastest median
                dense_ms.append(backend.measure(dense, profile).median_ms)
                pruned_ms.append(backend.measure(artifact, profile).median_ms)
            row["ms"] = min(pruned_ms)
            row["speedup"] = min(dense_ms) / row["ms"]
            save(dense_ms=min(dense_ms))
            del pruned
    for row in result["ratios"].values():
        if "ms" in row:
            row["speedup"] = min(dense_ms) / row["ms"]
    save()
    if all("error" not in row for row in result["ratios"].values()):
        save(prunable=len(groups), stage="done")  # every group pruned at every ratio: nothing more to probe
        return
    save(stage="preflight")
    report = probe(model, example, pruner, ratios, deadline=time.monotonic() + preflight_s)
    save(prunable=len(report.prunable), excluded=dict(list(report.excluded.items())[:5]), stage="done")


# ------------------------------------------------------------------------------------ the parent
def _limits(memory_gb: float, cpu_s: int):
    def apply() -> None:
        limit = int(memory_gb * 1024 ** 3)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 30))
        os.setsid()
    return apply


def run_child(name: str, size: int, args, workdir: Path) -> dict:
    out = workdir / f"{name}.json"
    cmd = [sys.executable, __file__, "--child", name, "--size", str(size), "--child-out", str(out),
           "--ratios", *map(str, args.ratios), "--preflight-s", str(args.preflight_s), "--rounds", str(args.rounds)] + (["--quick"] if args.quick else [])
    start = time.monotonic()
    env = {**os.environ, "AUTOPRUNE_LOCK_DIR": str(workdir)}  # this run's models time one at a time
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=args.timeout_s,
                              env=env, preexec_fn=_limits(args.memory_gb, int(args.timeout_s * 1.5)))
        tail, code = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else [], proc.returncode
    except subprocess.TimeoutExpired:
        tail, code = [], "timeout"
    result = json.loads(out.read_text()) if out.is_file() else {"model": name, "input": size, "ratios": {}}
    result["seconds"] = round(time.monotonic() - start, 1)
    if code == "timeout":
        result["error"] = f"over the {args.timeout_s:.0f} s limit at stage '{result.get('stage')}'"
    elif code != 0 and "error" not in result:
        why = (tail[0][:300] if tail else f"exit status {code}")
        if "can't allocate memory" in why or "MemoryError" in why or code == -9:
            why = f"over the {args.memory_gb:g} GB memory limit ({why})"
        result["error"] = f"at stage '{result.get('stage')}': {why}"
    return result


def child_main(args) -> None:
    overrides = {"warmup_runs": 3, "min_repeats": 10, "max_seconds": 0.3} if args.quick else {}
    try:
        run_model(args.child, args.size, overrides, args.ratios, Path(args.child_out), args.preflight_s, args.rounds)
    except BaseException as exc:  # the parent reads the last line
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400], flush=True)
        raise SystemExit(3)


# ------------------------------------------------------------------------------------ the table
def passes(result: dict, ratios=RATIOS) -> bool:
    """The target: prunes at every ratio, exports, matches, and runs faster at 0.5 than unpruned."""
    rows = result.get("ratios", {})
    ok = all(str(r) in rows and "error" not in rows[str(r)] for r in ratios) and "error" not in result
    return ok and rows.get("0.5", {}).get("speedup", 0.0) > 1.0


def reason(result: dict) -> str:
    if result.get("skipped"):
        return f"skipped: {result['skipped']}"
    if result.get("error"):
        return result["error"]
    errors = [f"{r}: {row['error']}" for r, row in result.get("ratios", {}).items() if "error" in row]
    if errors:
        return "; ".join(dict.fromkeys(errors))
    if not passes(result):
        return "not faster at 0.5"
    return ""


def table(results: list[dict], ratios=RATIOS, markdown: bool = False) -> str:
    """One row per result; a `run` column when the results carry the run they come from (`_run`)."""
    runs = any("_run" in res for res in results)
    head = ["model", "input", "groups", "prunable", "GMACs"] + [f"MACs/speedup {r}" for r in ratios] + ["ok", "failure"]
    head += ["run"] if runs else []
    lines = []
    for res in results:
        cells = [res["model"], str(res.get("input", "")), str(res.get("groups", "")), str(res.get("prunable", "")),
                 f"{res['macs'] / 1e9:.3f}" if "macs" in res else ""]
        for r in ratios:
            row = res.get("ratios", {}).get(str(r), {})
            if "speedup" in row:
                cells.append(f"{row['macs'] / res['macs']:.2f} / {row['speedup']:.2f}x")
            else:
                cells.append("fail" if "error" in row else "")
        cells += ["yes" if passes(res, ratios) else "no", reason(res)] + ([res.get("_run", "")] if runs else [])
        lines.append(cells)
    n_ok = sum(passes(r, ratios) for r in results)
    summary = (f"{n_ok} of {len(results)} torchvision classification builders prune at {', '.join(map(str, ratios))}, "
               f"export, match and run faster at 0.5 ({sum(1 for r in results if r.get('skipped'))} skipped)")
    if markdown:
        md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in lines]
        return "\n".join(md + ["", summary])
    widths = [max(len(h), *(len(c[i]) for c in lines)) if h != "failure" else 0 for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(c) for c in lines] + [summary])


def merged(files: list[str]) -> list[dict]:
    """Per model the result of the last file that has one (with `_run`: its label when several files are
    given), in zoo order when torchvision is importable, else in order of appearance."""
    latest: dict[str, dict] = {}
    for item in files:
        label, _, path = item.rpartition("=")
        for line in Path(path).read_text().splitlines():
            if line.strip():
                result = json.loads(line)
                if len(files) > 1:
                    result["_run"] = label or Path(path).stem
                latest[result["model"]] = result
    try:
        order = {name: i for i, (name, *_) in enumerate(zoo_models())}
    except ImportError:
        return list(latest.values())
    return sorted(latest.values(), key=lambda r: order.get(r["model"], len(order)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: the whole zoo)")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--min-size", type=int, default=64, help="input side at least this many pixels")
    parser.add_argument("--jobs", type=int, default=1, help="models at once (each in its own process)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="wall-clock limit per model")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="memory limit per model (RLIMIT_DATA)")
    parser.add_argument("--preflight-s", type=float, default=120.0, help="time for per-group checks of a failing model")
    parser.add_argument("--quick", action="store_true", help="timing with 3 warm-up runs, 10+ repeats, 0.3 s")
    parser.add_argument("--rounds", type=int, default=3, help="dense / pruned timings alternated per ratio")
    parser.add_argument("--out", default="architectures.jsonl", help="results, one JSON line per model (appended)")
    parser.add_argument("--table", nargs="+", metavar="[LABEL=]FILE",
                        help="print the table of finished --out files and exit: per model the result of the last "
                             "file that has one, labelled with its run (LABEL, default the file's name)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    if args.table:
        print(table(merged(args.table), tuple(args.ratios), args.markdown))
        return
    zoo = zoo_models()
    wanted = [m for m in args.models.split(",") if m]
    unknown = sorted(set(wanted) - {name for name, *_ in zoo})
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}: choose from torchvision.models.list_models()")
    todo = [row for row in zoo if not wanted or row[0] in wanted]
    out = Path(args.out)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {}
        for name, n_params, min_size in todo:
            size = max(args.min_size, *min_size)
            if 4 * n_params > ONNX_LIMIT:
                result = {"model": name, "input": size, "ratios": {}, "params": n_params,
                          "skipped": f"{n_params / 1e6:.0f} M parameters: its ONNX file would pass protobuf's 2 GB "
                                     "limit (autoprune exports one self-contained file)"}
                results.append(result)
                with out.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                continue
            futures[pool.submit(run_child, name, size, args, Path(tmp))] = name
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            results.append(result)
            with out.open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"{result['model']}: {'ok' if passes(result, tuple(args.ratios)) else reason(result)} "
                  f"({result['seconds']} s)", flush=True)
    order = {name: i for i, (name, *_) in enumerate(zoo)}
    print(table(sorted(results, key=lambda r: order[r["model"]]), tuple(args.ratios), args.markdown))


if __name__ == "__main__":
    main()
