"""The typed config (autoprune.config): defaults in one place, checked once, stored as composed."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from autoprune.config import AppConfig, ConstraintsConfig, PruneConfig, SearchConfig
from autoprune.errors import ConfigError
from autoprune.overrides import check_overrides
from autoprune.recover import KDConfig, RecoverConfig, TrainConfig
from autoprune.resources import resource_dir
from autoprune.schema import field_at, to_plain
from autoprune.search.objectives import CONSTRAINTS, DIRECTIONS


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def schema_defaults() -> dict:
    out = {}
    for f in dataclasses.fields(AppConfig):
        if f.name != "task":
            out[f.name] = to_plain(f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    return out


def test_yaml_repeats_the_dataclass_defaults_exactly():
    """conf/config.yaml may only repeat the schema's defaults: same keys, same values, same types."""
    yaml = OmegaConf.to_container(composed(), resolve=True)
    yaml.pop("task")
    defaults = schema_defaults()
    assert json.dumps(yaml) == json.dumps(defaults)   # order, ints vs floats, lists: all as in the YAML


def test_a_drifted_default_is_caught():
    """The comparison above is strict enough to see one default changed on either side."""
    yaml = OmegaConf.to_container(composed("recover.epochs=2"), resolve=True)
    yaml.pop("task")
    assert json.dumps(yaml) != json.dumps(schema_defaults())


@pytest.mark.parametrize("overrides", [
    (),
    ("recover.lr=1", "prune.agp.start=0", "search.constraints.max_latency_ms=2", "search.warm_start=[0.5]"),
    ("task=cifar10-resnet18", "search.study_name=2024", "prune.importance=[l1,l2]", "search.heartbeat_s=null"),
])
def test_stored_config_is_what_hydra_composed(overrides):
    """The study's stored config and the hashes behind study names see the values as given (an int in a
    float field stays an int), so studies made before the schema keep their names."""
    cfg = composed(*overrides)
    typed = AppConfig.of(cfg)
    expected = OmegaConf.to_container(cfg, resolve=True)
    if "search.study_name=2024" in overrides:
        expected["search"]["study_name"] = "2024"   # typed as the string it is used as
    assert json.dumps(typed.to_dict()) == json.dumps(expected)
    assert AppConfig.of(typed) is typed and AppConfig.of(typed.to_dict()) == typed


