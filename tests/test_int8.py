"""int8 profiles: static QDQ quantization of a small real model trained on digits, scored and timed
with ONNX Runtime; the artifact a profile deploys."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
import optuna
import pytest
import torch

from autoprune.errors import MeasurementError
from autoprune.hw import export_model, get_backend, load_profile
from autoprune.hw.artifact import INT8_NAME, artifact_accuracy, artifact_differs, build_artifact
from autoprune.hw.quantize import MATRIX_OPS, calibration_arrays, is_quantized, ops_to_quantize, quantize_int8
from autoprune.recover import TrainConfig, evaluate
from autoprune.recover.finetune import train
from autoprune.tasks.digits import load
from autoprune.tasks.models import resnet_small
from tests.conftest import DATA

FAST = dict(warmup_runs=3, min_repeats=10, max_repeats=200, target_rel_ci=0.05, max_seconds=0.2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ResNet (8/16/16) trained 3 epochs on 16x16 digits, exported: (model, data, ExportedModel)."""
    data = load(size=16)
    torch.manual_seed(0)
    model = resnet_small(widths=(8, 16, 16), in_channels=1, num_classes=10)
    train(model, data.train, TrainConfig(epochs=3, lr=0.05, batch_size=64))
    model.eval()
    return model, data, export_model(model, data.example_batch(1), tmp_path_factory.mktemp("int8"))


def test_int8_artifact_is_a_qdq_model_with_per_channel_weights(trained):
    _, data, exported = trained
    profile = load_profile("cpu-ort-int8-1t")
    assert artifact_differs(profile) and not artifact_differs(load_profile("cpu-ort-1t"))
    artifact = build_artifact(exported, profile, calibration_arrays(data.train))
    assert artifact.onnx_path.name == INT8_NAME and artifact.onnx_path.parent == exported.onnx_path.parent
    assert is_quantized(artifact.onnx_path) and not is_quantized(exported.onnx_path)
    graph = onnx.load(str(artifact.onnx_path)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]   # weights + activations
    weights = {i.name: i for i in graph.initializer}
    int8_weights = [w for w in weights.values() if w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 4]
    assert int8_weights, "conv weights are stored as int8"
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
                   {w.name for w in int8_weights}]
    assert all(len(weights[n.input[1]].dims) == 1 and weights[n.input[1]].dims[0] > 1 for n in per_channel)


def test_int8_accuracy_run_by_onnx_runtime_is_close_to_fp32(trained):
    model, data, exported = trained
    profile = load_profile("cpu-ort-int8-1t")
    torch_val = evaluate(model, data.val)
    fp32_val = artifact_accuracy(exported, load_profile("cpu-ort-1t"), data.val)
    int8_val = artifact_accuracy(build_artifact(exported, profile, calibration_arrays(data.train)), profile, data.val)
    assert torch_val > 0.5                                   # the model has learned: the comparison means something
    assert fp32_val == pytest.approx(torch_val, abs=1 / len(data.val) + 1e-9)   # same computation, float noise
    assert abs(int8_val - fp32_val) <= 0.03                  # a few points at most (360 samples)


def test_int8_profile_times_the_quantized_model(trained):
    _, data, exported = trained
    profile = dataclasses.replace(load_profile("cpu-ort-int8-1t"), **FAST)
    backend = get_backend(profile)
    artifact = build_artifact(exported, profile, calibration_arrays(data.train))
    stats = backend.measure(artifact, profile)
    assert stats.median_ms > 0 and stats.fingerprint["precision"] == "int8"
    # an fp32 file given to an int8 profile is quantized (random calibration) before it is timed
    assert backend.measure(exported, profile).fingerprint["precision"] == "int8"


def test_batch_profile_times_whole_batches(trained):
    _, _, exported = trained
    one = dataclasses.replace(load_profile(str(DATA / "fast-cpu.yaml")), **FAST)
    b32 = dataclasses.replace(load_profile("cpu-ort-b32"), **FAST)
    backend = get_backend(one)
    assert backend.measure(exported, b32).median_ms > 4 * backend.measure(exported, one).median_ms


def test_quantization_needs_calibration_and_one_input(trained, tmp_path):
    _, _, exported = trained
    with pytest.raises(MeasurementError, match="calibration"):
        build_artifact(exported, load_profile("cpu-ort-int8-1t"), [])
    with pytest.raises(MeasurementError, match="calibration batch"):
        quantize_int8(exported.onnx_path, tmp_path / "q.onnx", [])
    batches = calibration_arrays(load(size=16).train, batches=2, batch_size=5)
    assert [b.shape for b in batches] == [(5, 1, 16, 16)] * 2 and batches[0].dtype == np.float32


