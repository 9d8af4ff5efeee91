"""Hardware profiles: every shipped profile loads, invalid ones name the field, digests and agent views."""

import dataclasses
import os

import pytest

from autoprune.errors import ProfileError
from autoprune.hw import load_profile
from autoprune.hw.profile import HardwareProfile, profile_from_dict
from autoprune.resources import resource_dir

SHIPPED = sorted(p.stem for p in resource_dir("hw_profiles").glob("*.yaml"))
REQUIRED = {"cpu-ort-1t", "cpu-ort-all", "cuda-ort", "cuda-torch", "trt-fp16", "trt-fp16-sparse"}


def test_required_profiles_are_shipped():
    assert REQUIRED <= set(SHIPPED)
    remote = [load_profile(n) for n in SHIPPED if load_profile(n).is_remote]
    assert {p.runtime for p in remote} >= {"tensorrt", "onnxruntime"}
    pi = next(p for p in remote if p.runtime == "onnxruntime")
    assert pi.threads == 4 and pi.provider == "CPUExecutionProvider"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_with_description(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description
    assert profile.round_to % 8 == 0


def test_default_profile_keeps_its_timing_rules():
    p = load_profile("cpu-ort-1t")
    assert (p.runtime, p.provider, p.threads, p.inter_op_threads, p.precision, p.batch_size) == \
        ("onnxruntime", "CPUExecutionProvider", 1, 1, "fp32", 1)
    assert (p.warmup_runs, p.min_repeats, p.max_repeats, p.target_rel_ci, p.max_seconds, p.round_to) == \
        (20, 50, 5000, 0.005, 1.0, 8)
    assert not p.is_remote and not p.uses_cuda


def test_gpu_profiles_ask_for_what_their_issue_says():
    assert load_profile("trt-fp16").precision == "fp16"
    sparse = load_profile("trt-fp16-sparse")
    assert sparse.sparse_weights and sparse.runtime == "tensorrt"
    assert load_profile("cuda-ort").provider == "CUDAExecutionProvider"
    assert load_profile("cuda-torch").runtime == "torch" and load_profile("cuda-torch").uses_cuda
    assert load_profile("cpu-ort-all").thread_count() == os.cpu_count()


def test_int8_and_batch_profiles_are_their_targets():
    int8, b32, fp32 = load_profile("cpu-ort-int8-1t"), load_profile("cpu-ort-b32"), load_profile("cpu-ort-1t")
    assert (int8.precision, int8.threads, int8.batch_size) == ("int8", 1, 1)
    assert (b32.precision, b32.threads, b32.batch_size) == ("fp32", 1, 32)
    assert len({int8.digest(), b32.digest(), fp32.digest()}) == 3
    assert dataclasses.replace(fp32, precision="int8").digest() != fp32.digest()   # precision is measured


@pytest.mark.parametrize("text, field", [
    ("threads: 0", "threads"),
    ("runtime: coreml", "runtime"),
    ("target_rel_ci: 2", "target_rel_ci"),
    ("graph_optimization: turbo", "graph_optimization"),
    ("threads: many", "threads"),
    ("threads: true", "threads"),
    ("runtime: tflite", "runtime"),
    ("precision: int4", "precision"),
    ("runtime: torch\nprecision: int8", "precision"),      # int8 is ONNX Runtime CPU's (static QDQ)
    ("provider: CUDAExecutionProvider\nprecision: int8", "precision"),
    ("precision: fp16", "precision"),                       # fp16 on the CPU
    ("sparse_weights: true", "sparse_weights"),             # only TensorRT
    ("runtime: torch\ncuda_graphs: true", "cuda_graphs"),   # CPU device
    ("runtime: tensorrt", "device"),                        # TensorRT on the CPU
    ("device: gpu", "device"),
    ("provider: CUDA", "provider"),
    ("io_binding: sometimes", "io_binding"),
    ("profile_layers: 1", "profile_layers"),
    ("batch_size: 0", "batch_size"),
    ("input_shape: [3, 0, 32]", "input_shape"),
    ("input_shape: []", "input_shape"),
    ("input_shape: 32", "input_shape"),
    ("cpu_affinity: [-1]", "cpu_affinity"),
    ("warmup_runs: -1", "warmup_runs"),
    ("max_seconds: 0", "max_seconds"),
    ("workspace_mb: 0", "workspace_mb"),
    ("agent_url: ftp://device:21", "agent_url"),
    ("agent_url: http://device:8765/path", "agent_url"),
    ("agent_token: my-secret", "agent_token"),
    ("agent_token: 'env:'", "agent_token"),
    ("agent_timeout_s: -5", "agent_timeout_s"),
    ("runtime: torch\nagent_url: http://pi:8765", "runtime"),
    ("min_repeats: 50\nmax_repeats: 10", "max_repeats"),
])
def test_invalid_profile_fails_naming_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ProfileError, match=f"field '{field}'"):
        load_profile(str(path))


def test_unknown_field_lists_known_ones(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("thraeds: 2\n")
    with pytest.raises(ProfileError, match=r"unknown field\(s\) \['thraeds'\].*threads"):
        load_profile(str(path))


def test_profile_from_dict_needs_a_mapping_with_a_name():
    with pytest.raises(ProfileError, match="mapping"):
        profile_from_dict(["threads", 1])
    with pytest.raises(ProfileError, match="name"):
        profile_from_dict({"threads": 1})


def test_valid_gpu_and_remote_profiles_are_accepted():
    p = HardwareProfile("x", runtime="torch", device="cuda:1", precision="fp16", cuda_graphs=True,
                        input_shape=[3, 8, 8], cpu_affinity=[0])
    assert p.input_shape == (3, 8, 8) and p.cpu_affinity == (0,) and p.uses_cuda
    r = HardwareProfile("r", agent_url="https://pi.local:8765", agent_token="file:~/token")
    assert r.is_remote


def test_digest_tracks_measurement_settings_only():
    base = load_profile("cpu-ort-1t")
    renamed = dataclasses.replace(base, name="other", description="text", agent_token="env:OTHER", agent_timeout_s=5)
    assert renamed.digest() == base.digest()
    assert dataclasses.replace(base, threads=2).digest() != base.digest()
    assert dataclasses.replace(base, agent_url="http://device:8765").digest() != base.digest()


def test_for_agent_drops_url_token_and_paths():
    profile = load_profile("rpi-ort-4t")
    sent = profile.for_agent()
    assert not {"agent_url", "agent_token", "agent_timeout_s", "source"} & set(sent)
    assert profile_from_dict(sent).digest() != profile.digest()          # no agent_url: measured locally there
    assert dataclasses.replace(profile_from_dict(sent), agent_url=profile.agent_url).digest() == profile.digest()
