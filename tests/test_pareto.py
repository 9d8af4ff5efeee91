"""Normalised hypervolume: in [0, 1] for any objectives, exact on hand-computable fronts."""

from __future__ import annotations

import pytest

from autoprune.search.pareto import losses, normalized_hypervolume

BASE = {"val_accuracy": 0.9, "latency_ms": 2.0, "macs": 1000.0, "params": 100.0}


def test_two_objectives_is_the_area_of_the_front_in_the_box():
    # (drop 0.02 of 0.1 -> gain 0.8, latency 1.0 of 2.0 -> 0.5) and (gain 0.4, latency 0.25)
    trials = [{"val_accuracy": 0.88, "latency_ms": 1.0}, {"val_accuracy": 0.84, "latency_ms": 0.5}]
    # losses (0.2, 0.5) and (0.6, 0.25): area = 0.8*0.5 + 0.4*0.25 = 0.5
    assert normalized_hypervolume(trials, ["val_accuracy", "latency_ms"], BASE, 0.1) == pytest.approx(0.5)


def test_better_than_the_baseline_is_capped_at_one():
    trials = [{"val_accuracy": 0.99, "latency_ms": 0.0}]
    assert normalized_hypervolume(trials, ["val_accuracy", "latency_ms"], BASE, 0.1) == pytest.approx(1.0)


def test_follows_the_objectives_not_latency():
    trial = {"val_accuracy": 0.9, "latency_ms": 2.0, "macs": 250.0}
    assert normalized_hypervolume([trial], ["val_accuracy", "latency_ms"], BASE, 0.1) == 0.0   # no speed-up
    assert normalized_hypervolume([trial], ["val_accuracy", "macs"], BASE, 0.1) == pytest.approx(0.75)


def test_three_objectives_and_points_outside_the_box():
    trials = [{"val_accuracy": 0.9, "latency_ms": 1.0, "params": 50.0},       # losses (0, .5, .5): volume .25
              {"val_accuracy": 0.7, "latency_ms": 0.1, "params": 1.0},        # accuracy out of the box: none
              {"val_accuracy": 0.9, "latency_ms": 3.0, "params": 1.0}]        # slower than the baseline: none
    hv = normalized_hypervolume(trials, ["val_accuracy", "latency_ms", "params"], BASE, 0.1)
    assert hv == pytest.approx(0.25)
    assert normalized_hypervolume([], ["val_accuracy", "latency_ms"], BASE) == 0.0


def test_losses_are_bounded():
    assert losses({"val_accuracy": 2.0, "latency_ms": -1.0}, ["val_accuracy", "latency_ms"], BASE, 0.1) == [0.0, 0.0]
    assert losses({"val_accuracy": 0.0, "latency_ms": 9.0}, ["val_accuracy", "latency_ms"], BASE, 0.1) == [1.0, 1.0]