# ----------------------------------------------------------------------------------- whole searches
@pytest.fixture(scope="module")
def int8_search(tmp_path_factory):
    """A search on a (fast) int8 profile that also measures a (fast) batch-32 profile: 3 trials."""
    from autoprune.cli import run
    from tests.conftest import compose_config

    tmp = tmp_path_factory.mktemp("int8-search")
    timing = "".join(f"{k}: {v}\n" for k, v in FAST.items())
    (tmp / "int8-fast.yaml").write_text("runtime: onnxruntime\nprecision: int8\nround_to: 4\n" + timing)
    (tmp / "b32-fast.yaml").write_text("runtime: onnxruntime\nbatch_size: 32\nround_to: 4\n" + timing)
    cfg = compose_config(tmp, f"hw={tmp / 'int8-fast.yaml'}", f"search.also_measure=[{tmp / 'b32-fast.yaml'}]",
                         "search.n_trials=3", "search.warm_start=[0.25,0.5]", "tracking.experiment=int8")
    return tmp, run(cfg, tmp / "out")


def _client(tmp):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")


@pytest.mark.slow
def test_int8_search_records_artifact_and_torch_accuracy_and_every_target(int8_search):
    tmp, outcome = int8_search
    client = _client(tmp)
    exp = client.get_experiment_by_name("int8")
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.params["hw"] == "int8-fast" and parent.data.params["hw_precision"] == "int8"
    assert parent.data.tags["autoprune.target"] == "int8-fast (int8, batch 1); b32-fast (fp32, batch 32)"
    runs = client.search_runs([exp.experiment_id], "tags.`autoprune.role` = 'trial'")
    assert len(runs) == 3
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp / 'optuna.db'}")
    for run in runs:
        m = run.data.metrics
        assert {"val_accuracy", "val_accuracy_torch", "latency_per_sample_ms", "b32-fast/latency_ms",
                "b32-fast/latency_per_sample_ms", "b32-fast/val_accuracy"} <= set(m)
        assert m["b32-fast/latency_per_sample_ms"] == pytest.approx(m["b32-fast/latency_ms"] / 32)
        assert m["b32-fast/val_accuracy"] == m["val_accuracy_torch"]           # fp32 target: torch's accuracy
        attrs = study.trials[int(run.data.tags["autoprune.trial_number"])].user_attrs
        assert attrs["b32-fast/latency_ms"] == m["b32-fast/latency_ms"] and attrs["val_accuracy"] == m["val_accuracy"]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model.onnx", "model.fp32.onnx"}
    # the front and the report are the int8 artifact's accuracy
    front = {c.trial: c for c in outcome.report.front}
    assert front and all(c.val_accuracy == study.trials[c.trial].user_attrs["val_accuracy"] for c in front.values())
    baseline = client.search_runs([exp.experiment_id], "tags.`autoprune.role` = 'baseline'")[0].data.metrics
    assert {"val_accuracy_torch", "test_accuracy_torch", "b32-fast/latency_ms"} <= set(baseline)


@pytest.mark.slow
def test_registered_int8_artifact_rescored_matches_the_recorded_accuracy(int8_search, tmp_path):
    """pick exports and registers the int8 model; scoring it again with ONNX Runtime gives the test
    accuracy the search recorded (within its binomial interval; the computation is deterministic)."""
    from autoprune.cli import run
    from autoprune.report.recommend import interval
    from tests.conftest import compose_config

    tmp, outcome = int8_search
    export = tmp_path / "deploy.onnx"
    picked = run(compose_config(tmp, f"hw={tmp / 'int8-fast.yaml'}", "mode=pick", f"pick.export={export}",
                                "tracking.experiment=int8"), tmp_path / "pick")
    assert is_quantized(export)
    recorded = _client(tmp).get_run(picked.chosen.run_id).data.metrics
    data = load(size=16)
    profile = load_profile(str(tmp / "int8-fast.yaml"))
    rescored = artifact_accuracy(export, profile, data.test)
    low, high = interval(recorded["test_accuracy"], len(data.test))
    assert low <= rescored <= high
    assert rescored == pytest.approx(recorded["test_accuracy"], abs=1e-9)
    assert artifact_accuracy(export, profile, data.val) == pytest.approx(picked.chosen.val_accuracy, abs=1e-9)


@pytest.mark.slow
def test_report_draws_the_front_of_an_also_measured_target(int8_search):
    from autoprune.cli import run
    from autoprune.errors import ConfigError
    from tests.conftest import compose_config

    tmp, outcome = int8_search
    data, files = run(compose_config(tmp, "mode=report", "report.target=b32-fast", "tracking.experiment=int8"),
                      tmp / "report-b32")
    assert data.target == "b32-fast" and outcome.report.target == "int8-fast"
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = {t.number: (t.user_attrs["b32-fast/val_accuracy"], t.user_attrs["b32-fast/latency_ms"]) for t in done}
    expected = {n for n, (acc, lat) in points.items()    # oracle: nothing at least as good in both, better in one
                if not any(a >= acc and b <= lat and (a, b) != (acc, lat) for a, b in points.values())}
    assert {c.trial for c in data.front} == expected
    assert all(c.latency_ms == points[c.trial][1] and c.test_accuracy is None for c in data.front)
    assert data.baseline.latency_ms > 4 * outcome.report.baseline.latency_ms / 3   # batch 32 vs batch 1 (int8)
    assert "on b32-fast" in (tmp / "report-b32" / "report" / "report.html").read_text()
    with pytest.raises(ConfigError, match="report.target"):
        run(compose_config(tmp, "mode=report", "report.target=cuda-ort", "tracking.experiment=int8"), tmp / "bad")


