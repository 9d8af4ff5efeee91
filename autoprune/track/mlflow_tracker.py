"""MLflow layout of a search.

One parent run per invocation (tag autoprune.role=search) holding the report; nested runs for the
baseline (autoprune.role=baseline) and for each trial (autoprune.role=trial, autoprune.trial_number,
autoprune.state). Trial runs are full-fidelity results only: in a multi-fidelity search each candidate
also gets a run of its own at rung 0 (autoprune.role=candidate, autoprune.rung=0,
autoprune.trial_number, autoprune.promoted=true|false with autoprune.promotion saying why, its rung-0
metrics); a promoted candidate's trial run has the same trial number. Every run carries its process (autoprune.owner), so runs a killed process left
RUNNING are closed as KILLED by the next search of the study. Everything goes through
MlflowClient: no global active-run state.

Durability: this is the only module that talks to MLflow, and every call goes through one retry
policy (`_call`): transient failures (a locked database, a lost connection) are retried with
back-off, permanent ones (no such run, an invalid value, a full disk) are not; what still fails
becomes one `TrackingError` line. Optuna is the record: `reconcile` makes MLflow agree with it.
A fresh sqlite store is created and migrated under a file lock, so workers starting together do
not migrate it at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, cast

import tenacity
from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from autoprune.errors import AutopruneError, ConfigError, first_line
from autoprune.owner import owner_is_dead, process_owner

log = logging.getLogger(__name__)
RETRY_DELAYS_S = (0.5, 1.0, 2.0)   # a transient failure gets three more chances per call, after these waits
# MLflow error codes that no retry can fix (MlflowException.error_code).
PERMANENT = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                       "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND",
                       "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "CUSTOMER_UNAUTHORIZED"})


class TrackingError(AutopruneError):
    """MLflow kept failing for one call (after retries)."""


def _chain(exc: Optional[BaseException]) -> list[BaseException]:
    """`exc` and its causes, outermost first."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def disk_full(exc: BaseException) -> bool:
    """A full disk, whether sqlite ("database or disk is full") or a file write (ENOSPC) says so."""
    return any(getattr(e, "errno", None) == errno.ENOSPC or "disk is full" in str(e)
               or "No space left on device" in str(e) for e in _chain(exc))


def transient(exc: BaseException) -> bool:
    """Worth retrying: a locked database, a lost connection, a server error. Not: a full disk (waiting
    seconds does not free it), an MLflow error that says the request itself is wrong, a bug."""
    if disk_full(exc):
        return False
    if isinstance(exc, MlflowException):
        return exc.error_code not in PERMANENT
    import requests
    import sqlalchemy.exc

    return isinstance(exc, (ConnectionError, TimeoutError, requests.RequestException,
                            sqlalchemy.exc.OperationalError))


def _why(exc: BaseException) -> str:
    """One line: 'disk full (...)' or the innermost cause's first line (not SQLAlchemy's wrapping)."""
    root = _chain(exc)[-1]
    return f"disk full ({first_line(root)})" if disk_full(exc) else first_line(root)


def _call(call, *args, **kwargs):
    """`call(*args, **kwargs)` under the retry policy; what still fails raises one TrackingError line."""
    name = getattr(call, "__name__", "call")

    def before_sleep(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None  # tenacity sets it (a failed attempt) before a sleep
        log.warning("MLflow %s failed (%s); retrying in %.1f s", name,
                    _why(cast(BaseException, state.outcome.exception())), state.upcoming_sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient), reraise=True,
        stop=tenacity.stop_after_attempt(len(RETRY_DELAYS_S) + 1),
        wait=lambda state: (RETRY_DELAYS_S[state.attempt_number - 1] if state.attempt_number <= len(RETRY_DELAYS_S)
                            else 0.0),  # asked before `stop` is, also after the last attempt
        before_sleep=before_sleep)
    try:
        return retrying(call, *args, **kwargs)
    except Exception as exc:  # MlflowException, requests errors, sqlite errors, OSError...
        raise TrackingError(f"MLflow {name} failed: {_why(exc)}") from exc


