"""Latency backends: one contract every backend runs (skipped with a reason where its runtime is
absent), the shared measurement rules, the result cache, and the GPU-free parts of TensorRT."""

import dataclasses
import importlib.util
import json
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from autoprune.errors import MeasurementError
from autoprune.hw import ExportedModel, export_model, get_backend, load_profile
from autoprune.hw.backend import RUNTIME_BACKENDS, runtime_backend, runtime_class
from autoprune.hw.inputs import input_specs
from autoprune.hw.lock import measurement_lock
from autoprune.hw.onnx_transforms import prune_2_4, sparsify_2_4, to_fp16
from autoprune.hw.onnxruntime_backend import layer_of, parse_profile
from autoprune.hw.profile import RUNTIMES, HardwareProfile
from autoprune.hw.stats import LatencyStats
from autoprune.hw.tensorrt_backend import INSTALL_HINT, PrecisionPlan, precision_plan
from autoprune.hw.timing import repeat_until_stable
from autoprune.hw.trtexec import load_trtexec_times, main as trtexec_main
from autoprune.tasks.models import resnet_small

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA_TORCH = torch.cuda.is_available()
HAS_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()

FAST = dict(warmup_runs=3, min_repeats=10, max_repeats=300, target_rel_ci=0.05, max_seconds=0.2, round_to=4)

BACKENDS = {
    "onnxruntime-cpu": (dict(runtime="onnxruntime"), None),
    "onnxruntime-cpu-iobinding": (dict(runtime="onnxruntime", io_binding=True), None),
    "torch-cpu": (dict(runtime="torch", device="cpu"), None),
    "onnxruntime-cuda": (dict(runtime="onnxruntime", provider="CUDAExecutionProvider", io_binding=True),
                         None if HAS_ORT_CUDA else "onnxruntime-gpu (CUDAExecutionProvider) is not installed"),
    "torch-cuda-graphs": (dict(runtime="torch", device="cuda", precision="fp16", cuda_graphs=True),
                          None if HAS_CUDA_TORCH else "torch sees no CUDA GPU"),
    "tensorrt-fp16": (dict(runtime="tensorrt", device="cuda", precision="fp16"),
                      None if HAS_TRT and HAS_CUDA_TORCH else "TensorRT or a CUDA GPU is absent"),
    "tensorrt-fp16-sparse": (dict(runtime="tensorrt", device="cuda", precision="fp16", sparse_weights=True),
                             None if HAS_TRT and HAS_CUDA_TORCH else "TensorRT or a CUDA GPU is absent"),
}


def fast_profile(**overrides) -> HardwareProfile:
    return HardwareProfile(**{"name": "test", **FAST, **overrides})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small and a much larger (about 60x the multiply-adds) model, exported with both files."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    small = export_model(resnet_small(widths=(4, 4, 4)), torch.randn(1, 1, 16, 16), root / "small")
    large = export_model(resnet_small(widths=(32, 64, 64)), torch.randn(1, 1, 16, 16), root / "large")
    return small, large


@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_backend_contract(backend_name, models):
    settings, skip_reason = BACKENDS[backend_name]
    if skip_reason:
        pytest.skip(skip_reason)
    profile = fast_profile(**settings)
    backend = get_backend(profile)
    small, large = (backend.measure(m, profile) for m in models)
    for stats in (small, large):
        assert profile.min_repeats <= stats.n <= profile.max_repeats
        assert 0 < stats.median_ms <= stats.p90_ms <= stats.p99_ms
        assert stats.mean_ms > 0 and stats.std_ms >= 0 and stats.cv == pytest.approx(stats.std_ms / stats.mean_ms)
        assert 0 <= stats.rel_ci < float("inf")   # its size depends on the load: a loaded machine widens it
        fp = stats.fingerprint
        for key in ("cpu", "cores", "runtime", "runtime_version", "provider", "device", "precision", "threads"):
            assert fp.get(key) not in (None, ""), key
        assert fp["runtime"] == profile.runtime and fp["precision"] == profile.precision
    assert large.median_ms > small.median_ms  # sanity only: ~60x the compute