@pytest.mark.slow
def test_report_retimes_the_front_on_the_searched_profile(int8_search):
    from autoprune.cli import run
    from tests.conftest import compose_config

    tmp, outcome = int8_search
    data, files = run(compose_config(tmp, f"hw={tmp / 'int8-fast.yaml'}", "mode=report", "report.recheck_rounds=1",
                                     "tracking.experiment=int8"), tmp / "report-recheck")
    assert files[-1].name == "recheck.csv"
    rows = files[-1].read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == sorted(c.label for c in data.front)
    search_ms = {r.split(",")[0]: float(r.split(",")[1]) for r in rows}
    assert all(search_ms[c.label] == pytest.approx(c.latency_ms, rel=1e-5) for c in data.front)


@pytest.mark.slow
def test_report_overlays_fronts_of_several_targets(int8_search):
    import csv

    from autoprune.cli import run
    from tests.conftest import compose_config

    tmp, outcome = int8_search
    name = outcome.study_name
    fronts, files = run(compose_config(tmp, "mode=report", f"report.studies=['{name}','{name}@b32-fast']",
                                       "tracking.experiment=int8"), tmp / "overlay")
    assert [f.label for f in fronts] == [f"{name} on int8-fast", f"{name} on b32-fast"]
    own, b32 = fronts
    assert all(own.per_sample[c.trial] == c.latency_ms for c in [own.data.baseline, *own.data.front])
    assert all(b32.per_sample[c.trial] == pytest.approx(c.latency_ms / 32) for c in [b32.data.baseline, *b32.data.front])
    table = list(csv.reader((tmp / "overlay" / "report" / "overlay.csv").open()))
    assert len(table) == 1 + 2 + len(own.data.front) + len(b32.data.front)
    assert {r[0] for r in table[1:]} == {f.label for f in fronts}
    assert {p.name for p in files} == {"overlay.csv", "overlay.png", "overlay.html"}


def _int8_activations(graph) -> list[tuple[str, set[str]]]:
    """For every quantized activation (a QuantizeLinear of a node's output, not of a weight): the type of
    the node that produced it and the types of the nodes that read its DequantizeLinear."""
    producer = {out: n.op_type for n in graph.node for out in n.output}
    readers: dict[str, set[str]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, set()).add(n.op_type)
    dq_of = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [(producer[q.input[0]], readers.get(dq_of.get(q.output[0], ""), set()))
            for q in graph.node if q.op_type == "QuantizeLinear" and q.input[0] in producer]


def test_attention_graphs_quantize_only_their_matrix_products(tmp_path):
    """A transformer layer (Softmax, LayerNormalization): an activation is int8 only on its way into or
    out of a matrix product; Softmax, LayerNormalization, Add stay fp32. A CNN quantizes everything
    ONNX Runtime can: e.g. a residual Add's output is int8 on its way into a Relu."""
    matrix = set(MATRIX_OPS)
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True),
                                  torch.nn.Flatten(), torch.nn.Linear(8 * 16, 4)).eval()
    exported = export_model(encoder, torch.randn(1, 8, 16), tmp_path / "tf")
    assert ops_to_quantize(onnx.load(str(exported.onnx_path))) == list(MATRIX_OPS)
    calibration = [np.random.default_rng(i).standard_normal((4, 8, 16), dtype=np.float32) for i in range(2)]
    int8 = _int8_activations(onnx.load(str(quantize_int8(exported.onnx_path, tmp_path / "tf.int8.onnx",
                                                          calibration))).graph)
    assert any(readers == {"MatMul"} for _, readers in int8)
    assert all(made in matrix or readers & matrix for made, readers in int8)

    cnn = resnet_small(widths=(8, 8, 8), in_channels=1, num_classes=10).eval()
    exported = export_model(cnn, torch.randn(1, 1, 16, 16), tmp_path / "cnn")
    assert ops_to_quantize(onnx.load(str(exported.onnx_path))) is None
    calibration = [np.random.default_rng(i).standard_normal((4, 1, 16, 16), dtype=np.float32) for i in range(2)]
    int8 = _int8_activations(onnx.load(str(quantize_int8(exported.onnx_path, tmp_path / "cnn.int8.onnx",
                                                          calibration))).graph)
    assert any(made not in matrix and readers and not readers & matrix for made, readers in int8)
