"""Pre-flight (autoprune/preflight.py): real pruning, ONNX export and ONNX Runtime, in a real forked child
with a real memory limit and a real hang; the context that drops what it excludes; the factory and
chance-level messages."""

from __future__ import annotations


import pytest
import torch
from torch.utils.data import TensorDataset

from autoprune.baseline import near_chance
from autoprune.context import build_context
from autoprune.preflight import PreflightError, run_preflight
from autoprune.prune import ChannelPruner, make_pruner, output_layers
from autoprune.search.fingerprint import study_fingerprint
from autoprune.tasks.models import resnet_small
from preflight_models import FixedReshape, OnlyFixedReshape, greedy_net, stuck_net

X = torch.randn(1, 1, 16, 16)


def pruner_for(model):
    return make_pruner(model, X, output_layers(model, X), 1)


def test_every_group_of_a_plain_resnet_passes_every_ratio():
    model = resnet_small(widths=(8, 16, 16)).eval()
    pruner = pruner_for(model)
    report = run_preflight(model, X, pruner)
    assert report.prunable == [g.name for g in pruner.groups(model)]
    assert not report.excluded and not report.limited and not report.combined
    assert {g.max_ratio for g in report.groups} == {0.75}
    assert report.lines()[0].startswith(f"pre-flight ({report.seconds:.1f} s, ratios [0.25, 0.5, 0.75]): "
                                        f"{len(report.prunable)} of {len(report.groups)} groups prunable, 0 excluded")


def test_a_group_that_breaks_the_model_is_excluded_with_its_reason():
    model = FixedReshape(width=32).eval()
    report = run_preflight(model, X, pruner_for(model))
    assert report.prunable == ["features.0"]
    assert list(report.excluded) == ["features.3"]
    reason = report.excluded["features.3"]
    assert reason.startswith("at ratio 0.25: prune: after removing channels of group(s) ['features.3']")
    assert "shape '[1, 512]' is invalid" in reason
    assert any(line.startswith("  excluded features.3: at ratio 0.25") for line in report.lines())


def test_a_model_with_no_prunable_group_is_one_error_naming_the_group():
    model = OnlyFixedReshape(width=32).eval()
    with pytest.raises(PreflightError, match=r"no group of task.model \(OnlyFixedReshape\) can be pruned, exported "
                                             r"and run \(group 'conv' at ratio 0.25: prune: .*prune.ignore"):
        run_preflight(model, X, pruner_for(model))


def test_a_trace_that_never_ends_is_stopped_and_the_module_named():
    model = stuck_net().eval()
    with pytest.raises(PreflightError) as err:
        run_preflight(model, X, ChannelPruner(X, ["fc"], 1), timeout_s=3)
    assert str(err.value) == ("pre-flight of task.model (_Net) ran past its 3 s limit while tracing the channel "
                              "dependencies in module 'inner': add that module to prune.ignore (or set "
                              "prune.preflight=false to skip this check, at the risk of the same failure during "
                              "the search)")


def test_a_trace_that_explodes_is_stopped_by_the_memory_limit():
    model = greedy_net().eval()
    with pytest.raises(PreflightError, match=r"needed more than its 512 MiB memory limit while tracing the channel "
                                             r"dependencies in module 'inner': add that module to prune.ignore"):
        run_preflight(model, X, ChannelPruner(X, ["fc"], 1), memory_mb=512)


def test_the_search_space_leaves_out_what_the_preflight_excluded(make_cfg):
    model = ["task.model._target_=preflight_models.FixedReshape", "~task.model.widths", "~task.model.blocks",
             "+task.model.width=32", "task.train.epochs=0"]
    checked = build_context(make_cfg(*model, "search_space=default", "prune.preflight=true"))
    assert checked.preflight.excluded.keys() == {"features.3"}
    assert checked.space.groups == ("features.0",)
    assert {g.name for g in checked.groups} == {"features.0", "features.3"}
    unchecked = build_context(make_cfg(*model, "prune.preflight=false"))
    assert unchecked.preflight is None and set(unchecked.space.groups) == {"features.0", "features.3"}
    assert checked.study_name != unchecked.study_name  # different spaces: different studies


def test_the_preflight_settings_do_not_rename_the_study(make_cfg):
    a = build_context(make_cfg("task.train.epochs=0", "prune.preflight=true"))
    b = build_context(make_cfg("task.train.epochs=0", "prune.preflight_timeout_s=100", "prune.preflight_memory_mb=2000"))
    assert a.preflight is not None and not a.preflight.excluded
    assert a.study_name == b.study_name
    assert study_fingerprint(a.cfg, a.profile.digest()) == study_fingerprint(b.cfg, b.profile.digest())


def labels(*ys):
    return TensorDataset(torch.zeros(len(ys), 1), torch.tensor(ys))


def test_a_baseline_at_chance_level_is_warned_about():
    val = labels(*range(10), *range(10))           # 10 balanced classes: chance is 10 %
    assert near_chance(0.95, val, "trained, cached in x") is None
    assert near_chance(0.20, val, "trained, cached in x") is None
    warning = near_chance(0.10, val, "trained, cached in x")
    assert warning.startswith("the baseline (trained, cached in x) reaches 10.0% val accuracy, near chance level "
                              "(10.0% with 10 classes)")
    assert "task.train.epochs" in warning and "task.checkpoint" in warning
    skewed = labels(*[0] * 18, 1, 2)                 # always answering 0 scores 90 %
    assert near_chance(0.9, skewed, "checkpoint w.pt").endswith("check the weights in task.checkpoint "
                                                                "(and that they belong to this task.model and data)")
