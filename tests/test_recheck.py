"""Re-timing a front side by side (autoprune.report.recheck): a model the search mis-timed is flagged against
the machine's drift; real ONNX Runtime on small models."""

import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.hw import export_model, get_backend
from autoprune.hw.profile import HardwareProfile
from autoprune.report.recheck import format_recheck, recheck, target_profile, write_recheck
from autoprune.tasks.models import resnet_small

FAST = dict(warmup_runs=3, min_repeats=10, max_repeats=300, target_rel_ci=0.05, max_seconds=0.2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("recheck")
    torch.manual_seed(0)
    example = torch.randn(1, 1, 16, 16)
    return [export_model(resnet_small(widths=w).eval(), example, root / str(i)).onnx_path
            for i, w in enumerate([(8, 16, 16), (16, 32, 32), (8, 8, 8)])]


def test_a_mis_timed_model_is_flagged_against_the_drift(models, tmp_path):
    profile = HardwareProfile("fast", **FAST)
    measured = [get_backend(profile).measure(m, profile, fresh=True).median_ms for m in models]
    said = [measured[0], measured[1], 3 * measured[2]]   # the search timed the third one on a busy machine
    rows = recheck([(f"#{i}", m, ms) for i, (m, ms) in enumerate(zip(models, said))], profile, rounds=2,
                   tolerance=0.5)   # loose: this test's own timings may wander on a loaded machine
    assert [r.flagged for r in rows] == [False, False, True]
    assert rows[2].off_by < -0.5 and rows[0].drift == rows[2].drift
    assert "#2" in format_recheck(rows).splitlines()[-1] and "mis-timed" in format_recheck(rows)
    lines = write_recheck(rows, tmp_path / "recheck.csv").read_text().splitlines()
    assert lines[0].startswith("model,search_ms,retimed_ms") and lines[3].endswith(",true") and len(lines) == 4


def test_bad_requests_name_the_fix(models):
    with pytest.raises(ConfigError, match="recheck_rounds=0: use 1 or more"):
        recheck([("#0", models[0], 1.0)], HardwareProfile("fast", **FAST), rounds=0)
    with pytest.raises(ConfigError, match="PyTorch module"):
        recheck([("#0", models[0], 1.0)], HardwareProfile("t", runtime="torch", **FAST), rounds=1)
    with pytest.raises(ConfigError, match="hw=<its yaml>"):
        target_profile("cpu-ort-1t", "my-own-profile")
    assert target_profile("cpu-ort-1t", "cpu-ort-int8-1t").precision == "int8"
