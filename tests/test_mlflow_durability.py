"""MLflow records as durable as Optuna's (issue 19 items 4, 5, 9, 10; issue 15 items 2/3), each against
the real failure: workers starting together on a fresh sqlite store, a store locked by another
connection holding a write transaction, a full disk (a small tmpfs), a quote in a study name, a real
kill of `python -m autoprune pick`."""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from autoprune.cli import run
from autoprune.errors import AutopruneError
from autoprune.track import Tracker
from autoprune.track import mlflow_tracker
from autoprune.track.mlflow_tracker import (FAIL_REASON, LOGGING_ERROR, STATE, STUDY, TRIAL_NUMBER, TrackingError,
                                            TrialRecord)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _cfg(tmp, *overrides):
    from conftest import compose_config

    return compose_config(tmp, *overrides)


class HeldLock:
    """Another connection to a sqlite file holding a write transaction (BEGIN EXCLUSIVE: no other
    connection reads or writes until it ends)."""

    def __init__(self, db: Path, mode: str = "EXCLUSIVE"):
        self.db, self.mode, self.con = db, mode, None

    def hold(self) -> None:
        self.con = sqlite3.connect(self.db, isolation_level=None, timeout=60)
        self.con.execute(f"BEGIN {self.mode}")

    def release(self) -> None:
        if self.con is not None:
            self.con.rollback()
            self.con.close()
            self.con = None


class ReleaseOn(logging.Handler):
    """Calls `action` at each warning whose message contains `text` (an event, no clock)."""

    def __init__(self, text: str, action):
        super().__init__(logging.WARNING)
        self.text, self.action, self.seen = text, action, []

    def emit(self, record):
        message = record.getMessage()
        if self.text in message:
            self.seen.append(message)
            self.action()


@contextlib.contextmanager
def handler_on(logger_name: str, handler: logging.Handler):
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# -- item 4: concurrent first start on a fresh sqlite store ------------------------------------------------------
WORKER = """
import sys
import mlflow, sqlalchemy, alembic  # imported before the start signal: the start is what races
from autoprune.track import Tracker
print("ready", flush=True)
sys.stdin.readline()
tracker = Tracker(sys.argv[1], "autoprune")
print("ok", tracker.experiment_id, flush=True)
"""


@pytest.mark.slow  # four processes import MLflow and one migrates a store: about a minute on 2 loaded cores
def test_workers_starting_together_on_a_fresh_sqlite_store_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, uri], cwd=tmp_path, env=ENV, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(4)]
    for w in workers:
        assert w.stdout.readline().strip() == "ready", w.communicate()[1][-2000:]
    for w in workers:  # all released at once
        w.stdin.write("go\n")
        w.stdin.flush()
    results = [w.communicate() for w in workers]
    failures = [err[-1500:] for w, (_, err) in zip(workers, results) if w.returncode != 0]
    assert not failures, failures
    ids = {out.split()[-1] for out, _ in results}
    assert len(ids) == 1  # one experiment, created once
    assert MlflowClient(uri).get_experiment_by_name("autoprune").experiment_id in ids


# -- issue 15: one retry policy, only track/ imports mlflow ------------------------------------------------------
def test_permanent_errors_are_not_retried_and_say_so_in_one_line(tmp_path, caplog):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "autoprune")
    with caplog.at_level(logging.WARNING), pytest.raises(TrackingError) as raised:
        tracker.log("0" * 32, metrics={"val_accuracy": 0.5})  # no such run: no retry can fix that
    assert "retrying" not in caplog.text
    assert "\n" not in str(raised.value) and "0" * 32 in str(raised.value)


@pytest.mark.slow  # sqlite's busy wait under MLflow is 20 s per attempt
def test_a_locked_store_is_retried_until_the_lock_is_gone(tmp_path, caplog):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "autoprune")
    run_id = tracker.start_child("trial-0", "trial")
    lock = HeldLock(tmp_path / "mlflow.db")
    lock.hold()
    try:
        with caplog.at_level(logging.WARNING), handler_on(mlflow_tracker.log.name,
                                                          ReleaseOn("retrying", lock.release)) as seen:
            tracker.log(run_id, metrics={"val_accuracy": 0.5})
    finally:
        lock.release()
    assert len(seen.seen) == 1 and "database is locked" in seen.seen[0]
    assert tracker.run_metrics(run_id) == {"val_accuracy": 0.5}


