"""Predictor screening (autoprune.search.screen): a candidate is measured only if its predicted latency could
put it on the measured front; the prediction's correction is refitted to every measurement. On a real small
ResNet with real ONNX Runtime, Optuna and MLflow (screening forced on a CPU profile)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from setups import prunable_resnet

from autoprune.calibrate import layer_specs
from autoprune.config import AppConfig, ScreenConfig
from autoprune.errors import ConfigError
from autoprune.hw.predictor import MacsModel
from autoprune.hw.profile import HardwareProfile
from autoprune.search.objectives import Objectives
from autoprune.search.runner import Search
from autoprune.search.screen import PREDICTED, SOURCE_ATTR, SOURCE_TAG, LatencyScreen, Screened
from autoprune.track import Tracker

State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def resnet():
    r = prunable_resnet()
    return r.model, r.pruner, r.space, r.widths, r.layers


def test_screen_mode_auto_is_on_where_measuring_is_expensive():
    cpu, trt = HardwareProfile("cpu"), HardwareProfile("trt", runtime="tensorrt", device="cuda")
    remote = HardwareProfile("far", agent_url="http://127.0.0.1:9")
    assert not cpu.expensive_to_measure and trt.expensive_to_measure and remote.expensive_to_measure
    assert [ScreenConfig().active(p) for p in (cpu, trt, remote)] == [False, True, True]
    assert ScreenConfig(mode="always").active(cpu) and not ScreenConfig(mode="never").active(trt)
    with pytest.raises(ConfigError, match="search.screen.mode"):
        ScreenConfig(mode="on")


def test_the_macs_model_fits_milliseconds_to_measurements(resnet):
    _, _, space, groups, layers = resnet
    macs = MacsModel(groups, layers, 8)
    plans = [space.uniform(r) for r in (0.0, 0.25, 0.5, 0.75)]
    widths = [macs.group_widths(p) for p in plans]
    raw = [macs.raw_macs(w) for w in widths]
    slope, offset = 1.0 / (4 * max(raw)), 0.01 * min(raw) / max(raw)   # overhead and per-MAC cost, any units
    macs.fit(widths, [slope * r + offset for r in raw])
    assert macs.scale == pytest.approx(slope) and macs.offset_ms == pytest.approx(offset)
    assert macs.predict_plan(space.uniform(0.625)) == pytest.approx(slope * macs.raw_macs(
        macs.group_widths(space.uniform(0.625))) + offset)
    one = MacsModel(groups, layers, 8).fit([{}], [2.0])   # the baseline alone: proportional
    assert one.offset_ms == 0 and one.predict_widths({}) == pytest.approx(2.0)


def _study_with(objectives, points):
    """A real study holding measured trials at these (val_accuracy, latency_ms) points."""
    study = optuna.create_study(directions=objectives.directions)
    for acc, ms in points:
        trial = study.ask()
        trial.set_user_attr("val_accuracy", acc)
        trial.set_user_attr("latency_ms", ms)
        study.tell(trial, [acc, ms])
    return study


def test_a_dominated_candidate_is_not_measured_and_a_possible_front_one_is(resnet):
    _, _, space, groups, layers = resnet
    objectives = Objectives()
    study = _study_with(objectives, [(0.95, 1.0), (0.90, 0.5)])
    screen = LatencyScreen(MacsModel(groups, layers, 8), objectives, {"latency_ms": 2.0}, margin=0.1)
    screen.on_search_start(study)
    measured = []

    def measure():
        measured.append(True)
        return None

    trial = study.ask()
    screen.on_trial_start(study, trial)
    with pytest.raises(Screened, match="measured trial #0 dominates it"):   # slower and less accurate than #0
        screen.measure_or_skip(space.uniform(0.25), {"val_accuracy": 0.93}, 1.2, measure)
    assert not measured and trial.user_attrs[SOURCE_ATTR] == PREDICTED
    assert trial.user_attrs["latency_predicted_ms"] == 1.2 and trial.user_attrs["val_accuracy"] == 0.93
    # within the margin of the front: 1.05 ms * 0.9 is faster than #0, so it might beat it
    screen.measure_or_skip(space.uniform(0.25), {"val_accuracy": 0.93}, 1.05, measure)
    assert measured == [True]
    # more accurate than every measured trial: measured whatever its predicted latency
    screen.measure_or_skip(space.uniform(0.0), {"val_accuracy": 0.99}, 5.0, measure)
    assert measured == [True, True]


def test_the_correction_is_refitted_to_every_measurement(resnet):
    _, _, space, groups, layers = resnet
    objectives = Objectives()
    macs = MacsModel(groups, layers, 8)
    baseline_ms = 2.0
    screen = LatencyScreen(macs, objectives, {"latency_ms": baseline_ms}, margin=0.1)
    study = optuna.create_study(directions=objectives.directions)
    screen.on_search_start(study)
    plan = space.uniform(0.5)
    first = screen.predict(plan)   # the baseline alone: latency proportional to MACs
    assert screen.fits == 1 and first == pytest.approx(baseline_ms * macs.raw_macs(screen.widths(plan))
                                                        / macs.raw_macs({}))
    trial = study.ask()   # a measured trial: latency barely falls with MACs (overhead), as on small models
    trial.set_user_attr("plan", space.uniform(0.75).to_dict())
    trial.set_user_attr("latency_ms", 1.8)
    trial.set_user_attr("val_accuracy", 0.9)
    study.tell(trial, [0.9, 1.8])
    second = screen.predict(plan)
    assert screen.fits == 2 and first < second < baseline_ms   # between the two measurements now


class SizeTimedMeasurer:
    """The search's real measurer (ONNX Runtime still times every model it is given), recording which models it
    was asked to time and reporting 1 ms per MB of ONNX file instead of the timing. On this tiny model the
    timings (~0.04 ms, overhead-bound) are within noise of each other, so which candidates a measured trial
    dominates would hang on the machine's load; with latencies fixed by the models, the decisions are too."""

    def __init__(self, inner):
        self.inner, self.paths = inner, []

    def measure(self, model, profile, **kwargs):
        self.paths.append(model.onnx_path)
        timed = self.inner.measure(model, profile, **kwargs)
        ms = model.onnx_path.stat().st_size / 1e6
        return dataclasses.replace(timed, median_ms=ms, mean_ms=ms, p90_ms=ms, p99_ms=ms, std_ms=0.0, cv=0.0)


