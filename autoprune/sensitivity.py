"""`python -m autoprune mode=sensitivity`: prune each group alone at several ratios, record the accuracy drop
and the measured latency, plot the curves, and write a prior search space (per-group max ratio).

For every searched group g and every ratio r in `sensitivity.ratios`, a copy of the start model (the
baseline, or the regularised baseline with recover.regulariser) loses r of group g only, with
`sensitivity.pattern` and `prune.importance`; optionally it is fine-tuned for `sensitivity.finetune_epochs`
(0: the raw drop, the classic analysis); then its validation accuracy is measured, and (with
`sensitivity.measure`) its ONNX export is timed on the hardware profile.

The prior: per group, the highest tested ratio such that it and every lower tested ratio keep the
validation accuracy drop within `sensitivity.max_drop` (0 when the lowest does not). It is written as a search space YAML (`prior.yaml`: the
current space's ratio grid, `per_group` highs from the prior) that `search_space=<path>/prior.yaml` uses.

Outputs in `<output_dir>/sensitivity/`: sensitivity.csv, sensitivity.json, sensitivity.png (accuracy drop
and latency vs ratio, one curve per group), prior.yaml. MLflow (tracking.*): a parent run tagged
autoprune.role=sensitivity with those artifacts and the baseline's metrics, and one nested run per group
(autoprune.role=sensitivity_group) with `val_accuracy`, `accuracy_drop`, `latency_ms`, `params` per ratio
(step = ratio in percent).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch_pruning as tp
import yaml

from autoprune.config import AppConfig
from autoprune.context import SearchContext, build_context
from autoprune.hw import export_model
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.recover import evaluate, finetune
from autoprune.schema import to_plain
from autoprune.search.space import build_space
from autoprune.track import Tracker
from autoprune.track.mlflow_tracker import ROLE

log = logging.getLogger("autoprune")

@dataclass(frozen=True)
class SensitivityPoint:
    group: str
    ratio: float
    val_accuracy: float
    accuracy_drop: float          # baseline val accuracy - this one (points, in [−1, 1])
    latency_ms: Optional[float]   # measured median, None when sensitivity.measure is false
    params: int


@dataclass
class SensitivityResult:
    baseline_accuracy: float
    baseline_latency_ms: Optional[float]
    baseline_params: int
    points: list[SensitivityPoint]
    prior: dict[str, float]                  # group -> highest ratio within max_drop
    max_drop: float
    pattern: str
    importance: str
    run_id: str = ""
    files: dict[str, Path] = field(default_factory=dict)   # csv, json, png, prior

    def curve(self, group: str) -> list[SensitivityPoint]:
        return sorted((p for p in self.points if p.group == group), key=lambda p: p.ratio)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(p.group for p in self.points))

    def table(self) -> str:
        ratios = sorted({p.ratio for p in self.points})
        width = max([len(g) for g in self.groups] + [5])
        head = f"{'group':<{width}}" + "".join(f"{f'drop@{r:g}':>11}" for r in ratios) + f"{'prior':>8}"
        rows = [head]
        for g in self.groups:
            by = {p.ratio: p for p in self.curve(g)}
            cells = "".join(f"{100 * by[r].accuracy_drop:>10.2f}%" if r in by else f"{'':>11}" for r in ratios)
            rows.append(f"{g:<{width}}{cells}{self.prior[g]:>8.2f}")
        return "\n".join(rows)


def _settings(cfg: AppConfig) -> dict:
    """`sensitivity:` as plain data (its ranges are checked by the schema), ratios sorted and unique."""
    s = to_plain(cfg.sensitivity)
    s["ratios"] = sorted({float(r) for r in s["ratios"]})
    return s


def _measure(ctx: SearchContext, model: torch.nn.Module) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return ctx.backend.measure(export_model(model, ctx.evaluator.example_input, Path(tmp)), ctx.profile).median_ms


def _plot(result: SensitivityResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = result.baseline_latency_ms is not None
    fig, axes = plt.subplots(1, 2 if measured else 1, figsize=(11 if measured else 6, 4.5), dpi=110, squeeze=False)
    ax = axes[0][0]
    for g in result.groups:
        curve = result.curve(g)
        ax.plot([0.0] + [p.ratio for p in curve], [0.0] + [100 * p.accuracy_drop for p in curve], "-o", ms=3,
                label=g)
    ax.axhline(100 * result.max_drop, color="k", ls="--", lw=0.8, label=f"max_drop {100 * result.max_drop:g} pt")
    ax.set_xlabel(f"ratio pruned ({result.pattern}, {result.importance}), this group only")
    ax.set_ylabel("validation accuracy drop (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    if measured:
        ax = axes[0][1]
        for g in result.groups:
            curve = result.curve(g)
            ax.plot([0.0] + [p.ratio for p in curve], [result.baseline_latency_ms] + [p.latency_ms for p in curve],
                    "-o", ms=3, label=g)
        ax.set_xlabel("ratio pruned, this group only")
        ax.set_ylabel("median latency (ms, measured)")
        ax.grid(alpha=0.3)
    fig.suptitle("sensitivity: each group pruned alone", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def prior_space(result: SensitivityResult, ctx: SearchContext, settings: dict) -> dict:
    """The prior as a search-space mapping: the current space's grid, per-group highs from the analysis."""
    step = min(d.range.step for d in ctx.space.dimensions)
    data = {
        "description": f"sensitivity prior: per-group highest ratio with val accuracy drop <= {result.max_drop:g} "
                       f"({result.pattern}, {result.importance}, ratios {settings['ratios']})",
        "groups": "all",
        "ratio": {"low": 0.0, "high": max(settings["ratios"]), "step": step},
        "per_group": {g: {"high": float(r)} for g, r in result.prior.items()},
        "importance": result.importance,
    }
    if result.pattern != "channel":
        data["patterns"] = [result.pattern]
    build_space(data, ctx.groups, result.importance, where="sensitivity prior",
                defaults=ctx.cfg.prune.searched())  # it must be a usable space
    return data