def test_only_track_imports_mlflow():
    strays = []
    for path in (REPO / "autoprune").rglob("*.py"):
        if path.relative_to(REPO / "autoprune").parts[0] == "track":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            strays += [f"{path.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] == "mlflow"]
    assert not strays


# -- item 10: quotes in study names --------------------------------------------------------------------------
@pytest.mark.parametrize("study", ["it's", 'the "best" one', "both ' and \" quotes", "100%_sure"])
def test_study_names_with_quotes_find_exactly_their_runs(tmp_path, study):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "autoprune")
    parent = tracker.start_search("search", study, {"n_trials": 1}, group="g'1\"")
    assert tracker.start_search("search", study, {"n_trials": 1}, group="g'1\"") == parent  # the group's run
    other = Tracker(tracker.uri, "autoprune")
    other.start_search("search", "it_s", {}, group="g'1\"")
    mine = tracker.start_child("trial-0", "trial", {STUDY: study, TRIAL_NUMBER: 0})
    other.start_child("trial-0", "trial", {STUDY: "it_s", TRIAL_NUMBER: 0})
    base = tracker.start_child("baseline", "baseline", {STUDY: study})
    tracker.log(base, metrics={"val_accuracy": 0.9, "latency_ms": 1.0})
    assert [r.info.run_id for r in tracker.trial_runs(study)] == [mine]
    assert tracker.baseline_run(study).info.run_id == base
    assert tracker.close_orphaned_runs(study) == []  # all owned by this live process


# -- item 5: reconciliation ----------------------------------------------------------------------------------
def _complete_trial(study: optuna.Study, attrs: dict) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [attrs["val_accuracy"], attrs["latency_ms"]])
    return study.trials[trial.number]


def test_reconcile_makes_mlflow_agree_with_optuna(tmp_path):
    """Complete in Optuna, broken in MLflow three ways: closed KILLED/failed with a param and the
    metrics missing; no run at all; a param logged with another value (cannot be repaired: flagged)."""
    study = optuna.create_study(directions=["maximize", "minimize"], storage=f"sqlite:///{tmp_path / 'o.db'}")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "autoprune")
    tracker.start_search("search", study.study_name, {})
    client = MlflowClient(tracker.uri)
    records = []
    for number in range(3):
        metrics = {"val_accuracy": 0.9 - 0.1 * number, "latency_ms": 1.0 + number}
        _complete_trial(study, metrics)
        (tmp_path / f"model{number}").mkdir()
        artifacts = [tmp_path / f"model{number}" / name for name in ("model.onnx", "model.pt")]
        for path in artifacts:
            path.write_bytes(b"weights")
        records.append(TrialRecord(number, None, {"ratio.a": 0.5, "importance": "l1"}, metrics, artifacts))
    killed = tracker.start_child("trial-0", "trial", {STUDY: study.study_name, TRIAL_NUMBER: 0})
    tracker.log(killed, params={"importance": "l1"}, tags={STATE: "failed", FAIL_REASON: "worker gone"})
    tracker.end(killed, "KILLED")
    conflicting = tracker.start_child("trial-2", "trial", {STUDY: study.study_name, TRIAL_NUMBER: 2})
    tracker.log(conflicting, params={"ratio.a": 0.75})
    records[0] = TrialRecord(0, killed, *[getattr(records[0], f) for f in ("params", "metrics", "artifacts")])

    done = tracker.reconcile(study.study_name, records)

    assert (done.repaired, done.created, done.flagged) == ([0], [1], [2])
    runs = {int(r.data.tags[TRIAL_NUMBER]): r for r in tracker.trial_runs(study.study_name)}
    for number in (0, 1):
        run_ = runs[number]
        assert run_.info.status == "FINISHED" and run_.data.tags[STATE] == "complete"
        assert FAIL_REASON not in run_.data.tags and LOGGING_ERROR not in run_.data.tags
        assert run_.data.params == {"ratio.a": "0.5", "importance": "l1"}
        assert run_.data.metrics == records[number].metrics
        assert {a.path for a in client.list_artifacts(run_.info.run_id)} == {"model.onnx", "model.pt"}
    assert "ratio.a" in runs[2].data.tags[LOGGING_ERROR] and runs[2].data.params["ratio.a"] == "0.75"
    again = tracker.reconcile(study.study_name, records[:2])
    assert not again  # in agreement: nothing more to do


