"""`mode=pick`: choose the model to deploy, register it in the MLflow Model Registry, export its ONNX.

Rule: among all completed trials that meet every given constraint (latency <= pick.max_latency_ms,
val accuracy >= pick.min_accuracy, params <= pick.max_params), take the highest validation accuracy;
ties go to the lower latency. Selection never looks at test accuracy.

What is registered: the trial's ONNX model (the file that was measured), logged once as `deploy_model`
with a signature and an input example of real validation inputs, and its model card
(autoprune.model_card) as version tags, description and MLmodel metadata. A model outside the Pareto
front is scored on the test split (with ONNX Runtime) first. Picking a trial that already has a
version of the registered model moves the alias back to that version: no duplicate.

When the search's hardware profile is a TensorRT one (and `pick.engine` is true), pick also builds the
TensorRT engine of that ONNX, saves it next to the export (`deploy/model.engine`), logs it on the trial's run
(`tensorrt/model.engine`) and describes it in the version tag `autoprune.tensorrt_engine`. That needs
TensorRT and the GPU here; without them pick refuses before anything is written. The engine build itself
(TensorRTBackend.build_engine) runs only on a GPU machine: it was not run where this was written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
import optuna

from autoprune.config import AppConfig
from autoprune.errors import AutopruneError, ConfigError, MeasurementError, first_line
from autoprune.hw.profile import HardwareProfile, load_profile
from autoprune.hw.tensorrt_backend import TensorRTBackend, TensorRTEngine, check_tensorrt
from autoprune.model_card import RUN_TAG, STUDY_TAG, TRIAL_TAG, ModelCard, ModelInput
from autoprune.report.collect import Candidate, ReportData, collect, record_test_accuracy
from autoprune.search.existing import load_existing, study_config
from autoprune.tasks import build_task
from autoprune.tasks.data import DataSplits

from autoprune.track import Tracker

log = logging.getLogger("autoprune")


@dataclass(frozen=True)
class PickRule:
    max_latency_ms: Optional[float] = None
    min_accuracy: Optional[float] = None
    max_params: Optional[int] = None

    def violation(self, c: Candidate) -> float:
        """0 when feasible; otherwise the sum of relative violations (for 'nearest' listings)."""
        v = 0.0
        if self.max_latency_ms is not None and c.latency_ms > self.max_latency_ms:
            v += c.latency_ms / self.max_latency_ms - 1
        if self.min_accuracy is not None and c.val_accuracy < self.min_accuracy:
            v += (self.min_accuracy - c.val_accuracy) / max(self.min_accuracy, 1e-9)
        if self.max_params is not None and c.params > self.max_params:
            v += c.params / self.max_params - 1
        return v

    def describe(self) -> str:
        parts = [f"pick.max_latency_ms={self.max_latency_ms}" if self.max_latency_ms is not None else None,
                 f"pick.min_accuracy={self.min_accuracy}" if self.min_accuracy is not None else None,
                 f"pick.max_params={self.max_params}" if self.max_params is not None else None]
        return " and ".join(p for p in parts if p) or "no constraint"


class NoFeasibleModel(AutopruneError):
    pass


def choose(candidates: Sequence[Candidate], rule: PickRule) -> tuple[Candidate, list[Candidate]]:
    """(chosen, feasible) per the module's rule; raises NoFeasibleModel listing the nearest models."""
    feasible = [c for c in candidates if rule.violation(c) == 0.0]
    if not feasible:
        nearest = sorted(candidates, key=rule.violation)[:3]
        listing = "; ".join(f"{c.label} (val {100 * c.val_accuracy:.2f}%, {c.latency_ms:.3f} ms, {c.params:,} params)"
                            for c in nearest)
        raise NoFeasibleModel(f"no model meets {rule.describe()}; nearest: {listing or 'none (no completed trial)'}"
                              " — relax a constraint or run more trials")
    return min(feasible, key=lambda c: (-c.val_accuracy, c.latency_ms)), feasible


