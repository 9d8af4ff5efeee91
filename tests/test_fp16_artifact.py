"""fp16 on runtime torch: the artifact is the module cast to fp16 on the profile's device, and its accuracy is
measured by running that module, not copied from the fp32 PyTorch model.

Profiles are built directly (load_profile refuses fp16 without a GPU): on the CPU, torch runs the same fp16
module with CPU kernels, so the scoring and timing paths run here; with a CUDA GPU they run there too."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from autoprune.errors import MeasurementError
from autoprune.hw import ExportedModel, export_model, load_profile
from autoprune.hw.artifact import artifact_accuracy, artifact_differs
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.torch_backend import TorchBackend

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="torch sees no CUDA GPU"))]
FAST = dict(warmup_runs=2, min_repeats=5, max_repeats=50, target_rel_ci=0.2, max_seconds=0.2)


def fp16_profile(device: str) -> HardwareProfile:
    return HardwareProfile(name="fp16-test", runtime="torch", device=device, precision="fp16", **FAST)


class Tie(nn.Module):
    """Logits (1, 1 + 1e-4): class 1 in fp32, a tie in fp16 (1 + 1e-4 rounds to 1), so argmax says class 0."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, 1.0 + 1e-4]))

    def forward(self, x):
        return x.sum(dim=1, keepdim=True) * 0 + self.logits


class Bag(nn.Module):
    """Token ids in, logits out: integer inputs must stay integers when the weights become fp16."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(16, 8), nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(dim=1))


def test_fp16_profiles_deploy_an_artifact_of_their_own():
    assert artifact_differs(load_profile("cuda-torch")) and artifact_differs(load_profile("trt-fp16"))
    assert not artifact_differs(load_profile("cpu-ort-1t"))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_fp16_accuracy_is_the_fp16_modules(device, tmp_path):
    model = Tie().eval()
    data = TensorDataset(torch.randn(12, 4), torch.ones(12, dtype=torch.long))
    exported = export_model(model, torch.randn(1, 4), tmp_path)
    assert artifact_accuracy(exported, HardwareProfile(name="fp32", runtime="torch", device=device), data) == 1.0
    assert artifact_accuracy(exported, fp16_profile(device), data) == 0.0
    assert model.logits.dtype == torch.float32   # the caller's module is not cast


@pytest.mark.parametrize("device", DEVICES)
def test_token_id_models_are_scored_and_timed_in_fp16(device, tmp_path):
    torch.manual_seed(0)
    model = Bag().eval()
    ids = torch.randint(0, 16, (40, 6))
    with torch.no_grad():
        labels = copy.deepcopy(model).half().to(device)(ids.to(device)).argmax(dim=1).cpu()   # the fp16 module's
    exported = export_model(model, ids[:1], tmp_path)
    profile = fp16_profile(device)
    assert artifact_accuracy(exported, profile, TensorDataset(ids, labels)) == 1.0
    assert artifact_accuracy(exported, profile, TensorDataset(ids, (labels + 1) % 3)) == 0.0
    stats = TorchBackend().measure(exported, profile)
    assert stats.median_ms > 0 and stats.fingerprint["precision"] == "fp16"


def test_scoring_a_torch_artifact_needs_its_module(tmp_path):
    exported = export_model(Tie().eval(), torch.randn(1, 4), tmp_path)
    data = TensorDataset(torch.randn(2, 4), torch.ones(2, dtype=torch.long))
    with pytest.raises(MeasurementError, match="needs the PyTorch module"):
        artifact_accuracy(ExportedModel(exported.onnx_path), fp16_profile("cpu"), data)


def test_onnxruntime_scoring_is_unchanged(tmp_path):
    model = Tie().eval()
    exported = export_model(model, torch.randn(1, 4), tmp_path)
    data = TensorDataset(torch.randn(3, 4), torch.tensor([1, 1, 0]))
    assert artifact_accuracy(ExportedModel(exported.onnx_path), load_profile("cpu-ort-1t"), data) == pytest.approx(2 / 3)
    assert np.isclose(artifact_accuracy(exported, load_profile("cpu-ort-1t"), data), 2 / 3)