@pytest.mark.parametrize("runtime", list(RUNTIME_BACKENDS))
def test_every_registered_runtime_declares_itself_and_says_whether_it_is_ready(runtime):
    """The registry is the one place runtimes are listed: each class names its runtime, builds itself and
    checks readiness; one that cannot measure here says so with a MeasurementError (never another error)."""
    assert set(RUNTIME_BACKENDS) == set(RUNTIMES)
    cls = runtime_class(runtime)
    assert cls.runtime == runtime
    profile = fast_profile(runtime=runtime, **({"device": "cuda"} if runtime == "tensorrt" else {}))
    if runtime == "tensorrt" and not (HAS_TRT and HAS_CUDA_TORCH):
        with pytest.raises(MeasurementError):
            cls.check_ready(profile)
        return
    cls.check_ready(profile)
    assert isinstance(cls.create(None), cls) and isinstance(runtime_backend(profile), cls)


def test_stats_survive_a_json_round_trip(models):
    profile = fast_profile()
    stats = get_backend(profile).measure(models[0], profile)
    again = LatencyStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats
    with pytest.raises(MeasurementError, match="malformed"):
        LatencyStats.from_dict({"median_ms": 1.0})


# -- measurement rules ---------------------------------------------------------------------------
class CountingRun:
    """A RunOnce returning prescribed latencies (the loop's logic is tested, not a runtime)."""

    def __init__(self, values):
        self.values, self.calls = values, 0

    def __call__(self) -> float:
        self.calls += 1
        return float(self.values(self.calls))


def test_stop_rule_stops_at_min_repeats_when_the_median_is_tight():
    run = CountingRun(lambda i: 1.0)
    samples = repeat_until_stable(run, fast_profile(warmup_runs=7, min_repeats=20))
    assert len(samples) == 20 and run.calls == 27  # warm-up runs are not samples


def test_stop_rule_keeps_going_while_noisy_until_max_repeats():
    rng = np.random.default_rng(0)
    run = CountingRun(lambda i: rng.uniform(0.5, 1.5))
    samples = repeat_until_stable(run, fast_profile(target_rel_ci=1e-6, max_seconds=60, max_repeats=125))
    assert len(samples) == 125


def test_stop_rule_respects_the_time_cap():
    rng = np.random.default_rng(0)

    def slow(i):
        time.sleep(0.002)
        return rng.uniform(0.5, 1.5)

    samples = repeat_until_stable(CountingRun(slow), fast_profile(target_rel_ci=1e-6, max_seconds=0.1,
                                                                  max_repeats=100000))
    # the confidence-interval target is out of reach, so only the cap stops it: 1000 runs of >= 2 ms would take 2 s, 20x the cap
    # (no wall-clock bound here: waiting for the machine-wide lock does not count, by design)
    assert 10 <= len(samples) < 1000


def test_measurements_wait_for_the_machine_lock(models):
    profile = fast_profile()
    backend = runtime_backend(profile)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (backend.measure(models[0], profile), done.set()))
    with measurement_lock():
        worker.start()
        assert not done.wait(1.5), "a measurement ran while another held the lock"
    worker.join(30)
    assert done.is_set()


def test_the_lock_directory_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_LOCK_DIR", str(tmp_path / "shared" / "volume"))
    with measurement_lock():
        assert (tmp_path / "shared" / "volume" / "autoprune-measure.lock").exists()


def test_threads_are_pinned_and_recorded(models):
    profile = fast_profile(runtime="torch", threads=1, cpu_affinity=[0])
    before = torch.get_num_threads()
    stats = runtime_backend(profile).measure(models[0], profile)
    assert stats.fingerprint["threads"] == 1 and torch.get_num_threads() == before
    with pytest.raises(MeasurementError, match="cpu_affinity"):
        runtime_backend(fast_profile(cpu_affinity=[4096])).measure(models[0], fast_profile(cpu_affinity=[4096]))


def test_input_shape_must_match_the_model(models):
    with pytest.raises(MeasurementError, match="input_shape"):
        input_specs(models[0].onnx_path, fast_profile(input_shape=[16, 16]))
    specs = input_specs(models[0].onnx_path, fast_profile(batch_size=3))
    assert specs[0].shape == (3, 1, 16, 16)


