"""A named study refuses a resume with other settings (nothing written), unless search.resume=force."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient

from autoprune.cli import run
from autoprune.errors import ConfigError
from autoprune.search.fingerprint import ATTR, PARTS, check_fingerprint


def test_check_names_every_changed_part_and_force_overrides():
    stored = {p: "a" for p in PARTS}
    check_fingerprint("s", stored, dict(stored), force=False)                  # same: fine
    check_fingerprint("s", None, dict(stored), force=False)                    # a study from before: fine
    changed = dict(stored, model="b", objectives="c")
    with pytest.raises(ConfigError, match=r"different task\.model, search\.objectives: .*search\.resume=force"):
        check_fingerprint("s", stored, changed, force=False)
    check_fingerprint("s", stored, changed, force=True)


@pytest.mark.slow   # whole searches; the refusal is in the default run's bad-input catalogue
@pytest.mark.parametrize("change, named", [
    (["search.objectives=[val_accuracy,macs]"], "search.objectives"),
    (["task.model.widths=[8,8,16]"], "task.model"),
])
def test_resume_with_other_settings_fails_before_anything_is_written(make_cfg, tmp_path, change, named):
    common = ["search.study_name=mine", "search.n_trials=1"]
    run(make_cfg(*common), tmp_path / "first")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="mine", storage=storage)
    assert set(study.user_attrs[ATTR]) == set(PARTS)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs_before = len(client.search_runs([client.get_experiment_by_name("autoprune").experiment_id]))
    cached_before = sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    with pytest.raises(ConfigError, match=f"different {named}"):
        run(make_cfg(*common, "search.n_trials=2", *change), tmp_path / "second")
    assert len(optuna.load_study(study_name="mine", storage=storage).trials) == 1
    assert len(client.search_runs([client.get_experiment_by_name("autoprune").experiment_id])) == runs_before
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == cached_before   # no baseline trained


@pytest.mark.slow   # whole searches; the refusal is in the default run's bad-input catalogue
def test_force_resumes_and_records_the_new_fingerprint(make_cfg, tmp_path):
    run(make_cfg("search.study_name=mine", "search.n_trials=1"), tmp_path / "first")
    run(make_cfg("search.study_name=mine", "search.n_trials=2", "recover.lr=0.01", "search.resume=force"),
        tmp_path / "second")
    study = optuna.load_study(study_name="mine", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 2
    run(make_cfg("search.study_name=mine", "search.n_trials=2", "recover.lr=0.01"), tmp_path / "third")  # now same
