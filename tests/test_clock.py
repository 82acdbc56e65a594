import numpy as np
import pytest

from flbook import devices
from flbook.clock import VirtualClock


def test_events_come_out_in_time_order_and_ties_in_scheduling_order():
    clock = VirtualClock()
    for delay, name in [(2.0, "c"), (0.5, "a"), (2.0, "d"), (1.0, "b")]:
        clock.schedule(delay, name)
    out = [clock.pop() for _ in range(4)]
    assert [e.payload for e in out] == ["a", "b", "c", "d"]
    assert [e.time for e in out] == [0.5, 1.0, 2.0, 2.0]
    assert clock.now == 2.0 and len(clock) == 0
    with pytest.raises(IndexError, match="empty"):
        clock.pop()


def test_schedule_is_relative_to_now():
    clock = VirtualClock()
    clock.schedule(1.0, "first")
    clock.pop()
    assert clock.schedule(0.25, "second").time == 1.25


def test_pop_until_takes_due_events_with_float_tolerance():
    clock = VirtualClock()
    for k in range(1, 6):
        clock.schedule(0.1 * k, k)  # 0.1 * 3 = 0.30000000000000004
    assert [e.payload for e in clock.pop_until(0.3)] == [1, 2, 3]
    assert clock.now == 0.3 and clock.peek().payload == 4
    assert clock.pop_until(0.35) == [] and clock.now == 0.35
    with pytest.raises(ValueError, match="time must be >= now"):
        clock.pop_until(0.1)


@pytest.mark.parametrize("delay", [-1.0, float("inf"), float("nan")])
def test_bad_delays_are_rejected(delay):
    with pytest.raises(ValueError, match="delay must be"):
        VirtualClock().schedule(delay)


def test_events_within_tolerance_pop_in_schedule_order():
    clock = VirtualClock()
    for i in range(3):
        clock.schedule(0.1 * 3, i)  # 0.30000000000000004
    clock.schedule(0.3, "x")
    assert [e.payload for e in clock.pop_until(0.3)] == [0, 1, 2, "x"]


@pytest.mark.parametrize("make, error, message", [
    (lambda: VirtualClock(start=float("nan")), ValueError, "start must be a finite time"),
    (lambda: devices.draw(2.5), ValueError, "n_clients must be an integer, got 2.5"),
    (lambda: devices.draw(5, spread=float("nan")), ValueError, "spread must be a finite number >= 0, got nan"),
    (lambda: devices.draw(5, score=[float("nan")] * 5, correlation=1.0), ValueError, "score must hold only finite"),
    (lambda: devices.draw(5, step_time=float("inf")), ValueError, "step_time must be a finite number > 0"),
    (lambda: devices.linear(5, 0.5).slowed([0], factor=float("nan")), ValueError, "factor must be a finite number"),
    (lambda: devices.linear(5, 0.5).slowed([0], extra_latency=float("inf")), ValueError, "extra_latency .* got inf"),
    (lambda: devices.linear(5, 0.5).slowed([7]), ValueError, r"clients must hold indices in \[0, 5\)"),
    (lambda: devices.Devices(np.array([]), np.array([])), ValueError, "one length >= 1"),
    (lambda: devices.Devices(np.full(3, 1e308), np.zeros(3)).job_time([0], 10), ValueError, "job times overflow"),
])
def test_device_and_clock_arguments_name_the_parameter(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_delay_that_overflows_the_event_time_is_refused():
    clock = VirtualClock(start=1e308)
    with pytest.raises(ValueError, match="delay must keep the event time finite"):
        clock.schedule(1e308)
    assert len(clock) == 0


@pytest.mark.parametrize("time, error", [("3", TypeError), (None, TypeError), (float("inf"), ValueError),
                                         (float("nan"), ValueError)])
def test_pop_until_names_a_bad_time(time, error):
    with pytest.raises(error, match="time must be"):
        VirtualClock().pop_until(time)
