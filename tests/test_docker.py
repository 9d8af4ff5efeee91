"""docker/ cannot be built here (no Docker engine): check what can be checked — the compose file
parses, its worker command is a valid autoprune configuration, its agent command parses, and the
Dockerfiles copy every folder the package needs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir

from autoprune.hw.agent import parse_args
from autoprune.resources import resource_dir

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _expand(arg: str) -> str:
    """${VAR:-default} -> default, as compose does with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", arg)


def test_compose_services():
    services = _compose()["services"]
    assert {"postgres", "mlflow", "worker", "agent"} <= set(services)
    assert services["agent"]["profiles"] == ["agent"]
    assert services["mlflow"]["entrypoint"] == ["mlflow"] and services["mlflow"]["command"][0] == "server"


def test_worker_command_is_a_valid_autoprune_config():
    command = [_expand(a) for a in _compose()["services"]["worker"]["command"]]
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=command)   # unknown keys would raise here
    assert cfg.search.run_name == "compose" and cfg.search.n_trials == 48
    assert cfg.search.storage.startswith("postgresql://") and cfg.tracking.uri == "http://mlflow:5000"


def test_agent_command_parses():
    command = _compose()["services"]["agent"]["command"]
    assert command[0] == "agent"
    args = parse_args(command[1:])
    assert args.host == "0.0.0.0" and args.port == 8765


def test_dockerfiles_copy_what_the_package_needs():
    for name in ("Dockerfile.cpu", "Dockerfile.tensorrt"):
        text = (DOCKER / name).read_text()
        for folder in ("autoprune", "conf", "hw_profiles", "search_spaces"):
            assert f"COPY {folder} ./{folder}" in text, (name, folder)
        assert "constraints.txt" in text and 'ENTRYPOINT ["python", "-m", "autoprune"]' in text
