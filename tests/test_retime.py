"""The end of a search re-times the models near the front side by side (autoprune.search.retime), and the
front follows the re-timed latencies; real Optuna (SQLite), ONNX Runtime and MLflow on small models."""

import optuna
import pytest
import torch

from autoprune.config import RetimeConfig
from autoprune.errors import ConfigError
from autoprune.hw import ExportedModel, export_model, get_backend
from autoprune.hw.profile import HardwareProfile
from autoprune.search.objectives import Objectives
from autoprune.search.retime import (RETIMED_ATTR, RetimeObserver, front_numbers, near_front, retime_record,
                                     retime_summary, retimed_latencies)
from autoprune.tasks.models import resnet_small
from autoprune.track import Tracker
from autoprune.weights import load_into, load_weights

FAST = dict(warmup_runs=3, min_repeats=10, max_repeats=300, target_rel_ci=0.05, max_seconds=0.2)
OBJECTIVES = ["val_accuracy", "latency_ms"]


def _study(tmp_path, trials, name="s"):
    """A real study of complete trials: (val accuracy, latency ms[, constraints])."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name=name,
                                directions=["maximize", "minimize"])
    study.set_metric_names(OBJECTIVES)
    for acc, ms, *constraints in trials:
        study.add_trial(optuna.trial.create_trial(values=[acc, ms], user_attrs={"val_accuracy": acc, "latency_ms": ms},
                                                  constraints=constraints[0] if constraints else None))
    return study


def test_near_front_is_the_front_and_what_a_margin_faster_would_join():
    points = {0: {"val_accuracy": 0.9, "latency_ms": 1.0}, 1: {"val_accuracy": 0.9, "latency_ms": 1.4},
              2: {"val_accuracy": 0.9, "latency_ms": 1.6}, 3: {"val_accuracy": 0.95, "latency_ms": 2.0},
              4: {"val_accuracy": 0.8, "latency_ms": 1.8}}
    assert near_front(points, OBJECTIVES, 0.5) == [0, 1, 3]   # 1.4 / 1.5 < 1.0; 1.6 / 1.5 and 1.8 / 1.5 are not
    assert near_front(points, OBJECTIVES, 0.0) == [0, 3]      # no margin: the front itself


def test_the_front_follows_re_timed_latencies_and_the_latency_bound(tmp_path):
    study = _study(tmp_path, [(0.95, 1.0), (0.95, 1.2), (0.90, 0.8)])
    assert front_numbers(study) == {0, 2} == {t.number for t in study.best_trials}
    study.set_user_attr(RETIMED_ATTR, {"0": 1.5, "1": 1.2, "baseline": 3.0})   # #0 ran slower than the search saw
    assert front_numbers(study) == {1, 2}
    assert retimed_latencies(study) == {"0": 1.5, "1": 1.2, "baseline": 3.0}

    bound = _study(tmp_path, [(0.95, 1.0, {"max_latency_ms": 1.0 - 1.1}), (0.90, 0.8, {"max_latency_ms": 0.8 - 1.1})],
                   name="bound")
    assert front_numbers(bound) == {0, 1}
    bound.set_user_attr(RETIMED_ATTR, {"0": 1.3})   # now over search.constraints.max_latency_ms=1.1: infeasible
    assert front_numbers(bound) == {1}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny and a wide ResNet as a search leaves them: trials/0000, trials/0001 and the baseline."""
    out = tmp_path_factory.mktemp("retime")
    torch.manual_seed(0)
    example = torch.randn(1, 1, 16, 16)
    for folder, widths in (("trials/0000", (4, 4, 4)), ("trials/0001", (32, 64, 64)), ("baseline", (32, 64, 64))):
        export_model(resnet_small(widths=widths).eval(), example, out / folder)
    return out


def test_a_model_mis_timed_slow_in_the_search_joins_the_front(models, tmp_path):
    profile = HardwareProfile("fast", **FAST)
    backend = get_backend(profile)
    wide = backend.measure(models / "trials/0001/model.onnx", profile).median_ms
    # The search timed the tiny model (#0) 5x slower than the wide one (#1) runs, on a busy moment: #1 dominated it.
    study = _study(tmp_path, [(0.95, 5 * wide), (0.95, wide)])
    assert front_numbers(study) == {1}
    observer = RetimeObserver(RetimeConfig(rounds=2, margin=10.0), Objectives(), profile, backend,
                              Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "retime"), models,
                              ExportedModel(models / "baseline/model.onnx"), wide)
    observer.on_search_end(study)
    retimed = retimed_latencies(study)
    assert set(retimed) == {"baseline", "0", "1"}
    assert retimed["0"] < retimed["1"]   # side by side the tiny model is the faster one
    assert front_numbers(study) == {0}
    record = retime_record(study)
    assert record["rounds"] == 2 and record["models"] == 3 and "#0" in record["flagged"]
    assert "3 model(s) near the front re-timed" in retime_summary(record) and "#0" in retime_summary(record)
    lines = (models / "report" / "retime.csv").read_text().splitlines()
    assert lines[0].startswith("model,search_ms,retimed_ms") and len(lines) == 4