def test_per_layer_profile_names_model_layers(models):
    profile = fast_profile(profile_layers=True)
    stats = runtime_backend(profile).measure(models[1], profile)
    assert "fc" in stats.layer_ms and any(k.startswith("layers.") for k in stats.layer_ms)
    assert all(v >= 0 for v in stats.layer_ms.values())
    assert list(stats.layer_ms.values()) == sorted(stats.layer_ms.values(), reverse=True)


def test_layer_names_from_onnx_scopes():
    assert layer_of("/layers/layers.0/layers.0.0/conv2/Conv") == "layers.0.0.conv2"
    assert layer_of("/layers/layers.1/layers.1.0/shortcut/shortcut.0/Conv_output_0_nchwc") == "layers.1.0.shortcut.0"
    assert layer_of("/fc/Gemm") == "fc"
    assert layer_of("ReorderOutput_token_3") == "(runtime)"
    trace = [{"cat": "Session", "name": "model_run"}, {"cat": "Session", "name": "model_run"},
             {"cat": "Node", "name": "/fc/Gemm_kernel_time", "dur": 30},
             {"cat": "Node", "name": "/fc/Gemm_fence_before", "dur": 999},
             {"cat": "Node", "name": "/stem/stem.0/Conv_kernel_time", "dur": 100}]
    assert parse_profile(trace) == {"stem.0": 0.05, "fc": 0.015}


# -- cache ---------------------------------------------------------------------------------------
def test_cache_reuses_results_per_model_and_profile(models, tmp_path):
    profile = fast_profile()
    backend = get_backend(profile, cache_dir=tmp_path)
    first = backend.measure(models[0], profile)
    assert backend.measure(models[0], profile) == first            # same file + profile: from the cache
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1
    assert backend.measure(models[0], profile, fresh=True) != first  # measured again, side by side
    other = dataclasses.replace(profile, min_repeats=20)
    assert backend.measure(models[0], other).n >= 20                 # another profile digest: a miss
    assert len(list((tmp_path / "latency").glob("*.json"))) == 2
    for entry in (tmp_path / "latency").glob("*.json"):
        entry.write_text("{broken")
    assert backend.measure(models[0], profile).n >= profile.min_repeats  # damaged entry: measured again


# -- clear errors where a runtime or file is missing ---------------------------------------------
def test_torch_backend_needs_the_module(models):
    profile = fast_profile(runtime="torch")
    with pytest.raises(MeasurementError, match="ExportedModel"):
        get_backend(profile).measure(models[0].onnx_path, profile)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-runtime message cannot be shown")
def test_missing_tensorrt_gives_the_install_hint(models):
    profile = load_profile("trt-fp16")
    with pytest.raises(MeasurementError, match="pip install tensorrt"):
        get_backend(profile).measure(models[0], profile)
    assert "pip install tensorrt" in INSTALL_HINT


@pytest.mark.skipif(HAS_ORT_CUDA, reason="the CUDA provider is installed here")
def test_missing_ort_provider_names_it(models):
    profile = load_profile("cuda-ort")
    with pytest.raises(MeasurementError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        get_backend(profile).measure(models[0], profile)


@pytest.mark.skipif(HAS_CUDA_TORCH, reason="torch sees a GPU here")
def test_torch_without_cuda_says_so(models):
    profile = load_profile("cuda-torch")
    with pytest.raises(MeasurementError, match="CUDA"):
        get_backend(profile).measure(models[0], profile)


# -- TensorRT without a GPU: precision strategy, model rewrites, trtexec import ------------------
def test_precision_plan_follows_the_tensorrt_version():
    assert precision_plan("10.13.0", True, "fp16") == PrecisionPlan(fp16_onnx=False, fp16_flag=True,
                                                                    strongly_typed=False)
    assert precision_plan("11.4.1", False, "fp16") == PrecisionPlan(fp16_onnx=True, fp16_flag=False,
                                                                    strongly_typed=True)
    assert precision_plan("10.13.0", False, "fp16").fp16_onnx   # a build without the flag
    assert precision_plan("11.0.0", False, "fp32") == PrecisionPlan(False, False, False)


def test_fp16_conversion_keeps_fp32_inputs_and_outputs(models):
    original = onnx.load(str(models[1].onnx_path))
    half = to_fp16(original)
    onnx.checker.check_model(half)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [i for i in half.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)

    def run(model):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]

    np.testing.assert_allclose(run(half), run(original), atol=2e-2)