def _score_point(ctx: SearchContext, start: torch.nn.Module, name: str, ratio: float, settings: dict, importance: str,
                 base_acc: float) -> SensitivityPoint:
    """Prune one group of a copy of `start` at `ratio`, fine-tune it as configured, score and time it."""
    evaluator = ctx.evaluator
    space = ctx.space
    plan = PrunePlan({name: GroupPlan(ratio, settings["pattern"], space.nm, space.block)}, importance)
    model = copy.deepcopy(start)
    torch.manual_seed(evaluator.recover.seed)
    pruned = evaluator.engine.apply(model, plan)
    if settings["finetune_epochs"] > 0:
        finetune(model, ctx.task.data.train, evaluator.recover.train, epochs=settings["finetune_epochs"],
                 masks=pruned.masks)
    acc = evaluate(model, ctx.task.data.val)
    latency = _measure(ctx, model) if settings["measure"] else None
    _, params = tp.utils.count_ops_and_params(model, evaluator.example_input)
    log.info("  %s @ %.2f: val %.2f%% (drop %.2f pt)%s", name, ratio, 100 * acc, 100 * (base_acc - acc),
             f", {latency:.3f} ms" if latency is not None else "")
    return SensitivityPoint(name, ratio, acc, base_acc - acc, latency, int(params))


def _prior(points: list[SensitivityPoint], names: list[str], max_drop: float) -> dict[str, float]:
    """Per group, the highest ratio such that it and every lower tested ratio stay within `max_drop`."""
    prior = {}
    for name in names:
        prior[name] = 0.0
        for p in sorted((p for p in points if p.group == name), key=lambda p: p.ratio):
            if p.accuracy_drop > max_drop:
                break
            prior[name] = p.ratio
    return prior


