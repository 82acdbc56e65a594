"""A virtual clock: events ordered in simulated time, so asynchronous training runs in one process.

Nothing sleeps. An event (a client's update arriving, say) is scheduled at a simulated time; the
simulation pops events in time order and the clock jumps to each. Ties are broken by the order in
which events were scheduled (in `pop_until`, times equal within TOLERANCE count as ties), so a run is
deterministic given its seed.
"""
from __future__ import annotations

import heapq
import itertools
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from . import validation as V

TOLERANCE = 1e-9  # times closer than this (relative to their size) count as equal: 0.1 * 3 is due at 0.3


@dataclass(frozen=True, order=True)
class Event:
    """Something that happens at simulated time `time`; `payload` says what (ignored when ordering)."""

    time: float
    seq: int
    payload: Any = field(default=None, compare=False)


def _tie_break(events: list[Event]) -> list[Event]:
    """Time-ordered events, with each run of times equal within TOLERANCE put back in schedule order."""
    out: list[Event] = []
    start = 0
    for i in range(1, len(events) + 1):
        t0 = events[start].time if events else 0.0
        if i == len(events) or events[i].time > t0 + TOLERANCE * max(1.0, abs(t0)):
            out += sorted(events[start:i], key=lambda e: e.seq)
            start = i
    return out


class VirtualClock:
    """An event queue in simulated time: `schedule` events, `pop` them in order; `now` is the current time."""

    def __init__(self, start: float = 0.0):
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start):
            raise ValueError(f"start must be a finite time, got {start!r}")
        self.now = float(start)
        self._queue: list[Event] = []
        self._counter = itertools.count()

    def schedule(self, delay: float, payload: Any = None) -> Event:
        """Add an event `delay` time units from now (delay >= 0) and return it."""
        delay = V.non_negative("delay", delay)
        if not math.isfinite(self.now + delay):
            raise ValueError(f"delay must keep the event time finite: now={self.now:g} + delay={delay:g} overflows")
        event = Event(self.now + delay, next(self._counter), payload)
        heapq.heappush(self._queue, event)
        return event

    def peek(self) -> Event | None:
        """The next event without removing it, or None when nothing is scheduled."""
        return self._queue[0] if self._queue else None

    def due(self, time: float) -> bool:
        """Whether the next event happens no later than `time` (within float tolerance)."""
        return bool(self._queue) and self._queue[0].time <= time + TOLERANCE * max(1.0, abs(time))

    def pop(self) -> Event:
        """Remove the next event and move the clock to its time."""
        if not self._queue:
            raise IndexError("pop from an empty clock: no event is scheduled")
        event = heapq.heappop(self._queue)
        self.now = max(self.now, event.time)
        return event

    def pop_until(self, time: float) -> list[Event]:
        """Remove every event due by `time`, in order, and move the clock to `time`.

        Events whose times agree within TOLERANCE count as simultaneous and come in schedule order."""
        if isinstance(time, bool) or not isinstance(time, numbers.Real):
            raise TypeError(f"time must be a real number, got {time!r} ({type(time).__name__})")
        if not (math.isfinite(time) and time >= self.now):
            raise ValueError(f"time must be >= now={self.now} and finite, got {time}")
        events = []
        while self.due(time):
            events.append(heapq.heappop(self._queue))
        self.now = float(time)
        return _tie_break(events)

    def __len__(self) -> int:
        return len(self._queue)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self.now:g}, {len(self)} events pending)"