def test_prune_2_4_keeps_the_two_largest_of_every_four():
    w = np.random.default_rng(0).standard_normal((6, 10, 3, 3)).astype(np.float32)
    sparse = prune_2_4(w, axis=1)
    assert sparse.shape == w.shape and sparse.dtype == w.dtype
    groups = np.moveaxis(sparse, 1, -1)[..., :8].reshape(6, 3, 3, 2, 4)
    assert ((groups != 0).sum(-1) == 2).all()
    original = np.moveaxis(w, 1, -1)[..., :8].reshape(6, 3, 3, 2, 4)
    kept_min = np.where(groups != 0, np.abs(original), np.inf).min(-1)
    dropped_max = np.where(groups == 0, np.abs(original), -np.inf).max(-1)
    assert (kept_min >= dropped_max).all()
    tail = np.moveaxis(sparse, 1, -1)[..., 8:]  # 2 leftover channels: a padded group keeps both
    assert ((tail != 0).sum(-1) == 2).all()


def test_sparsify_2_4_rewrites_conv_and_gemm_weights(models):
    original = onnx.load(str(models[1].onnx_path))
    sparse = sparsify_2_4(original)
    onnx.checker.check_model(sparse)
    weights = {i.name: numpy_helper.to_array(i) for i in sparse.graph.initializer}
    conv = next(n for n in sparse.graph.node if n.op_type == "Conv" and weights[n.input[1]].shape[1] >= 8)
    w = weights[conv.input[1]]
    assert ((np.moveaxis(w, 1, -1).reshape(*w.shape[:1], *w.shape[2:], -1, 4) != 0).sum(-1) <= 2).all()
    gemm = next(n for n in sparse.graph.node if n.op_type == "Gemm")
    assert (weights[gemm.input[1]] == 0).mean() >= 0.5
    x = np.zeros((1, 1, 16, 16), np.float32)
    ort.InferenceSession(sparse.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})


def _write_trtexec_times(path, records):
    path.write_text(json.dumps(records))
    return path


def test_trtexec_times_import_both_fields(tmp_path):
    records = [{"startEnqMs": i, "endEnqMs": i + 0.1, "startComputeMs": i, "endComputeMs": i + 1,
                "computeMs": 1.0 + 0.01 * (i % 5), "latencyMs": 1.5 + 0.01 * (i % 5)} for i in range(50)]
    path = _write_trtexec_times(tmp_path / "times.json", [{"count": 50}, *records])
    auto = load_trtexec_times(path)
    assert auto.n == 50 and auto.median_ms == pytest.approx(1.02) and auto.fingerprint["metric"] == "computeMs"
    latency = load_trtexec_times(path, "latencyMs")
    assert latency.median_ms == pytest.approx(1.52) and latency.fingerprint["source"].startswith("trtexec")
    only_latency = _write_trtexec_times(tmp_path / "old.json", [{"latencyMs": 2.0}, {"latencyMs": 4.0}])
    assert load_trtexec_times(only_latency).median_ms == 3.0


def test_trtexec_times_errors_say_what_to_pass(tmp_path, capsys):
    with pytest.raises(MeasurementError, match="no 'computeMs' timings.*--exportTimes"):
        load_trtexec_times(_write_trtexec_times(tmp_path / "t.json", [{"latencyMs": 1.0}]), "computeMs")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(MeasurementError, match="cannot read"):
        load_trtexec_times(bad)
    assert trtexec_main([str(bad)]) == 2 and "error" in capsys.readouterr().err
    good = _write_trtexec_times(tmp_path / "good.json", [{"computeMs": 1.0}, {"computeMs": 2.0}])
    assert trtexec_main([str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["median_ms"] == 1.5


def test_export_model_writes_both_files(tmp_path):
    exported = export_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), torch.randn(1, 1, 8, 8), tmp_path)
    assert exported == ExportedModel(tmp_path / "model.onnx", tmp_path / "model.pt")
    assert isinstance(exported.module, nn.Sequential)
    state = torch.load(exported.weights_path, weights_only=True)   # weights only: no pickled module
    assert set(state) == {"0.weight", "0.bias"}
