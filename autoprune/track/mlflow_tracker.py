"""MLflow layout of a search.

One parent run per invocation (tag autoprune.role=search) holding the report; nested runs for the
baseline (autoprune.role=baseline) and for each trial (autoprune.role=trial, autoprune.trial_number,
autoprune.state). Every run carries its process (autoprune.owner), so runs a killed process left
RUNNING are closed as KILLED by the next search of the study. Everything goes through
MlflowClient: no global active-run state.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from autoprune.errors import AutopruneError, ConfigError, first_line
from autoprune.owner import owner_is_dead, process_owner

log = logging.getLogger(__name__)
RETRY_DELAYS_S = (0.5, 1.0, 2.0)   # a flaky tracking server gets three more chances per call


class TrackingError(AutopruneError):
    """MLflow kept failing for one call (after retries)."""


def _retry(call, *args, **kwargs):
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # MLflow raises MlflowException, requests errors, sqlite errors...
            if delay is None:
                raise TrackingError(f"MLflow {getattr(call, '__name__', 'call')} failed: {first_line(exc)}") from exc
            log.warning("MLflow %s failed (%s); retrying in %.1f s", getattr(call, "__name__", "call"),
                        type(exc).__name__, delay)
            time.sleep(delay)

ROLE = "autoprune.role"
STUDY = "autoprune.study"
TRIAL_NUMBER = "autoprune.trial_number"
STATE = "autoprune.state"
PARETO = "autoprune.pareto"
PARENT = "mlflow.parentRunId"
GROUP = "autoprune.run_group"
OWNER = "autoprune.owner"
FAIL_REASON = "autoprune.fail_reason"
ONNX_MODEL_ID = "autoprune.onnx_model_id"
TORCH_MODEL_ID = "autoprune.pytorch_model_id"


def _check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """A tracking server that does not answer fails in seconds here, instead of after the minutes of
    retries MLflow's HTTP client spends on every call."""
    if not str(uri).startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{str(uri).rstrip('/')}/health", timeout=timeout_s)  # any answer means it is up
    except requests.RequestException as exc:
        raise ConfigError(f"MLflow tracking server {uri} does not answer ({type(exc).__name__}): start it "
                          f"(mlflow server --host <host> --port <port>) or fix tracking.uri, "
                          "e.g. tracking.uri=sqlite:///mlflow.db") from None


class Tracker:
    def __init__(self, uri: str, experiment: str):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = uri
        _check_reachable(uri)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as exc:
            first = first_line(exc)
            raise ConfigError(f"cannot use MLflow tracking.uri '{uri}': {first} "
                              "(use sqlite:///mlflow.db or an http:// tracking server)") from None
        self.parent_id: Optional[str] = None

    # -- runs ---------------------------------------------------------------------------------
    def start_search(self, name: str, study: str, params: dict, group: Optional[str] = None) -> str:
        """The parent run of this invocation; workers of one run group share the group's first one."""
        tags = {ROLE: "search", STUDY: study, OWNER: process_owner(), **({GROUP: group} if group else {})}
        if group:
            shared = self._group_runs(study, group)
            if shared:
                self.parent_id = shared[0].info.run_id
                return self.parent_id
        run = _retry(self.client.create_run, self.experiment_id, run_name=name, tags=tags)
        self.parent_id = run.info.run_id
        if group:  # two workers may have created one at the same moment: the earliest wins
            winner = self._group_runs(study, group)[0].info.run_id
            if winner != self.parent_id:
                self.client.delete_run(self.parent_id)
                self.parent_id = winner
                return winner
        self.log(self.parent_id, params=params)
        return self.parent_id

    def close_orphaned_runs(self, study: str) -> list[str]:
        """Runs of `study` left RUNNING by a process of this host that is gone (kill -9, OOM, power
        loss): tagged failed and ended KILLED. A group's shared parent run is left to its live workers.
        Returns their run ids."""
        running = _retry(
            self.client.search_runs, [self.experiment_id],
            filter_string=f"tags.`{STUDY}` = '{study}' and attributes.status = 'RUNNING'", max_results=50000)
        closed = []
        for run in running:
            tags = run.data.tags
            if GROUP in tags or not owner_is_dead(tags.get(OWNER)):
                continue
            reason = {FAIL_REASON: f"process {tags[OWNER]} died (killed or crashed)"}
            self.log(run.info.run_id, tags=reason | ({STATE: "failed"} if tags.get(ROLE) == "trial" else {}))
            self.end(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
        return closed

    def _group_runs(self, study: str, group: str) -> list:
        return _retry(
            self.client.search_runs, [self.experiment_id],
            filter_string=f"tags.`{ROLE}` = 'search' and tags.`{STUDY}` = '{study}' and tags.`{GROUP}` = '{group}'",
            order_by=["attributes.start_time ASC", "attributes.run_id ASC"], max_results=1000)

    def start_child(self, name: str, role: str, tags: Optional[dict] = None) -> str:
        tags = {ROLE: role, PARENT: self.parent_id, OWNER: process_owner(), **(tags or {})}
        return _retry(self.client.create_run, self.experiment_id, run_name=name,
                      tags={k: str(v) for k, v in tags.items()}).info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        _retry(self.client.set_terminated, run_id, status=status)

    # -- data ---------------------------------------------------------------------------------
    def log(self, run_id: str, params: Optional[dict] = None, metrics: Optional[dict] = None,
            tags: Optional[dict] = None, step: int = 0) -> None:
        now = int(time.time() * 1000)
        _retry(
            self.client.log_batch, run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: Optional[str] = None) -> None:
        for path in paths:
            _retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def download(self, run_id: str, artifact: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact, str(dst)))

    def trial_runs(self, study: str) -> list:
        """All trial runs of a study, across invocations."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE}` = 'trial' and tags.`{STUDY}` = '{study}'",
            max_results=50000,
        )

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}"

    def log_models(self, run_id: str, onnx_file: Path, model) -> dict[str, str]:
        """Log a trial's model as MLflow models (ONNX and PyTorch, with signature and input example);
        their model ids are tagged on the run. `model` is the nn.Module in memory (rebuilt from the
        baseline, the plan and weights-only loading). Returns the tags."""
        import logging as _logging
        import warnings

        import mlflow
        import mlflow.onnx
        import mlflow.pytorch
        import numpy as np
        import onnx
        import onnxruntime
        import torch
        from mlflow.models import infer_signature

        model = model.eval()
        proto = onnx.load(str(onnx_file))
        tensor = proto.graph.input[0].type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        example = (np.random.default_rng(0).standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                   else np.zeros(shape, dtype=dtype))  # token ids and other integer inputs: valid zeros
        with torch.no_grad():
            signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
        mlflow.set_tracking_uri(self.uri)
        for noisy in ("mlflow", "torch._export", "torch.export"):
            _logging.getLogger(noisy).setLevel(_logging.ERROR)
        with warnings.catch_warnings(), mlflow.start_run(run_id=run_id):
            warnings.simplefilter("ignore")
            onnx_info = mlflow.onnx.log_model(proto, name="onnx_model", signature=signature, input_example=example,
                                              onnx_execution_providers=["CPUExecutionProvider"],
                                              pip_requirements=[f"onnxruntime=={onnxruntime.__version__}"])
            torch_info = mlflow.pytorch.log_model(model, name="pytorch_model", signature=signature,
                                                  input_example=example,
                                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        tags = {ONNX_MODEL_ID: onnx_info.model_id, TORCH_MODEL_ID: torch_info.model_id}
        self.log(run_id, tags=tags)
        return tags
