import optuna
import pytest

from autoprune.errors import ConfigError
from autoprune.search.space import build_space, load_space

GROUPS = ["stem.0", "layers.0.0.conv1", "layers.1.0.conv1", "layers.1.0.conv2", "layers.2.0.conv1",
          "layers.2.0.conv2"]


def test_default_space_has_one_dimension_per_group():
    space = load_space("default", GROUPS)
    assert [d.param for d in space.dimensions] == [f"ratio.{g}" for g in GROUPS]
    assert space.importances == ("l2",)


def test_ties_overrides_exclude_and_importance_choice():
    space = build_space({
        "exclude": ["stem.0"],
        "ratio": {"high": 0.8, "step": 0.1},
        "per_group": {"layers.2.*": {"high": 0.5}},
        "tie": {"stage2": ["layers.2.*"]},
        "importance": ["l2", "fpgm"],
    }, GROUPS)
    assert [d.name for d in space.dimensions] == ["stage2", "layers.0.0.conv1", "layers.1.0.conv1", "layers.1.0.conv2"]
    assert space.dimensions[0].groups == ("layers.2.0.conv1", "layers.2.0.conv2")
    assert space.dimensions[0].range.high == 0.5 and space.dimensions[1].range.high == 0.8
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    plan = space.suggest(trial)
    assert plan.ratio("layers.2.0.conv1") == plan.ratio("layers.2.0.conv2") <= 0.5
    assert plan.ratio("stem.0") == 0.0 and plan.importance in ("l2", "fpgm")
    assert set(trial.params) == {"ratio.stage2", "ratio.layers.0.0.conv1", "ratio.layers.1.0.conv1",
                                 "ratio.layers.1.0.conv2", "importance"}


def test_encode_round_trips_through_enqueue():
    space = load_space("resnet-stages", GROUPS)
    study = optuna.create_study(directions=["maximize", "minimize"])
    plan = space.uniform(0.43)        # snapped to the 0.05 grid
    study.enqueue_trial(space.encode(plan))
    assert space.suggest(study.ask()) == plan
    assert {plan.ratio(g) for g in GROUPS} == {0.45}


@pytest.mark.parametrize("data, message", [
    ({"groups": ["layers.9.*"]}, "'layers.9.\\*' matches no prunable group"),
    ({"groups": []}, "the search space is empty"),
    ({"exclude": ["*"]}, "the search space is empty"),
    ({"ratio": {"low": 0.5, "high": 0.2}}, "must satisfy 0 <= low <= high < 1"),
    ({"ratio": {"high": 1.0}}, "must satisfy 0 <= low <= high < 1"),
    ({"ratio": {"step": 0}}, "step 0.0 must be > 0"),
    ({"ratio": {"hi": 0.5}}, "unknown key\\(s\\) \\['hi'\\]"),
    ({"tie": {"a": ["layers.1.*"], "b": ["layers.1.0.conv1"]}}, "more than one tie"),
    ({"importance": ["l2", "magic"]}, "importance \\['magic'\\] unknown"),
    ({"grups": "all"}, "unknown key\\(s\\) \\['grups'\\]"),
])
def test_invalid_spaces_are_rejected_clearly(data, message):
    with pytest.raises(ConfigError, match=message):
        build_space(data, GROUPS)


def test_upper_plan_of_a_prior_space():
    space = build_space({"per_group": {"stem.0": {"high": 0.3}, "layers.2.*": {"high": 0.6}}}, GROUPS)
    assert space.has_group_ranges and not build_space({}, GROUPS).has_group_ranges
    plan = space.upper()
    assert plan.ratio("stem.0") == 0.3 and plan.ratio("layers.2.0.conv2") == 0.6 and plan.ratio("layers.1.0.conv1") == 0.85


def test_suggested_ratios_carry_no_float_noise():
    """Optuna's stepped floats come back as 0.7000000000000001 and the like: the plan holds the grid value."""
    space = build_space({"ratio": {"low": 0.0, "high": 0.9, "step": 0.1}}, GROUPS)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    grid = {round(0.1 * k, 10) for k in range(10)}
    noisy = 0
    for _ in range(40):
        trial = study.ask()
        plan = space.suggest(trial)
        noisy += any(v != round(v, 10) for v in trial.params.values() if isinstance(v, float))
        assert {plan.ratio(g) for g in GROUPS} <= grid and all(repr(plan.ratio(g)) == str(round(plan.ratio(g), 10))
                                                                for g in GROUPS)
    assert noisy, "Optuna gave no noisy value to round: the test shows nothing"


def test_warm_start_plans_are_uniform_ratios_then_the_prior_without_repeats():
    default = load_space("default", GROUPS)
    plans = default.warm_start([0.25, 0.5, 0.75, 0.85])
    assert [p.ratio("stem.0") for p in plans] == [0.25, 0.5, 0.75, 0.85]   # 0.85: the space's most pruned plan
    capped = build_space({"ratio": {"low": 0.0, "high": 0.75, "step": 0.05}}, GROUPS)
    assert [p.ratio("stem.0") for p in capped.warm_start([0.25, 0.5, 0.75, 0.85])] == [0.25, 0.5, 0.75]
    prior = build_space({"per_group": {"stem.0": {"high": 0.3}}}, GROUPS)
    assert prior.warm_start([0.5]) == [prior.uniform(0.5), prior.upper()]
    assert prior.warm_start([0.5, 0.85]) == [prior.uniform(0.5), prior.upper()]   # uniform 0.85 is the upper plan here
    assert prior.uniform(0.5).ratio("stem.0") == 0.3   # each group at most its own highest ratio
    assert default.warm_start([]) == []