def test_runtime_torch_re_times_modules_rebuilt_from_the_weights(models, tmp_path):
    profile = HardwareProfile("t", runtime="torch", **FAST)
    backend = get_backend(profile)
    widths = {0: (4, 4, 4), 1: (32, 64, 64)}

    def rebuild(trial, weights):   # what the search passes: the evaluator's weights-only rebuild of the trial's plan
        return load_into(resnet_small(widths=widths[trial.number]), load_weights(weights), "test").eval()

    baseline = ExportedModel(models / "baseline/model.onnx", module=rebuild(_Trial(1), models / "baseline/model.pt"))
    wide = backend.measure(baseline, profile).median_ms
    study = _study(tmp_path, [(0.95, 5 * wide), (0.95, wide)])
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "retime")
    without = RetimeObserver(RetimeConfig(rounds=2, margin=10.0), Objectives(), profile, backend, tracker, models,
                             baseline, wide)
    without.on_search_end(study)   # no way to rebuild the modules: not re-timed
    assert RETIMED_ATTR not in study.user_attrs
    RetimeObserver(RetimeConfig(rounds=2, margin=10.0), Objectives(), profile, backend, tracker, models, baseline, wide,
                   rebuild=rebuild).on_search_end(study)
    assert set(retimed_latencies(study)) == {"baseline", "0", "1"} and front_numbers(study) == {0}


class _Trial:
    def __init__(self, number):
        self.number = number


def test_nothing_to_re_time(models, tmp_path):
    profile = HardwareProfile("fast", **FAST)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "retime")
    study = _study(tmp_path, [(0.95, 1.0)])
    baseline = ExportedModel(models / "baseline/model.onnx")
    off = RetimeObserver(RetimeConfig(rounds=0), Objectives(), profile, get_backend(profile), tracker, models,
                         baseline, 1.0)
    off.on_search_end(study)   # search.retime.rounds=0
    params = RetimeObserver(RetimeConfig(), Objectives(("val_accuracy", "params")), profile, get_backend(profile),
                            tracker, models, baseline, 1.0)
    params.on_search_end(study)   # latency is not an objective: re-timing cannot move the front
    assert RETIMED_ATTR not in study.user_attrs and retime_record(study) == {} and retime_summary({}) == ""


def _outdir(models, tmp_path, *trials):
    """An output dir as a search leaves it, trials/000N holding the given models of the fixture ('tiny' or
    'wide', or 'broken': a file ONNX Runtime cannot load)."""
    import shutil
    out = tmp_path / "out"
    for n, kind in enumerate(trials):
        folder = out / "trials" / f"{n:04d}"
        folder.mkdir(parents=True)
        if kind == "broken":
            (folder / "model.onnx").write_bytes(b"not an onnx file")
        else:
            shutil.copy(models / ("trials/0000" if kind == "tiny" else "trials/0001") / "model.onnx", folder)
    return out


def _observer(out, models, tmp_path, wide, rounds=2, margin=0.5):
    profile = HardwareProfile("fast", **FAST)
    return RetimeObserver(RetimeConfig(rounds=rounds, margin=margin), Objectives(), profile, get_backend(profile),
                          Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "retime"), out,
                          ExportedModel(models / "baseline/model.onnx"), wide)


def _wide_ms(models):
    profile = HardwareProfile("fast", **FAST)
    return get_backend(profile).measure(models / "trials/0001/model.onnx", profile).median_ms


def test_a_model_that_joins_the_corrected_front_is_re_timed_too(models, tmp_path):
    """#0 (wide) was timed 10x too fast and dominated #1 (tiny) so clearly that #1 was not near the front; once
    #0 is corrected, #1 is on the front with a search-time latency: a second pass re-times it."""
    wide = _wide_ms(models)
    out = _outdir(models, tmp_path, "wide", "tiny", "wide")
    study = _study(tmp_path, [(0.95, 0.1 * wide), (0.95, 0.5 * wide), (0.99, wide)])
    assert near_front({t.number: t.user_attrs for t in study.trials}, OBJECTIVES, 0.5) == [0, 2]
    _observer(out, models, tmp_path, wide).on_search_end(study)
    retimed = retimed_latencies(study)
    assert set(retimed) == {"baseline", "0", "1", "2"}
    assert retimed["1"] < retimed["0"] and front_numbers(study) == {1, 2}
    assert retime_record(study)["models"] == 4