class _NoTracebacks(logging.Filter):
    """MLflow's sqlalchemy store logs a traceback for every database error before raising it; the
    retry policy says each failure once, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None and "SQLAlchemy database error" not in str(record.msg)


_QUIET = _NoTracebacks()


def _quote(value: str) -> str:
    """A filter-string literal for `value`. MLflow has no escapes: quote with the kind of quote it does
    not contain (a value with both kinds is matched by `_equals` with LIKE, then exactly)."""
    return f"'{value}'" if "'" not in value else f'"{value}"'


def _equals(key: str, value: str) -> str:
    if "'" in value and '"' in value:  # '_' matches any one character, the exact check follows
        return f"{key} LIKE '{value.replace(chr(39), '_')}'"
    return f"{key} = {_quote(value)}"


def _where(**tags: str) -> str:
    return " and ".join(_equals(f"tags.`{key}`", str(value)) for key, value in tags.items())


def _matching(runs: list, **tags: str) -> list:
    return [r for r in runs if all(r.data.tags.get(k) == str(v) for k, v in tags.items())]


@contextlib.contextmanager
def _store_lock(uri: str):
    """A sqlite store is created and migrated by one process at a time (a file lock next to it)."""
    if not str(uri).startswith("sqlite:"):
        yield
        return
    from sqlalchemy.engine import make_url

    database = make_url(str(uri)).database
    if not database or database == ":memory:":
        yield
        return
    with FileLock(f"{database}.lock"):
        yield


ROLE = "autoprune.role"
STUDY = "autoprune.study"
TRIAL_NUMBER = "autoprune.trial_number"
STATE = "autoprune.state"
PARETO = "autoprune.pareto"
RUNG = "autoprune.rung"             # candidate runs: the rung they were scored at (0)
PROMOTED = "autoprune.promoted"     # candidate runs: true | false
PROMOTION = "autoprune.promotion"   # candidate runs: why (promoted or not)
PARENT = "mlflow.parentRunId"
GROUP = "autoprune.run_group"
OWNER = "autoprune.owner"
FAIL_REASON = "autoprune.fail_reason"
LOGGING_ERROR = "autoprune.logging_error"
ONNX_MODEL_ID = "autoprune.onnx_model_id"
TORCH_MODEL_ID = "autoprune.pytorch_model_id"
DEPLOY_MODEL_ID = "autoprune.deploy_model_id"   # the ONNX model `pick` logged with its model card


@dataclass(frozen=True)
class TrialRecord:
    """A COMPLETE trial as Optuna (the record) has it, and as its MLflow run must show it."""

    number: int
    run_id: Optional[str]
    params: dict
    metrics: dict
    artifacts: list = field(default_factory=list)   # files of this trial still on disk (re-logged if missing)
    start_ms: Optional[int] = None   # the trial's own start and end (Optuna's datetime_start / _complete)
    end_ms: Optional[int] = None


@dataclass
class Reconciled:
    """What `Tracker.reconcile` changed: runs repaired, runs created, runs flagged autoprune.logging_error."""

    repaired: list = field(default_factory=list)
    created: list = field(default_factory=list)
    flagged: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.repaired or self.created or self.flagged)


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
        logging.getLogger("mlflow.store.db.utils").addFilter(_QUIET)
        self.uri = uri
        _check_reachable(uri)
        try:
            with _store_lock(uri):  # the first call creates / migrates a sqlite store: one process at a time
                self.client = MlflowClient(tracking_uri=uri)
                found = _call(self.client.get_experiment_by_name, experiment)
                self.experiment_id = found.experiment_id if found else _call(self.client.create_experiment,
                                                                             experiment)
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
        parent_id = self.start_root(name, tags)
        if group:  # two workers may have created one at the same moment: the earliest wins
            winner = self._group_runs(study, group)[0].info.run_id
            if winner != self.parent_id:
                _call(self.client.delete_run, self.parent_id)
                self.parent_id = winner
                return winner
        self.log(parent_id, params=params)
        return parent_id

    def start_root(self, name: str, tags: dict) -> str:
        """A top-level run (a search's or a sensitivity analysis's parent); it becomes `parent_id`."""
        run = _call(self.client.create_run, self.experiment_id, run_name=name,
                    tags={k: str(v) for k, v in tags.items()})
        self.parent_id = run.info.run_id
        return self.parent_id

    def _search(self, filter_string: str, **kwargs) -> list:
        return _call(self.client.search_runs, [self.experiment_id], filter_string=filter_string, **kwargs)

    def close_orphaned_runs(self, study: str) -> list[str]:
        """Runs of `study` left RUNNING by a process of this host that is gone (kill -9, OOM, power
        loss): tagged failed and ended KILLED. A group's shared parent run is left to its live workers.
        Returns their run ids."""
        running = _matching(self._search(f"{_where(**{STUDY: study})} and attributes.status = 'RUNNING'",
                                         max_results=50000), **{STUDY: study})
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
        tags = {ROLE: "search", STUDY: study, GROUP: group}
        return _matching(self._search(_where(**tags), order_by=["attributes.start_time ASC", "attributes.run_id ASC"],
                                      max_results=1000), **tags)

    def start_child(self, name: str, role: str, tags: Optional[dict] = None, start_ms: Optional[int] = None) -> str:
        """A nested run; `start_ms` (epoch milliseconds) is when what it records began (default: now)."""
        tags = {ROLE: role, OWNER: process_owner(), **({PARENT: self.parent_id} if self.parent_id else {}),
                **(tags or {})}
        return _call(self.client.create_run, self.experiment_id, run_name=name, start_time=start_ms,
                     tags={k: str(v) for k, v in tags.items()}).info.run_id

    def end(self, run_id: str, status: str = "FINISHED", end_ms: Optional[int] = None) -> None:
        """End a run; `end_ms` (epoch milliseconds) is when what it records ended (default: now)."""
        _call(self.client.set_terminated, run_id, status=status, end_time=end_ms)

    @contextlib.contextmanager
    def _into_run(self, run_id: str):
        """`mlflow.start_run(run_id=...)` for the fluent `log_model` APIs, which have no run argument. Leaving
        it ends the run with end_time = now; a run that had ended keeps its own status and end time instead
        (a trial run's duration stays the trial's, whenever its models are logged)."""
        import mlflow

        before = _call(self.client.get_run, run_id).info
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id):
            yield
        if before.end_time is not None and before.status != "RUNNING":
            self.end(run_id, before.status, before.end_time)

    # -- data ---------------------------------------------------------------------------------
    def log(self, run_id: str, params: Optional[dict] = None, metrics: Optional[dict] = None,
            tags: Optional[dict] = None, step: int = 0) -> None:
        now = int(time.time() * 1000)
        _call(
            self.client.log_batch, run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: Optional[str] = None) -> None:
        for path in paths:
            _call(self.client.log_artifact, run_id, str(path), artifact_path)

    def download(self, run_id: str, artifact: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(_call(self.client.download_artifacts, run_id, artifact, str(dst)))

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of each metric of a run."""
        return dict(_call(self.client.get_run, run_id).data.metrics)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(_call(self.client.get_run, run_id).data.tags)

    def trial_runs(self, study: str) -> list:
        """All trial runs of a study, across invocations."""
        tags = {ROLE: "trial", STUDY: study}
        return _matching(self._search(_where(**tags), max_results=50000), **tags)

    def baseline_run(self, study: str):
        """The latest baseline run of a study that holds its measurements (one whose logging failed
        does not), or None."""
        tags = {ROLE: "baseline", STUDY: study}
        runs = _matching(self._search(_where(**tags), order_by=["attributes.start_time DESC"], max_results=1000),
                         **tags)
        return next((r for r in runs if {"val_accuracy", "latency_ms"} <= r.data.metrics.keys()), None)

    def search_run(self, study: str):
        """The latest parent run of a study's searches (params hw, hw_digest ...), or None."""
        tags = {ROLE: "search", STUDY: study}
        runs = _matching(self._search(_where(**tags), order_by=["attributes.start_time DESC"], max_results=1000),
                         **tags)
        return runs[0] if runs else None

    def register(self, model_id: str, name: str, alias: str, tags: dict, description: Optional[str] = None) -> str:
        """Register a logged model as a new version of `name` and point `alias` at it; returns the version."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        version = str(_call(mlflow.register_model, f"models:/{model_id}", name, tags=tags).version)
        if description:
            _call(self.client.update_model_version, name, version, description)
        _call(self.client.set_registered_model_alias, name, alias, version)
        return version

    def find_version(self, name: str, tags: dict) -> Optional[str]:
        """The lowest version of registered model `name` carrying every tag in `tags`, or None."""
        try:
            versions = _call(self.client.search_model_versions, f"name = {_quote(name)}")
        except TrackingError:  # no such registered model yet
            return None
        found = [int(v.version) for v in versions if all(v.tags.get(k) == str(t) for k, t in tags.items())]
        return str(min(found)) if found else None

    def update_version(self, name: str, version: str, alias: str, tags: dict, description: str) -> None:
        """Refresh an existing version's tags and description and point `alias` at it."""
        for key, value in tags.items():
            _call(self.client.set_model_version_tag, name, version, key, str(value))
        _call(self.client.update_model_version, name, version, description)
        _call(self.client.set_registered_model_alias, name, alias, version)

    # -- reconciliation -------------------------------------------------------------------------
    def reconcile(self, study: str, records: Iterable[TrialRecord]) -> Reconciled:
        """Make MLflow agree with Optuna for the COMPLETE trials in `records`: each gets a trial run
        (created if none was), its params, metrics and artifacts where missing, `autoprune.state=complete`,
        no fail reason, status FINISHED. A run still being logged by a live process of another worker is
        left to it. What cannot be repaired (a param logged with another value, MLflow still failing)
        is flagged `autoprune.logging_error`. One run's trouble never stops the others."""
        runs: dict[int, list] = {}
        for run in self.trial_runs(study):
            runs.setdefault(int(run.data.tags[TRIAL_NUMBER]), []).append(run)
        done = Reconciled()
        for record in records:
            candidates = runs.get(record.number, [])
            run = next((r for r in candidates if r.info.run_id == record.run_id), candidates[0] if candidates else None)
            try:
                outcome = self._reconcile_run(study, record, run)
            except TrackingError as exc:
                outcome = f"{exc}"
            if outcome is None:
                continue
            if outcome == "created":
                done.created.append(record.number)
            elif outcome == "repaired":
                done.repaired.append(record.number)
            else:
                done.flagged.append(record.number)
                if run is not None:
                    with contextlib.suppress(TrackingError):
                        self.log(run.info.run_id, tags={LOGGING_ERROR: f"reconcile: {outcome}"[:5000]})
        return done

    def _reconcile_run(self, study: str, record: TrialRecord, run) -> Optional[str]:
        """None (already in agreement, or another live worker's), 'created', 'repaired', or why not."""
        if run is None:
            run_id = self.start_child(f"trial-{record.number}", "trial",
                                      {STUDY: study, TRIAL_NUMBER: record.number, STATE: "running"}, record.start_ms)
            self.log(run_id, params=record.params)
            run = _call(self.client.get_run, run_id)
            created = True
        else:
            created = False
            owner = run.data.tags.get(OWNER)
            if run.info.status == "RUNNING" and owner != process_owner() and not owner_is_dead(owner):
                return None  # its worker is alive and may still be logging
        run_id, data = run.info.run_id, run.data
        conflicts = sorted(k for k, v in record.params.items() if k in data.params and data.params[k] != str(v))
        params = {k: v for k, v in record.params.items() if k not in data.params}
        metrics = {k: v for k, v in record.metrics.items() if k not in data.metrics}
        needs = (params or metrics or data.tags.get(STATE) != "complete" or FAIL_REASON in data.tags
                 or run.info.status != "FINISHED" or LOGGING_ERROR in data.tags)
        if not needs and not created:
            return None
        missing = []
        if record.artifacts or LOGGING_ERROR in data.tags or created or run.info.status != "FINISHED":
            logged = {a.path for a in _call(self.client.list_artifacts, run_id)}
            for path in record.artifacts:
                if Path(path).name not in logged:
                    self.log_artifacts(run_id, [path])
                    logged.add(Path(path).name)
            missing = sorted({"model.onnx", "model.pt"} - logged)
        self.log(run_id, params=params, metrics=metrics, tags={STATE: "complete"})
        if FAIL_REASON in data.tags:
            _call(self.client.delete_tag, run_id, FAIL_REASON)
        if run.info.status != "FINISHED":
            self.end(run_id, "FINISHED", record.end_ms)
        if conflicts:
            return f"params logged with other values than Optuna's: {', '.join(conflicts)}"
        if missing:
            return f"artifacts missing: {', '.join(missing)}"
        if LOGGING_ERROR in data.tags:
            _call(self.client.delete_tag, run_id, LOGGING_ERROR)  # repaired: nothing is missing any more
        return "created" if created else "repaired"

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}"

    def log_models(self, run_id: str, onnx_file: Path, model=None, example=None) -> dict[str, str]:
        """Log a trial's model as MLflow models (ONNX, and PyTorch when `model` is given, with signature and
        input example); their model ids are tagged on the run. `model` is the nn.Module in memory (rebuilt
        from the baseline, the plan and weights-only loading); without it only the ONNX model is logged,
        its signature taken from ONNX Runtime. `example`: a few real inputs (numpy, batch first); without
        it a seeded random one of the ONNX input's shape. Returns the tags."""
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

        proto = onnx.load(str(onnx_file))
        tensor = proto.graph.input[0].type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if example is not None:
            example = np.asarray(example, dtype=dtype)
        elif np.issubdtype(dtype, np.floating):
            example = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        else:
            example = np.zeros(shape, dtype=dtype)  # token ids and other integer inputs: valid zeros
        if model is not None:
            with torch.no_grad():
                signature = infer_signature(example, model.eval()(torch.from_numpy(example)).numpy())
        else:
            session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            signature = infer_signature(example, session.run(None, {session.get_inputs()[0].name: example})[0])
        for noisy in ("mlflow", "torch._export", "torch.export"):
            _logging.getLogger(noisy).setLevel(_logging.ERROR)
        with warnings.catch_warnings(), self._into_run(run_id):
            warnings.simplefilter("ignore")
            onnx_info = mlflow.onnx.log_model(proto, name="onnx_model", signature=signature, input_example=example,
                                              onnx_execution_providers=["CPUExecutionProvider"],
                                              pip_requirements=[f"onnxruntime=={onnxruntime.__version__}"])
            tags = {ONNX_MODEL_ID: onnx_info.model_id}
            if model is not None:
                torch_info = mlflow.pytorch.log_model(model, name="pytorch_model", signature=signature,
                                                      input_example=example,
                                                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
                tags[TORCH_MODEL_ID] = torch_info.model_id
        self.log(run_id, tags=tags)
        return tags

    def log_deploy_model(self, run_id: str, onnx_file: Path, example, metadata: dict) -> str:
        """Log the ONNX model `pick` registers: real input example, signature from ONNX Runtime's outputs on
        it, `metadata` (the model card) in its MLmodel file; its id is tagged on the run. Returns the id."""
        import logging as _logging
        import warnings

        import mlflow
        import mlflow.onnx
        import numpy as np
        import onnx
        import onnxruntime
        from mlflow.models import infer_signature

        proto = onnx.load(str(onnx_file))
        session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        example = np.asarray(example, dtype=onnx.helper.tensor_dtype_to_np_dtype(
            proto.graph.input[0].type.tensor_type.elem_type))
        signature = infer_signature(example, session.run(None, {session.get_inputs()[0].name: example})[0])
        _logging.getLogger("mlflow").setLevel(_logging.ERROR)
        with warnings.catch_warnings(), self._into_run(run_id):
            warnings.simplefilter("ignore")
            info = mlflow.onnx.log_model(proto, name="deploy_model", signature=signature, input_example=example,
                                         onnx_execution_providers=["CPUExecutionProvider"], metadata=metadata,
                                         pip_requirements=[f"onnxruntime=={onnxruntime.__version__}"])
        self.log(run_id, tags={DEPLOY_MODEL_ID: info.model_id})
        return info.model_id