@dataclass(frozen=True)
class PickOutcome:
    chosen: Candidate
    n_feasible: int
    model_name: str
    version: str
    alias: str
    onnx_path: Path
    reused: bool = False          # the trial already had this version: the alias moved back to it
    card: Optional[ModelCard] = None
    engine_path: Optional[Path] = None   # the TensorRT engine saved next to the ONNX (TensorRT profiles)


ENGINE_TAG = "autoprune.tensorrt_engine"   # version tag: the engine's artifact, TensorRT version, GPU, precision
ENGINE_ARTIFACT = "tensorrt"               # the trial run's artifact folder holding model.engine


N_EXAMPLES = 4   # validation inputs logged as the model's input example


def run_pick(cfg: AppConfig) -> PickOutcome:
    study, tracker = load_existing(cfg)
    data = collect(study, tracker, cfg.search.hv_max_drop)
    p = cfg.pick
    rule = PickRule(p.max_latency_ms, p.min_accuracy, p.max_params)
    chosen, feasible = choose(data.trials, rule)
    log.info("picked %s: highest val accuracy (%.2f%%) among %d of %d models meeting %s; %.3f ms (%.2fx), %s params",
             chosen.label, 100 * chosen.val_accuracy, len(feasible), len(data.trials), rule.describe(),
             chosen.latency_ms, data.baseline.latency_ms / chosen.latency_ms, f"{chosen.params:,}")
    if chosen.run_id is None:
        raise ConfigError(f"trial {chosen.trial} has no MLflow run in experiment '{cfg.tracking.experiment}': use the "
                          "tracking.uri and tracking.experiment the search ran with")
    name = p.model_name or study.study_name
    identity = {STUDY_TAG: study.study_name, TRIAL_TAG: str(chosen.trial), RUN_TAG: chosen.run_id}
    existing = tracker.find_version(name, identity)
    build_engine = _engine_builder(study, cfg)   # a TensorRT profile without TensorRT here: refused, nothing written
    splits = _task_data(study, cfg)   # real inputs for the example; the test split for a model never scored
    export = Path(p.export).expanduser()
    engine_path = export.with_suffix(".engine") if build_engine else None
    export.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(export)
    # The deployed files and the alias change together: the new ONNX (and engine) are staged next to the
    # export, the version registered and the alias moved, and only then are they renamed into place.
    staged = export.with_name(f".{export.name}.{os.getpid()}.staged")
    staged_engine = export.with_name(f".{export.stem}.engine.{os.getpid()}.staged")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = tracker.download(chosen.run_id, "model.onnx", Path(tmp))
            shutil.copyfile(onnx_file, staged)   # before any registry write
            engine_tags = {}
            if build_engine is not None:   # built before any registry write too: a failed build registers nothing
                engine = build_engine(onnx_file)
                staged_engine.write_bytes(engine.data)
                engine_tags = {ENGINE_TAG: json.dumps({"artifact": f"{ENGINE_ARTIFACT}/model.engine",
                                                       **engine.describe()})}
            if chosen.test_accuracy is None:   # outside the front: never scored on test during the search
                chosen = _score_on_test(study, tracker, chosen, onnx_file, splits)
            card = _card(study, tracker, data, chosen, rule, onnx_file, splits)
            assert chosen.run_id is not None  # checked above; scoring on test keeps the run
            if build_engine is not None:
                named = Path(tmp) / "engine" / "model.engine"
                named.parent.mkdir()
                shutil.copyfile(staged_engine, named)
                tracker.log_artifacts(chosen.run_id, [named], ENGINE_ARTIFACT)
            if existing is not None:
                tracker.update_version(name, existing, p.alias, card.tags() | engine_tags, card.description())
                version = existing
            else:
                example = splits.val_inputs(N_EXAMPLES).numpy()
                model_id = tracker.log_deploy_model(chosen.run_id, onnx_file, example, card.metadata())
                version = tracker.register(model_id, name, p.alias, card.tags() | engine_tags, card.description())
        os.replace(staged, export)
        if engine_path is not None:
            os.replace(staged_engine, engine_path)
            log.info("TensorRT engine of %s saved to %s and logged on its run (%s/model.engine)", chosen.label,
                     engine_path, ENGINE_ARTIFACT)
    finally:
        staged.unlink(missing_ok=True)
        staged_engine.unlink(missing_ok=True)
    if existing is not None:
        log.info("trial %d is already version %s of %s: alias '%s' moved to it, nothing registered again",
                 chosen.trial, version, name, p.alias)
    return PickOutcome(chosen, len(feasible), name, version, p.alias, export, existing is not None, card, engine_path)


