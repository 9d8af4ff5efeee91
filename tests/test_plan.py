import pytest

from autoprune.errors import ConfigError
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.prune import kept_channels


@pytest.mark.parametrize(
    "channels, ratio, round_to, expected",
    [
        (32, 0.0, 8, 32),
        (32, 0.5, 8, 16),
        (32, 0.3, 8, 24),   # 22.4 -> nearest multiple of 8
        (32, 0.9, 8, 8),    # never below one multiple
        (64, 0.85, 8, 8),   # 9.6 -> 8
        (64, 0.8, 8, 16),   # 12.8 -> 16
        (30, 0.5, 1, 15),
        (6, 0.5, 8, 6),     # multiple larger than the layer: keep it whole
        (128, 0.25, 16, 96),
    ],
)
def test_kept_channels(channels, ratio, round_to, expected):
    assert kept_channels(channels, ratio, round_to) == expected


def test_plan_json_round_trip():
    plan = PrunePlan({"a.conv": GroupPlan(0.25), "b": GroupPlan(0.5)}, importance="l1")
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan
    assert again.ratio("a.conv") == 0.25 and again.ratio("missing") == 0.0


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval_is_rejected(ratio):
    with pytest.raises(ConfigError, match=r"outside \[0, 1\)"):
        GroupPlan(ratio)