def _write_files(result: SensitivityResult, ctx: SearchContext, settings: dict, out: Path) -> dict[str, Path]:
    """sensitivity.csv / .json / .png and prior.yaml (a search space) under `out`."""
    files = {"csv": out / "sensitivity.csv", "json": out / "sensitivity.json", "png": out / "sensitivity.png",
             "prior": out / "prior.yaml"}
    with files["csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group", "ratio", "val_accuracy", "accuracy_drop", "latency_ms", "params"])
        writer.writerow(["baseline", 0.0, result.baseline_accuracy, 0.0, result.baseline_latency_ms,
                         result.baseline_params])
        for p in result.points:
            writer.writerow([p.group, p.ratio, p.val_accuracy, p.accuracy_drop, p.latency_ms, p.params])
    files["json"].write_text(json.dumps({
        "baseline": {"val_accuracy": result.baseline_accuracy, "latency_ms": result.baseline_latency_ms,
                     "params": result.baseline_params},
        "settings": settings, "importance": result.importance, "points": [asdict(p) for p in result.points],
        "prior": result.prior}, indent=2))
    _plot(result, files["png"])
    files["prior"].write_text(yaml.safe_dump(prior_space(result, ctx, settings), sort_keys=False))
    return files


def run_sensitivity(cfg: AppConfig, output_dir: Path) -> SensitivityResult:
    """Run the analysis for `cfg` (the same config a search takes, plus `sensitivity:`); writes files under
    `output_dir/sensitivity/` and logs to MLflow. Returns the result (points, prior, files, MLflow run id)."""
    cfg = AppConfig.of(cfg)
    settings = _settings(cfg)
    ctx = build_context(cfg)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)
    out = Path(output_dir) / "sensitivity"
    out.mkdir(parents=True, exist_ok=True)
    evaluator = ctx.evaluator
    start = evaluator.start_model()
    importance = str(cfg.prune.importance)
    space = ctx.space
    pattern = settings["pattern"]
    groups = {g.name: g for g in ctx.groups}
    names = [n for n in space.groups if n in groups]
    if settings["max_groups"] is not None:
        names = names[:settings["max_groups"]]

    run_id = tracker.start_root(f"sensitivity-{ctx.task.name}", {ROLE: "sensitivity", "autoprune.task": ctx.task.name})
    status = "FAILED"
    try:
        tracker.log(run_id, params={"task": ctx.task.name, "hw": ctx.profile.name, "pattern": pattern,
                                    "importance": importance, "ratios": settings["ratios"],
                                    "finetune_epochs": settings["finetune_epochs"],
                                    "max_drop": settings["max_drop"], "groups": len(names)})
        base_acc = evaluate(start, ctx.task.data.val)
        base_lat = _measure(ctx, start) if settings["measure"] else None
        _, base_params = tp.utils.count_ops_and_params(start, evaluator.example_input)
        tracker.log(run_id, metrics={"baseline_val_accuracy": base_acc, "baseline_params": base_params,
                                     **({"baseline_latency_ms": base_lat} if base_lat is not None else {})})
        log.info("sensitivity of %d groups at ratios %s (%s, %s): baseline val %.2f%%%s", len(names),
                 settings["ratios"], pattern, importance, 100 * base_acc,
                 f", {base_lat:.3f} ms" if base_lat is not None else "")
        points: list[SensitivityPoint] = []
        for name in names:
            child = tracker.start_child(f"group-{name}", "sensitivity_group",
                                        {"autoprune.group": name})
            tracker.log(child, params={"group": name, "channels": groups[name].channels, "kind": groups[name].kind,
                                       "pattern": pattern, "importance": importance})
            for ratio in settings["ratios"]:
                point = _score_point(ctx, start, name, ratio, settings, importance, base_acc)
                points.append(point)
                tracker.log(child, step=int(round(100 * ratio)), metrics={
                    "val_accuracy": point.val_accuracy, "accuracy_drop": point.accuracy_drop,
                    "params": point.params, **({"latency_ms": point.latency_ms} if point.latency_ms is not None else {})})
            tracker.end(child)
        prior = _prior(points, names, settings["max_drop"])
        result = SensitivityResult(base_acc, base_lat, int(base_params), points, prior, settings["max_drop"],
                                   pattern, importance, run_id)
        files = result.files = _write_files(result, ctx, settings, out)
        tracker.log_artifacts(run_id, files.values(), "sensitivity")
        tracker.log(run_id, metrics={f"prior.{g}": r for g, r in prior.items()})
        status = "FINISHED"
        return result
    finally:
        tracker.end(run_id, status)


__all__ = ["SensitivityPoint", "SensitivityResult", "prior_space", "run_sensitivity"]