def test_an_earlier_correction_is_kept_by_re_timing_it_again(models, tmp_path):
    """An earlier invocation found #0 (wide, timed 100x too fast in the search) slow. Were its correction
    dropped, its search-time latency would put it back on the front; it is re-timed again instead."""
    wide = _wide_ms(models)
    out = _outdir(models, tmp_path, "wide", "tiny")
    study = _study(tmp_path, [(0.95, 0.01 * wide), (0.95, 0.5 * wide)])
    study.set_user_attr(RETIMED_ATTR, {"0": wide, "baseline": wide})
    assert front_numbers(study) == {1}
    _observer(out, models, tmp_path, wide).on_search_end(study)
    assert set(retimed_latencies(study)) == {"baseline", "0", "1"} and front_numbers(study) == {1}


def test_a_model_timed_over_the_latency_bound_in_a_busy_moment_is_re_timed(models, tmp_path):
    """Timed at 1.3x the bound, #0 (tiny) was infeasible; 1.5x faster it would meet the bound, so it is
    re-timed, and side by side it does."""
    wide = _wide_ms(models)
    out = _outdir(models, tmp_path, "tiny", "wide")
    study = _study(tmp_path, [(0.95, 1.3 * wide, {"max_latency_ms": 0.3 * wide}),
                              (0.95, wide, {"max_latency_ms": 0.0})])
    assert front_numbers(study) == {1}
    _observer(out, models, tmp_path, wide).on_search_end(study)
    assert "0" in retimed_latencies(study) and front_numbers(study) == {0}


def test_a_failed_re_timing_warns_and_leaves_the_search_time_front(models, tmp_path, caplog):
    wide = _wide_ms(models)
    out = _outdir(models, tmp_path, "broken", "wide")
    study = _study(tmp_path, [(0.95, 0.5 * wide), (0.99, wide)])
    study.set_user_attr(RETIMED_ATTR, {"0": 9 * wide, "1": wide, "baseline": wide})   # an earlier invocation's
    with caplog.at_level("WARNING", logger="autoprune"):
        _observer(out, models, tmp_path, wide).on_search_end(study)
    assert "search.retime failed" in caplog.text and "keeps the latencies measured during the search" in caplog.text
    assert retimed_latencies(study) == {} and retime_record(study) == {}
    assert front_numbers(study) == {0, 1} == {t.number for t in study.best_trials}


def test_turning_re_timing_off_on_a_resumed_study_clears_the_earlier_one(models, tmp_path):
    wide = _wide_ms(models)
    study = _study(tmp_path, [(0.95, 0.5 * wide), (0.99, wide)])
    study.set_user_attr(RETIMED_ATTR, {"0": 9 * wide, "baseline": wide})
    assert front_numbers(study) == {1}
    _observer(_outdir(models, tmp_path, "tiny", "wide"), models, tmp_path, wide, rounds=0).on_search_end(study)
    assert retimed_latencies(study) == {} and front_numbers(study) == {0, 1}


def test_bad_settings_name_the_fix():
    with pytest.raises(ConfigError, match="search.retime.rounds"):
        RetimeConfig(rounds=-1)
    with pytest.raises(ConfigError, match="search.retime.margin"):
        RetimeConfig(margin=-0.5)


def test_a_search_on_runtime_torch_re_times_its_front(make_cfg, tmp_path):
    """A whole search timing PyTorch modules (runtime torch, on this CPU, fp16 as cuda-torch deploys): the end
    of the search rebuilds the models near the front from their weights and re-times them."""
    from autoprune.cli import run

    hw = tmp_path / "cpu-torch-fp16.yaml"
    hw.write_text("runtime: torch\ndevice: cpu\nprecision: fp16\nthreads: 1\nwarmup_runs: 3\nmin_repeats: 10\n"
                  "max_repeats: 200\ntarget_rel_ci: 0.05\nmax_seconds: 0.2\nround_to: 4\n")
    outcome = run(make_cfg(f"hw={hw}", "search.n_trials=3", "search.retime.rounds=2"), tmp_path / "out")
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    retimed = retimed_latencies(study)
    assert "baseline" in retimed and {str(c.trial) for c in outcome.report.front} <= set(retimed)
    assert outcome.report.retime["rounds"] == 2 and {c.trial for c in outcome.report.front} == front_numbers(study)
