import numpy as np
import pytest
import torch

from autoprune.errors import ConfigError, ProfileError
from autoprune.hw import export_onnx, get_backend, load_profile
from autoprune.hw.stats import LatencyStats, median_rel_ci
from autoprune.tasks.models import resnet_small

from conftest import DATA


def test_default_profile_loads_by_name():
    profile = load_profile("cpu-ort-1t")
    assert profile.runtime == "onnxruntime" and profile.threads == 1 and profile.round_to == 8
    assert profile.digest() == load_profile("cpu-ort-1t").digest()


def test_unknown_profile_name_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown hw_profiles 'nope'.*cpu-ort-1t"):
        load_profile("nope")


def test_profile_that_is_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("threads: [1\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(path))


def test_median_rel_ci_shrinks_with_more_samples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 0.05, 50), rng.normal(1.0, 0.05, 5000)
    assert median_rel_ci(large) < median_rel_ci(small) < 0.1
    assert median_rel_ci(np.array([1.0, 2.0])) == float("inf")


def test_stats_from_samples():
    stats = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0, 100.0], {"cpu": "x"})
    assert stats.median_ms == 3.0 and stats.n == 5 and stats.fingerprint == {"cpu": "x"}
    assert stats.p90_ms > stats.median_ms and stats.cv > 1.0


def test_export_and_measure_with_onnxruntime(tmp_path):
    model = resnet_small(widths=(8, 16, 16)).eval()
    x = torch.randn(1, 1, 16, 16)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    assert path.stat().st_size > 1000
    assert not list(tmp_path.glob("*.data")), "weights must be inline, not external data"
    profile = load_profile(str(DATA / "fast-cpu.yaml"))
    stats = get_backend(profile).measure(path, profile)
    assert profile.min_repeats <= stats.n <= profile.max_repeats
    assert 0 < stats.median_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.fingerprint["runtime"] == "onnxruntime" and stats.fingerprint["threads"] == 1
