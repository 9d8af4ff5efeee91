"""Nothing read back from a store runs code: payload files in the artifact store and payload
`_target_`s in a study's stored config are refused, and the payload never executes."""

from __future__ import annotations

import pickle
from pathlib import Path
from urllib.parse import unquote, urlparse

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from autoprune.cli import run
from autoprune.errors import ConfigError, WeightsError
from autoprune.search.existing import study_config
from autoprune.weights import load_weights


class Payload:
    """Unpickling this creates `marker`: if the file exists, code from a store ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("security")
    outcome = run(compose_config(tmp, "search.n_trials=1", "search.study_name=sec"), tmp / "search")
    return tmp, outcome


def _cfg(tmp, *overrides):
    from conftest import compose_config

    return compose_config(tmp, "search.study_name=sec", "search.n_trials=1", *overrides)


def _artifact(client: MlflowClient, run_id: str, name: str) -> Path:
    return Path(unquote(urlparse(client.get_run(run_id).info.artifact_uri).path)) / name


def _plant(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:   # what an attacker with write access to the artifact store would leave
        torch.save({"weight": Payload(marker)}, f)


def test_load_weights_refuses_a_payload(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(WeightsError, match="not a weights-only state_dict"):
        load_weights(tmp_path / "model.pt")
    _plant(tmp_path / "model2.pt", marker)
    with pytest.raises(WeightsError):
        load_weights(tmp_path / "model2.pt")
    assert not marker.exists()


def test_reproduce_refuses_a_payload_model_pt(searched):
    tmp, _ = searched
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    study = optuna.load_study(study_name="sec", storage=f"sqlite:///{tmp / 'optuna.db'}")
    run_id = study.trials[0].user_attrs["mlflow_run_id"]
    artifact = _artifact(client, run_id, "model.pt")
    original = artifact.read_bytes()
    marker = tmp / "pwned-reproduce"
    try:
        _plant(artifact, marker)
        with pytest.raises(WeightsError):
            run(_cfg(tmp, "mode=reproduce", "reproduce.trial=0"), tmp / "reproduce")
    finally:
        artifact.write_bytes(original)
    assert not marker.exists()
    again = run(_cfg(tmp, "mode=reproduce", "reproduce.trial=0"), tmp / "reproduce-ok")   # the genuine one works
    assert again.same_architecture


def test_finishing_a_pareto_model_refuses_a_payload_model_pt(searched):
    tmp, _ = searched
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    study = optuna.load_study(study_name="sec", storage=f"sqlite:///{tmp / 'optuna.db'}")
    run_id = study.trials[0].user_attrs["mlflow_run_id"]
    client.delete_tag(run_id, "autoprune.onnx_model_id")   # the next search finishes this Pareto model again
    artifact = _artifact(client, run_id, "model.pt")
    original = artifact.read_bytes()
    marker = tmp / "pwned-finish"
    try:
        _plant(artifact, marker)
        run(_cfg(tmp), tmp / "search-again")    # budget spent: only the Pareto step, which skips that model
    finally:
        artifact.write_bytes(original)
    assert not marker.exists()
    assert "autoprune.onnx_model_id" not in client.get_run(run_id).data.tags


def test_a_stored_target_outside_the_allow_list_is_refused(searched):
    tmp, _ = searched
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    study = optuna.load_study(study_name="sec", storage=storage)
    genuine = study.user_attrs["config"]
    marker = tmp / "pwned-config"
    tampered = {**genuine, "task": {**genuine["task"], "data": {"_target_": "builtins.open", "file": str(marker),
                                                                 "mode": "w"}}}
    try:
        study.set_user_attr("config", tampered)
        with pytest.raises(ConfigError, match=r"task\.data\._target_='builtins\.open'.*not trusted"):
            run(_cfg(tmp, "mode=reproduce", "reproduce.trial=0"), tmp / "reproduce-config")
        assert not marker.exists()
        # the same target given on this command's own command line is the user's choice: trusted
        cli = _cfg(tmp, "mode=reproduce", "reproduce.trial=0", "task.data._target_=builtins.open")
        assert study_config(study, cli).task.data["_target_"] == "builtins.open"
        study.set_user_attr("config", {**genuine, "seed": "${oc.env:HOME}"})
        with pytest.raises(ConfigError, match="interpolation at seed"):
            study_config(study, _cfg(tmp))
    finally:
        study.set_user_attr("config", genuine)
    assert not marker.exists()
