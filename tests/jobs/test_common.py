from __future__ import annotations

import pytest

from saesteer.jobs import common
from saesteer.jobs.common import PhaseTimes


def test_phase_times_add_up_each_phase_entered_twice_and_count_a_phase_that_raised(monkeypatch):
    ticks = iter([0.0, 1.5, 10.0, 10.25, 20.0, 23.0, 30.0, 30.5])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(ticks))
    times = PhaseTimes()
    with times("calibration"):
        pass
    with times("table"):
        pass
    with times("calibration"):
        pass
    with pytest.raises(RuntimeError), times("adaptive"):
        raise RuntimeError("a search that failed still took its time")
    assert times.metrics() == {"seconds_calibration": 4.5, "seconds_table": 0.25, "seconds_adaptive": 0.5}