@pytest.mark.slow   # an 8-trial search with screening forced on the CPU profile
def test_a_screened_search_measures_only_candidates_that_could_reach_the_front(make_cfg, tmp_path):
    space = tmp_path / "space.yaml"   # unstructured masks keep a model's size: slower than a channel prune
    space.write_text("groups: all\nratio: {low: 0.0, high: 0.85, step: 0.05}\npatterns: [channel, unstructured]\n")
    cfg = make_cfg("search.screen.mode=always", "search.screen.margin=0", "search.n_trials=8",
                   "search.sampler=random", "search.warm_start=[0.75,0.5,0.25]", "search.study_name=screened",
                   "search.heartbeat_s=0", f"search_space={space}")
    search = Search(cfg, tmp_path / "out")
    search.ctx.backend = SizeTimedMeasurer(search.ctx.backend)   # the baseline's
    counting = SizeTimedMeasurer(search.ctx.evaluator.backend)   # the candidates'
    search.ctx.evaluator.backend = counting
    outcome = search.run()
    trials = search.study.trials
    measured = [t for t in trials if t.state == State.COMPLETE]
    screened = [t for t in trials if t.user_attrs.get(SOURCE_ATTR) == PREDICTED]
    assert measured and screened and len(measured) + len(screened) == 8
    # each measured trial timed once, its own model; screened ones never
    assert sorted(p.parent.name for p in counting.paths) == sorted(f"{t.number:04d}" for t in measured)
    for t in screened:
        a = t.user_attrs
        assert t.state == State.PRUNED and "latency_ms" not in a and "screened:" in a["stop_reason"]
        by = trials[a["screen_dominated_by"]]
        assert by.state == State.COMPLETE and by.number < t.number
        assert by.user_attrs["val_accuracy"] >= a["val_accuracy"] and by.user_attrs["latency_ms"] <= a[
            "latency_predicted_ms"]
    for t in measured:
        a = t.user_attrs
        assert a[SOURCE_ATTR] == "measured" and a["latency_prediction_error"] == pytest.approx(
            (a["latency_predicted_ms"] - a["latency_ms"]) / a["latency_ms"])
    # the front, the report and its test accuracies: measured trials only
    assert {t.number for t in search.study.best_trials} <= {t.number for t in measured}
    assert {c.trial for c in outcome.report.front} <= {t.number for t in measured}
    assert search.study.user_attrs["predictor_error"]["n"] == len(measured)
    assert outcome.report.predictor["n"] == len(measured) and outcome.report.predictor["screened"] == len(screened)
    html = (tmp_path / "out" / "report" / "report.html").read_text()
    assert f"{len(screened)} candidate(s) left unmeasured; predicted vs measured on {len(measured)}" in html
    # MLflow: predicted vs measured on every measured run; screened runs tagged predicted
    runs = {int(r.data.tags["autoprune.trial_number"]): r
            for r in Tracker(cfg.tracking.uri, cfg.tracking.experiment).trial_runs("screened")}
    for t in measured:
        assert runs[t.number].data.tags[SOURCE_TAG] == "measured"
        assert runs[t.number].data.metrics["latency_predicted_ms"] == pytest.approx(t.user_attrs["latency_predicted_ms"])
    for t in screened:
        assert runs[t.number].data.tags[SOURCE_TAG] == PREDICTED and "val_accuracy" in runs[t.number].data.metrics
    # each prediction used the correction refitted to the baseline and every trial measured before it
    ctx = search.ctx

    def macs_model(fitted_to):
        model = MacsModel(dict(ctx.evaluator.widths()), layer_specs(ctx.evaluator.start_model(), ctx.evaluator.pruner),
                          ctx.evaluator.pruner.round_to)
        widths = [{}, *(model.group_widths(_plan(t)) for t in fitted_to)]
        return model.fit(widths, [outcome.report.baseline.latency_ms, *(t.user_attrs["latency_ms"] for t in fitted_to)])

    for t in measured:
        before = macs_model([m for m in measured if m.number < t.number])
        assert t.user_attrs["latency_predicted_ms"] == pytest.approx(before.predict_plan(_plan(t)))
    # and the refitted correction explains the measurements better than the baseline's alone
    def squared_error(model):
        return sum((model.predict_plan(_plan(t)) - t.user_attrs["latency_ms"]) ** 2 for t in measured) + (
            model.predict_widths({}) - outcome.report.baseline.latency_ms) ** 2

    assert squared_error(macs_model(measured)) < squared_error(macs_model([]))


def _plan(trial):
    from autoprune.plan import PrunePlan
    return PrunePlan.from_dict(trial.user_attrs["plan"])


def test_screening_is_configured_and_checked(make_cfg, tmp_path):
    cfg = AppConfig.of(make_cfg())
    assert cfg.search.screen == ScreenConfig() and cfg.search.screen.mode == "auto"
    with pytest.raises(ConfigError, match="search.screen.margin"):
        AppConfig.of(make_cfg("search.screen.margin=1.5"))
    from autoprune.search.checks import check_search
    with pytest.raises(ConfigError, match="run calibrate again"):
        check_search(AppConfig.of(make_cfg("search.screen.mode=always", f"search.screen.table={tmp_path / 'no.json'}")))
