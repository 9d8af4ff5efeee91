"""search.trial_timeout_s: the SIGALRM deadline interrupts a hung trial, and leaves no alarm behind."""

from __future__ import annotations

import signal
import time

import pytest

from autoprune.search.deadline import TrialTimeout, deadline


def test_a_hung_call_is_interrupted_with_the_setting_named():
    with pytest.raises(TrialTimeout, match="search.trial_timeout_s=0.05"):
        with deadline(0.05):
            time.sleep(3600)   # never returns by itself: only the deadline ends it
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_no_limit_and_a_call_that_ends_leave_the_alarm_handler_as_it_was():
    before = signal.getsignal(signal.SIGALRM)
    with deadline(None):
        pass
    with deadline(3600):
        pass
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