# -- item 5: a locked store and a full disk during a real search ----------------------------------------------------
def _hook_trials(monkeypatch, after_first=None, before_second=None):
    """Run `after_first` when trial 0's evaluation returns and `before_second` when trial 1's begins:
    the points where the tests below start and end a real fault."""
    from autoprune.candidate import CandidateEvaluator

    original, calls = CandidateEvaluator.evaluate, []

    def hooked(self, plan, workdir, monitor=None):
        calls.append(workdir)
        if len(calls) == 2 and before_second:
            before_second()
        result = original(self, plan, workdir, monitor)
        if len(calls) == 1 and after_first:
            after_first()
        return result

    monkeypatch.setattr(CandidateEvaluator, "evaluate", hooked)


def _assert_in_agreement(tmp_path, mlflow_uri, outcome):
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    client = MlflowClient(mlflow_uri)
    runs = {int(r.data.tags[TRIAL_NUMBER]): r for r in Tracker(mlflow_uri, "autoprune").trial_runs(outcome.study_name)}
    assert sorted(runs) == [0, 1]
    for trial in study.trials:
        run_ = runs[trial.number]
        assert run_.info.status == "FINISHED" and run_.data.tags[STATE] == "complete", run_.data.tags
        assert LOGGING_ERROR not in run_.data.tags and FAIL_REASON not in run_.data.tags
        assert run_.data.metrics["latency_ms"] == trial.user_attrs["latency_ms"]
        assert run_.data.metrics["val_accuracy"] == trial.user_attrs["val_accuracy"]
        plan = trial.user_attrs["plan"]
        assert run_.data.params["importance"] == str(plan["importance"])
        for group, chosen in plan["groups"].items():
            assert float(run_.data.params[f"ratio.{group}"]) == chosen["ratio"]
        assert {"model.onnx", "model.pt", "plan.json"} <= {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert [c.trial for c in outcome.report.trials] == [0, 1]


@pytest.mark.slow  # two 20-s sqlite busy waits
def test_a_locked_store_loses_nothing_optuna_has(tmp_path, monkeypatch, caplog):
    """mlflow.db locked by another connection while trial 0's results are logged and while trial 1's
    params are: both calls fail after the retry policy, the search goes on, and the end-of-search
    reconciliation gives both runs everything Optuna has."""
    monkeypatch.setattr(mlflow_tracker, "RETRY_DELAYS_S", ())  # one attempt (20 s of sqlite busy wait) per call
    lock = HeldLock(tmp_path / "mlflow.db")
    original_start = Tracker.start_child

    def start_child(self, name, role, *args, **kwargs):
        run_id = original_start(self, name, role, *args, **kwargs)
        if name == "trial-1":
            lock.hold()  # the run exists; its params will not get in
        return run_id

    monkeypatch.setattr(Tracker, "start_child", start_child)
    _hook_trials(monkeypatch, after_first=lock.hold)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        with caplog.at_level(logging.WARNING), handler_on("autoprune", ReleaseOn("database is locked", lock.release)):
            outcome = run(_cfg(tmp_path, "search.n_trials=2", "search.warm_start=[0.25,0.5]"), tmp_path / "out")
    finally:
        lock.release()
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow: ")]
    assert any("trial results failed" in m and "database is locked" in m for m in failed), failed
    assert any("trial params failed" in m and "database is locked" in m for m in failed), failed
    assert any("reconciled with Optuna at the end" in r.getMessage() for r in caplog.records)
    _assert_in_agreement(tmp_path, uri, outcome)


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MB tmpfs (a real file system that fills up); skipped where mounting is not allowed."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Writes a file until the file system has no byte left."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_a_full_disk_is_said_as_such_and_the_search_goes_on(tmp_path, small_disk, monkeypatch, capfd, caplog):
    """mlflow.db and its artifacts on a small tmpfs that fills up after trial 0's evaluation and is
    freed when trial 1's begins: the search finishes, each failure is one 'disk full' line (no
    tracebacks), and the reconciliation repairs trial 0's run and creates trial 1's."""
    monkeypatch.chdir(small_disk)  # MLflow's artifacts (./mlruns) on the small disk too
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    state = {}
    _hook_trials(monkeypatch, after_first=lambda: state.setdefault("filler", _fill(small_disk)),
                 before_second=lambda: state["filler"].unlink())
    with caplog.at_level(logging.WARNING):
        outcome = run(_cfg(tmp_path, f"tracking.uri={uri}", "search.n_trials=2", "search.warm_start=[0.25,0.5]"),
                      tmp_path / "out")
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow: ")]
    assert failed and all("disk full" in m and "\n" not in m for m in failed), failed
    assert any("search progress failed" in m for m in failed)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "autoflush" not in err
    _assert_in_agreement(tmp_path, uri, outcome)


# -- item 9: pick killed mid-way ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quoted_search(tmp_path_factory):
    """A search whose study name has a quote in it (filter strings must cope). Objectives accuracy and
    parameter count: a front of at least two models (10 % and 90 % of the channels pruned)."""
    tmp = tmp_path_factory.mktemp("quoted")
    outcome = run(_cfg(tmp, "search.n_trials=3", "search.warm_start=[0.1,0.5,0.9]", "search.study_name=\"it's\"",
                       "search.objectives=[val_accuracy,params]"), tmp / "search")
    return tmp, outcome


def _deployed_trial(client: MlflowClient, name: str) -> tuple[int, bytes]:
    """(the trial the alias points at, the ONNX bytes of that trial's run)."""
    version = client.get_model_version_by_alias(name, "deploy")
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(client.download_artifacts(version.run_id, "model.onnx", tmp)).read_bytes()
    return int(version.tags["autoprune.trial_number"]), onnx


def _only(model) -> list[str]:
    """Pick constraints that only `model` (on the front in accuracy x params) meets."""
    return [f"pick.min_accuracy={model.val_accuracy}", f"pick.max_params={model.params}"]


@pytest.mark.slow
def test_pick_killed_before_the_alias_moves_leaves_file_and_alias_in_agreement(quoted_search):
    tmp, outcome = quoted_search
    front = outcome.report.front
    old_model, new_model = max(front, key=lambda c: c.val_accuracy), min(front, key=lambda c: c.params)
    assert old_model.trial != new_model.trial and outcome.study_name == "it's"
    client, export = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}"), tmp / "deploy" / "model.onnx"
    study = "search.study_name=\"it's\""
    first = run(_cfg(tmp, "mode=pick", *_only(old_model), f"pick.export={export}", "pick.model_name=quoted", study),
                tmp / "pick1")
    assert first.chosen.trial == old_model.trial
    assert _deployed_trial(client, "quoted") == (old_model.trial, export.read_bytes())

    from conftest import FAST
    lock = HeldLock(tmp / "mlflow.db", "IMMEDIATE")  # a writer's transaction: reads go on, writes wait
    lock.hold()
    try:
        pick = subprocess.Popen(
            [sys.executable, "-m", "autoprune", "pick", *FAST, f"search.storage=sqlite:///{tmp / 'optuna.db'}",
             f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", f"cache_dir={tmp / 'cache'}", study, *_only(new_model),
             f"pick.export={export}", "pick.model_name=quoted", f"hydra.run.dir={tmp / 'pick2'}"],
            cwd=tmp, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        before, old = set(export.parent.iterdir()), export.read_bytes()
        # The new model is written (staged, or in place) just before the registry write the lock holds up.
        while set(export.parent.iterdir()) == before and export.read_bytes() == old:
            assert pick.poll() is None, pick.communicate()[0][-3000:]
            time.sleep(0.05)
        pick.kill()
        pick.wait()
    finally:
        lock.release()
    assert _deployed_trial(client, "quoted") == (old_model.trial, export.read_bytes())

    second = run(_cfg(tmp, "mode=pick", *_only(new_model), f"pick.export={export}", "pick.model_name=quoted", study),
                 tmp / "pick3")
    assert second.chosen.trial == new_model.trial
    assert _deployed_trial(client, "quoted") == (new_model.trial, export.read_bytes())
    assert sorted(p.name for p in export.parent.iterdir()) == ["model.onnx"]  # the killed pick's staging is gone


@pytest.mark.slow
def test_report_of_a_study_with_a_quote_in_its_name(quoted_search):
    tmp, outcome = quoted_search
    data, _ = run(_cfg(tmp, "mode=report", "search.study_name=\"it's\""), tmp / "report-again")
    assert [c.trial for c in data.front] == [c.trial for c in outcome.report.front]
    with pytest.raises(AutopruneError, match="no model meets"):
        run(_cfg(tmp, "mode=pick", "pick.max_latency_ms=0.000001", "search.study_name=\"it's\""), tmp / "pick-none")