def _engine_builder(study: optuna.Study, cfg: AppConfig) -> Optional[Callable[[Path], TensorRTEngine]]:
    """How to build the TensorRT engine of the picked ONNX: only when the search's profile is a TensorRT one
    measured on this machine and `pick.engine` is true (None otherwise). Without TensorRT or the GPU here
    it raises one ConfigError line naming both ways out, before pick writes anything."""
    if not cfg.pick.engine:
        return None
    profile: HardwareProfile = load_profile(study_config(study, cfg).hw)
    if profile.runtime != "tensorrt":
        return None
    if profile.agent_url:   # measured on a remote device: the engine must be built there, for its GPU
        log.info("hw profile '%s' measures on %s: build the engine on that device (trtexec --onnx=model.onnx "
                 "--saveEngine=model.engine%s); pick registers the ONNX model", profile.name, profile.agent_url,
                 " --fp16" if profile.precision == "fp16" else "")
        return None
    try:
        check_tensorrt()
    except MeasurementError as exc:
        raise ConfigError(f"hw profile '{profile.name}' runs on TensorRT, so pick builds its engine, which needs "
                          f"TensorRT and the GPU on this machine ({first_line(exc).split(':')[0]}): run pick "
                          "there, or add pick.engine=false to register the ONNX model only") from None
    backend = TensorRTBackend.create(Path(cfg.cache_dir))
    return lambda onnx_file: backend.build_engine(onnx_file, profile)


def _task_data(study: optuna.Study, cfg: AppConfig) -> DataSplits:
    """The task's data splits, built from the study's stored config (its factories checked against the
    allow-list first: autoprune.search.existing)."""
    return build_task(study_config(study, cfg).task).data


def _score_on_test(study: optuna.Study, tracker: Tracker, chosen: Candidate, onnx_file: Path,
                   splits: DataSplits) -> Candidate:
    from autoprune.deploy import onnx_accuracy

    accuracy = onnx_accuracy(onnx_file, splits.test)
    assert chosen.run_id is not None  # run_pick checked it
    tracker.log(chosen.run_id, metrics={"test_accuracy": accuracy})
    record_test_accuracy(study, chosen.trial, accuracy)
    log.info("%s is not a Pareto model: scored on the test split before registering it: %.2f%%", chosen.label,
             100 * accuracy)
    return replace(chosen, test_accuracy=accuracy)


def _card(study: optuna.Study, tracker: Tracker, data: ReportData, chosen: Candidate, rule: PickRule,
          onnx_file: Path, splits: DataSplits) -> ModelCard:
    from autoprune.report.mode import split_sizes

    search = tracker.search_run(study.study_name)
    params = search.data.params if search is not None else {}
    tensor = onnx.load(str(onnx_file)).graph.input[0]
    shape = [d.dim_value if d.dim_value > 0 else -1 for d in tensor.type.tensor_type.shape.dim]
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.type.tensor_type.elem_type)).name
    return ModelCard(study.study_name, chosen, data.baseline, rule.describe(), split_sizes(study),
                     params.get("hw", "unknown"), params.get("hw_digest", "unknown"), data.fingerprint,
                     ModelInput(tensor.name, shape, dtype), splits.preprocessing)


def _remove_stale_staging(export: Path) -> None:
    """What a killed pick staged next to `export` (its process is gone)."""
    for stale in export.parent.glob(f".{export.name}.*.staged"):
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)