@pytest.mark.parametrize("override, message", [
    ("search.n_trials=-1", "search.n_trials=-1 must be an integer >= 0, e.g. 24"),
    ("search.sampler=tpx", "unknown search.sampler 'tpx': did you mean search.sampler=tpe? choose one of"),
    ("search.backend=ray", "unknown search.backend 'ray': choose one of [optuna, nni]"),
    ("search.nni.tuner=anneel", "did you mean search.nni.tuner=anneal?"),
    ("search.resume=maybe", "unknown search.resume 'maybe': use auto"),
    ("search.objectives=[val_accuracy,speed]", "unknown search.objectives ['speed']: choose from"),
    ("search.objectives=[macs,macs]", "search.objectives=[macs,macs] repeats an item"),
    ("search.objectives=[]", "search.objectives=[] must be a non-empty list"),
    ("search.constraints.min_accuracy=1.5", "min_accuracy=1.5 is outside [0, 1]: validation accuracy is a fraction"),
    ("search.constraints.max_params=0", "search.constraints.max_params=0 must be a number > 0"),
    ("search.warm_start=[0.2,1.5]", "search.warm_start ratio 1.5 is outside [0, 1): give pruning ratios"),
    ("prune.schedule=weekly", "unknown prune.schedule 'weekly': choose one of [oneshot, iterative, agp, lth]"),
    ("prune.importance=fgpm", "unknown prune.importance 'fgpm': did you mean prune.importance=fpgm?"),
    ("prune.importance=[l1,magic]", "unknown prune.importance ['magic']"),
    ("prune.pattern=diagonal", "unknown prune.pattern 'diagonal'"),
    ("prune.unstructured_scope=net", "unknown prune.unstructured_scope 'net'"),
    ("prune.iterative.steps=0", "prune.iterative.steps=0 must be an integer >= 1"),
    ("prune.agp.start=0.9", "prune.agp start=0.9, end=0.5: need 0 <= start <= end <= 1"),
    ("prune.lth.train_epochs=-1", "prune.lth.train_epochs=-1 must be an integer >= 0"),
    ("recover.lr=0", "recover.lr=0 must be a learning rate > 0, e.g. 0.02"),
    ("recover.momentum=1", "recover.momentum=1 is outside [0, 1): e.g. 0.9"),
    ("recover.kd.alpha=2", "recover.kd.alpha=2 is outside [0, 1]"),
    ("recover.regulariser.kind=l0", "unknown recover.regulariser.kind 'l0'"),
    ("task.train.batch_size=0", "task.train.batch_size=0 must be an integer >= 1"),
    ("sensitivity.ratios=[0.5,1]", "sensitivity.ratios ratio 1 is outside (0, 1)"),
    ("sensitivity.max_drop=1", "sensitivity.max_drop=1 is outside [0, 1): e.g. sensitivity.max_drop=0.02"),
    ("pick.min_accuracy=95", "pick.min_accuracy=95 is outside [0, 1]"),
    ("mode=train", "unknown mode 'train': choose one of [search, report"),
    ("+search.n_trails=3", "search: unknown key(s) ['n_trails']: did you mean search.n_trials?"),
    ("+task.train.epoch=3", "task.train: unknown key(s) ['epoch']: did you mean task.train.epochs?"),
])
def test_a_bad_value_is_one_line_naming_key_and_fix(override, message):
    with pytest.raises(ConfigError) as err:
        AppConfig.of(composed(override))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_sections_built_in_python_meet_the_same_rules():
    with pytest.raises(ConfigError, match="recover.kd.alpha=2 is outside"):
        KDConfig(alpha=2)
    with pytest.raises(ConfigError, match="lr=-1 must be a learning rate > 0"):
        TrainConfig(lr=-1)
    with pytest.raises(ConfigError, match="epochs=1.5 is not an integer"):
        TrainConfig(epochs=1.5)
    with pytest.raises(ConfigError, match="unknown search.sampler 'magic'"):
        SearchConfig(sampler="magic")
    assert RecoverConfig.coerce(AppConfig.of(composed("recover.epochs=5")).recover).train.epochs == 5


def test_constraints_and_objectives_match_the_metrics_they_bound():
    assert [f.name for f in dataclasses.fields(ConstraintsConfig)] == list(CONSTRAINTS)
    objectives = field_at(SearchConfig, "objectives")[1].metadata["autoprune.rule"]
    assert objectives.options() == list(DIRECTIONS)


def test_a_stored_config_of_another_version_is_read_leniently():
    """A study stored by an older or newer autoprune: unknown keys dropped, missing ones defaulted; the
    command's own config is strict."""
    stored = AppConfig.of(composed()).to_dict()
    stored["prune"]["retired_key"] = 1
    del stored["prune"]["preflight"]
    typed = AppConfig.of(stored, lenient=True)
    assert typed.prune.preflight is True and not hasattr(typed.prune, "retired_key")
    with pytest.raises(ConfigError, match=r"prune: unknown key\(s\) \['retired_key'\]"):
        AppConfig.of(stored)


def test_task_is_an_open_mapping_with_typed_common_keys():
    cfg = AppConfig.of(composed("+task.note=kept", "task.train.epochs=4"))
    assert cfg.task.train.epochs == 4 and cfg.task.model["_target_"].startswith("autoprune.")
    assert cfg.task.as_mapping()["note"] == "kept"   # hashed into the baseline cache key and stored as given


def test_override_types_come_from_the_schema():
    """A null default no longer means "anything goes": the schema knows max_latency_ms is a number."""
    with pytest.raises(ConfigError, match="search.constraints.max_latency_ms=fast is not a number or null"):
        check_overrides(["search.constraints.max_latency_ms=fast"])
    with pytest.raises(ConfigError, match="pick.max_params=lots is not an integer or null"):
        check_overrides(["pick.max_params=lots"])
    check_overrides(["search.constraints.max_latency_ms=2.5", "search.study_name=2024", "prune.importance=[l1,l2]"])
    assert isinstance(AppConfig.of(composed()).prune, PruneConfig)
