"""report / pick / reproduce modes and the run-time selector, on one real search."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from mlflow.tracking import MlflowClient

from autoprune.cli import run
from autoprune.deploy import ParetoSelector
from autoprune.errors import AutopruneError


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("modes")
    outcome = run(compose_config(tmp, "search.n_trials=4", "search.warm_start=[0.25,0.5,0.75]"), tmp / "search")
    return tmp, outcome


def _cfg(tmp, *overrides):
    from conftest import compose_config

    return compose_config(tmp, *overrides)


def test_report_mode_rebuilds_the_same_front_from_storage_and_mlflow(searched):
    tmp, outcome = searched
    data, files = run(_cfg(tmp, "mode=report"), tmp / "report-again")
    assert [c.trial for c in data.front] == [c.trial for c in outcome.report.front]
    first = list(csv.reader(outcome.report_files[0].open()))
    again = list(csv.reader(files[0].open()))
    assert first == again
    import json

    sizes = json.loads((tmp / "report-again" / "report" / "pareto.json").read_text())["split_sizes"]
    assert sizes == json.loads(outcome.report_files[1].read_text())["split_sizes"] and sizes["val"] > 0   # recorded
    html = (tmp / "report-again" / "report" / "report.html").read_text()
    assert "<svg" in html and "sortBy" in html and "http" not in html.split("<body>")[1].replace("http://127", "")


def test_pick_chooses_by_the_documented_rule_and_registers_it(searched):
    tmp, outcome = searched
    trials = outcome.report.trials
    budget = sorted(c.latency_ms for c in trials)[len(trials) // 2]
    feasible = [c for c in trials if c.latency_ms <= budget]
    expected = max(feasible, key=lambda c: (c.val_accuracy, -c.latency_ms))
    export = tmp / "deploy" / "model.onnx"
    picked = run(_cfg(tmp, "mode=pick", f"pick.max_latency_ms={budget}", f"pick.export={export}",
                      "pick.model_name=digits-small"), tmp / "pick")
    assert picked.chosen.trial == expected.trial and picked.n_feasible == len(feasible)
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    version = client.get_model_version_by_alias("digits-small", "deploy")
    assert str(version.version) == picked.version and version.tags["autoprune.trial_number"] == str(expected.trial)
    assert not picked.reused
    session = ort.InferenceSession(str(export), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 16, 16), np.float32)})[0]
    assert out.shape == (1, 10)


def _digits_splits():
    from autoprune.tasks.digits import load

    return load(size=16)   # the FAST task's data (conftest.FAST: task.data.size=16)


def test_pick_registers_what_a_deployer_needs(searched):
    import json

    import mlflow
    import torch
    import torch.nn.functional as F
    from mlflow.models import Model
    from sklearn.datasets import load_digits

    from autoprune import Preprocessing

    tmp, outcome = searched
    picked = run(_cfg(tmp, "mode=pick", "pick.model_name=digits-card", f"pick.export={tmp / 'card.onnx'}"), tmp / "pc")
    chosen, base = picked.chosen, outcome.report.baseline
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    version = client.get_model_version("digits-card", picked.version)
    tags = version.tags
    assert float(tags["autoprune.val_accuracy"]) == pytest.approx(chosen.val_accuracy, abs=1e-5)
    assert float(tags["autoprune.test_accuracy"]) == pytest.approx(chosen.test_accuracy, abs=1e-5)
    low, high = json.loads(tags["autoprune.test_accuracy_ci95"])
    assert low <= chosen.test_accuracy <= high and high - low > 0
    assert float(tags["autoprune.latency_ms"]) == pytest.approx(chosen.latency_ms, rel=1e-5)
    assert float(tags["autoprune.latency_p90_ms"]) == pytest.approx(chosen.latency_p90_ms, rel=1e-5)
    assert float(tags["autoprune.baseline.latency_ms"]) == pytest.approx(base.latency_ms, rel=1e-5)
    assert float(tags["autoprune.baseline.val_accuracy"]) == pytest.approx(base.val_accuracy, abs=1e-5)
    assert tags["autoprune.hw_profile"] == "fast-cpu" and len(tags["autoprune.hw_digest"]) >= 8
    assert json.loads(tags["autoprune.hw_fingerprint"])["runtime"] == "onnxruntime"
    assert tags["autoprune.pick_rule"] == "no constraint"
    assert tags["autoprune.study"] == outcome.report.study_name and tags["autoprune.trial_number"] == str(chosen.trial)
    assert f"Trial #{chosen.trial}" in version.description and "(raw / 16" in version.description
    # logging the deploy model into the trial's run left its end where the Optuna trial ended
    import optuna

    trial = optuna.load_study(study_name=outcome.report.study_name,
                              storage=f"sqlite:///{tmp / 'optuna.db'}").trials[chosen.trial]
    assert client.get_run(chosen.run_id).info.end_time == int(trial.datetime_complete.timestamp() * 1000)
    # the logged model: real validation inputs as its example, the card in its MLmodel metadata
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/digits-card/{picked.version}",
                                                dst_path=str(tmp / "card-model"))
    model = Model.load(local)
    example = np.asarray(model.load_input_example(local))
    splits = _digits_splits()
    assert np.array_equal(example, splits.val_inputs(4).numpy())
    assert list(model.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 16, 16]
    card = model.metadata["autoprune"]
    assert card["trial"] == chosen.trial and card["input"] == {"name": "input", "shape": [-1, 1, 16, 16],
                                                               "dtype": "float32"}
    # the recorded preprocessing turns raw digits (grey levels 0-16, resized) into exactly what the model takes
    prep = Preprocessing(**json.loads(tags["autoprune.preprocessing"]))
    raw = F.interpolate(torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1), size=(16, 16),
                        mode="bilinear", align_corners=False).numpy()
    made = prep.apply(raw).reshape(len(raw), -1)
    distance = np.abs(made[None, :, :] - example.reshape(len(example), 1, -1)).max(axis=2).min(axis=1)
    assert distance.max() < 1e-5   # each example is one raw image, preprocessed


def test_repicking_the_same_trial_reuses_its_version(searched):
    tmp, outcome = searched
    args = ("mode=pick", "pick.model_name=digits-again", f"pick.export={tmp / 'again.onnx'}")
    first = run(_cfg(tmp, *args), tmp / "again1")
    fastest = min(outcome.report.trials, key=lambda c: c.latency_ms)
    moved = run(_cfg(tmp, *args, f"pick.max_latency_ms={fastest.latency_ms}"), tmp / "again2")  # alias elsewhere
    second = run(_cfg(tmp, *args), tmp / "again3")
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'digits-again'")
    assert second.reused and second.version == first.version and second.chosen.trial == first.chosen.trial
    assert len(versions) == len({first.chosen.trial, moved.chosen.trial})
    assert str(client.get_model_version_by_alias("digits-again", "deploy").version) == first.version


def _has_tensorrt_and_gpu() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(_has_tensorrt_and_gpu(), reason="TensorRT and a GPU are here: pick builds the engine instead")
def test_pick_on_a_tensorrt_profile_without_tensorrt_refuses_before_writing(searched, tmp_path):
    """A search measured with a TensorRT profile, picked on a machine without TensorRT: one line naming both
    ways out (pick on the GPU machine, or pick.engine=false), and nothing registered, exported or staged."""
    import shutil

    import optuna

    from autoprune.errors import ConfigError

    tmp, outcome = searched
    for db in ("optuna.db", "mlflow.db"):
        shutil.copyfile(tmp / db, tmp_path / db)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name=outcome.report.study_name, storage=url)
    study.set_user_attr("config", study.user_attrs["config"] | {"hw": "trt-fp16"})   # as if searched on the GPU
    stores = (f"search.storage={url}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "mode=pick",
              "pick.model_name=on-trt", f"pick.export={tmp_path / 'deploy' / 'model.onnx'}")
    with pytest.raises(ConfigError) as refused:
        run(_cfg(tmp, *stores), tmp_path / "pick")
    message = str(refused.value)
    assert "\n" not in message and "'trt-fp16' runs on TensorRT" in message and "pick.engine=false" in message
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not client.search_registered_models(filter_string="name='on-trt'") and not (tmp_path / "deploy").exists()
    onnx_only = run(_cfg(tmp, *stores, "pick.engine=false"), tmp_path / "pick2")   # the way out it names
    assert onnx_only.engine_path is None and onnx_only.onnx_path.is_file()
    version = client.get_model_version_by_alias("on-trt", "deploy")
    assert "autoprune.tensorrt_engine" not in version.tags and sorted(p.name for p in onnx_only.onnx_path.parent.iterdir()) == ["model.onnx"]


@pytest.mark.slow
@pytest.mark.skipif(not _has_tensorrt_and_gpu(), reason="needs TensorRT (pip install tensorrt) and a CUDA GPU")
def test_pick_on_a_tensorrt_profile_saves_and_logs_its_engine(tmp_path):
    """On a GPU machine: a search timed with TensorRT, then pick saves the engine next to the ONNX, logs it on
    the trial's run and tags the version with it; the engine deserializes and takes the model's input."""
    import json

    import tensorrt as trt
    from conftest import compose_config
    from omegaconf import open_dict

    cfg = compose_config(tmp_path, "search.n_trials=1", "search.warm_start=[0.5]")
    with open_dict(cfg):
        cfg.hw = "trt-fp16"
    run(cfg, tmp_path / "search")
    picked = run(compose_config(tmp_path, "mode=pick", "pick.model_name=trt",   # the study's stored hw: trt-fp16
                                f"pick.export={tmp_path / 'deploy' / 'model.onnx'}"), tmp_path / "pick")
    assert picked.engine_path == tmp_path / "deploy" / "model.engine" and picked.engine_path.stat().st_size > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tag = json.loads(client.get_model_version_by_alias("trt", "deploy").tags["autoprune.tensorrt_engine"])
    assert tag["artifact"] == "tensorrt/model.engine" and tag["tensorrt"] == trt.__version__ and tag["gpu"]
    logged = client.download_artifacts(picked.chosen.run_id, tag["artifact"], str(tmp_path / "logged"))
    assert Path(logged).read_bytes() == picked.engine_path.read_bytes()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(picked.engine_path.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2
    assert tuple(engine.get_tensor_shape(engine.get_tensor_name(0)))[1:] == (1, 16, 16)


@pytest.fixture(scope="module")
def off_front(searched):
    """A study whose every trial breaks a search constraint: nothing is on its front, nothing was scored on test."""
    tmp, _ = searched
    cfg = _cfg(tmp, f"search.storage=sqlite:///{tmp / 'off.db'}", "search.n_trials=1", "search.warm_start=[0.5]",
               "search.constraints.max_params=1")
    return tmp, run(cfg, tmp / "off-search")


def test_a_pick_outside_the_front_is_scored_on_test_before_it_is_registered(off_front):
    import optuna

    tmp, outcome = off_front
    assert not outcome.report.front and outcome.report.trials[0].test_accuracy is None
    picked = run(_cfg(tmp, f"search.storage=sqlite:///{tmp / 'off.db'}", "mode=pick", "pick.model_name=digits-off",
                      f"pick.export={tmp / 'off.onnx'}"), tmp / "off-pick")
    splits = _digits_splits()
    session = ort.InferenceSession(str(tmp / "off.onnx"), providers=["CPUExecutionProvider"])
    x, y = splits.test.tensors
    expected = float((session.run(None, {"input": x.numpy()})[0].argmax(axis=1) == y.numpy()).mean())
    assert picked.chosen.test_accuracy == pytest.approx(expected, abs=1e-9)
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    assert client.get_run(picked.chosen.run_id).data.metrics["test_accuracy"] == pytest.approx(expected, abs=1e-6)
    tags = client.get_model_version("digits-off", picked.version).tags
    assert float(tags["autoprune.test_accuracy"]) == pytest.approx(expected, abs=1e-5)
    study = optuna.load_study(study_name=outcome.report.study_name, storage=f"sqlite:///{tmp / 'off.db'}")
    assert study.user_attrs[f"test_accuracy.{picked.chosen.trial}"] == pytest.approx(expected, abs=1e-9)


def test_pareto_models_test_accuracy_is_in_the_study_user_attrs(searched):
    import optuna

    tmp, outcome = searched
    study = optuna.load_study(study_name=outcome.report.study_name, storage=f"sqlite:///{tmp / 'optuna.db'}")
    assert outcome.report.front
    for c in outcome.report.front:
        assert study.user_attrs[f"test_accuracy.{c.trial}"] == pytest.approx(c.test_accuracy, abs=1e-9)


def test_a_study_stored_without_metric_names_gets_them_from_its_config(tmp_path):
    """A study whose last search ran before autoprune named the objectives (optuna-dashboard showed "0" /
    "1"): report / pick / reproduce name them from its stored search.objectives."""
    import optuna

    from autoprune.search.existing import name_objectives

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(storage=url, study_name="old", directions=["maximize", "minimize"])
    old.set_user_attr("config", {"search": {"objectives": ["val_accuracy", "params"]}})
    assert optuna.load_study(study_name="old", storage=url).metric_names is None
    name_objectives(optuna.load_study(study_name="old", storage=url))
    assert optuna.load_study(study_name="old", storage=url).metric_names == ["val_accuracy", "params"]
    odd = optuna.create_study(storage=url, study_name="odd", directions=["maximize", "minimize"])
    odd.set_user_attr("config", {"search": {"objectives": ["val_accuracy"]}})   # not one name per direction
    name_objectives(odd)
    assert optuna.load_study(study_name="odd", storage=url).metric_names is None


def test_pick_without_feasible_model_lists_the_nearest(searched):
    tmp, _ = searched
    with pytest.raises(AutopruneError, match=r"no model meets pick.max_latency_ms=1e-06; nearest: #\d+"):
        run(_cfg(tmp, "mode=pick", "pick.max_latency_ms=0.000001"), tmp / "pick2")


def test_reproduce_rejects_unknown_trial(searched):
    tmp, _ = searched
    with pytest.raises(AutopruneError, match=r"has no trial 999; completed trials: \[[0-9, ]+\]: set reproduce"):
        run(_cfg(tmp, "mode=reproduce", "reproduce.trial=999"), tmp / "repro2")


def test_reproduce_gives_the_same_architecture_and_accuracy_and_measures_now(searched):
    """Every cached latency is made 10,000 times slower: a reproduction that read the cache would say so.
    (One reproduction checks both: it retrains the trial, seconds each.)"""
    import json

    tmp, outcome = searched
    trial = outcome.report.front[0]
    entries = sorted((tmp / "cache" / "latency").glob("*.json"))
    saved = {path: path.read_text() for path in entries}
    try:
        for path in entries:
            stats = json.loads(saved[path])
            path.write_text(json.dumps({k: v * 1e4 if k.endswith("_ms") and isinstance(v, float) else v
                                        for k, v in stats.items()}))
        again = run(_cfg(tmp, "mode=reproduce", f"reproduce.trial={trial.trial}"), tmp / "repro-fresh")
    finally:
        for path, text in saved.items():
            path.write_text(text)
    assert again.same_architecture
    assert abs(again.now["val_accuracy"] - again.logged["val_accuracy"]) <= 0.001
    assert again.now["params"] == again.logged["params"] and again.now["macs"] == again.logged["macs"]
    assert entries and again.now["latency_ms"] < 100 * again.logged["latency_ms"]
    assert "not cached" in again.table()


def test_selector_runs_the_most_accurate_model_within_budget(searched):
    tmp, outcome = searched
    selector = ParetoSelector.load(tmp / "search" / "report")
    front = outcome.report.front
    assert [m.name for m in selector.models] == [c.label for c in front]
    slowest = front[-1]
    x = np.zeros((1, 1, 16, 16), np.float32)
    logits, chosen = selector(x, budget_ms=slowest.latency_ms)
    assert logits.shape == (1, 10)
    assert chosen.name == max(front, key=lambda c: c.val_accuracy).label and chosen.within_budget
    _, fallback = selector(x, budget_ms=0.0)
    assert fallback.name == front[0].label and not fallback.within_budget


def test_calibrate_builds_a_latency_table_and_reports_its_error(searched):
    tmp, _ = searched
    space = tmp / "coarse.yaml"
    space.write_text("ratio: {low: 0.0, high: 0.5, step: 0.5}\n")
    result, path = run(_cfg(tmp, "mode=calibrate", f"search_space={space}", "calibrate.n_validate=3"), tmp / "cal")
    assert path.is_file() and path.parent == tmp / "cal" / "calibrate"
    assert 0.0 <= result.report.share_within_10pct <= 1.0 and len(result.report.measured_ms) == 3
