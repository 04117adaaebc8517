"""Event time on a quiet input: the fallback of the event-time operators when the watermark stands still.

Flink's watermark moves only with records. When a live input goes quiet, the last windows (DP)
and the last deadlines (k-anonymity with ``timing: event``) would wait for the next record,
however long that is. Each such operator keeps a :class:`QuietClock` and, once the input has
been quiet for ``idle_timeout``, lets event time follow the wall clock from the last event it saw.
"""

from __future__ import annotations

from typing import Any

from udfs.durations import parse_duration

#: how long an input may be quiet before event time follows the wall clock (``idle_timeout``)
DEFAULT_IDLE_TIMEOUT_MS = 10_000


def parse_idle_timeout(raw: Any) -> int | None:
    """A policy's ``idle_timeout``: a duration, or ``none`` (None) to wait for the watermark alone."""
    if raw is None or (isinstance(raw, str) and raw.strip().lower() == "none"):
        return None
    return parse_duration(raw, "idle_timeout", minimum_ms=1)


class QuietClock:
    """Event time on a quiet input, for an event-time operator's fallback when the watermark stands still.

    Once no record has arrived for ``idle_timeout_ms``, event time is the last event time seen,
    minus the watermark delay, plus the wall-clock time since the last record. Flink's watermark
    needs records to advance (and ``with_idleness`` did not help: PyFlink workaround [idleness] in
    :mod:`operators.flink_compat`), so the operators keep this clock themselves. It lives per
    subtask, not in state: after a restore an operator seeds it (:meth:`restored`) from the event
    times its state holds, so a job restored on an input that stays quiet still closes what it holds.
    """

    def __init__(self, idle_timeout_ms: int | None, delay_ms: int) -> None:
        self.idle_ms = idle_timeout_ms
        self.delay_ms = delay_ms
        self.last_arrival = 0
        self.max_event = None

    @property
    def tick_ms(self) -> int:
        """How often an operator checks for a quiet input: half the idle timeout, within 1 to 10 s."""
        return max(1000, min(10_000, (self.idle_ms or 0) // 2))

    def saw(self, event_ms: int | None, now_ms: int) -> None:
        self.last_arrival = now_ms
        if event_ms is not None and (self.max_event is None or event_ms > self.max_event):
            self.max_event = event_ms

    def restored(self, event_ms: int, now_ms: int) -> None:
        """A restored operator's latest event time in state: quiet counts from the restore if no record came since."""
        if self.last_arrival == 0:
            self.last_arrival = now_ms
        if self.max_event is None or event_ms > self.max_event:
            self.max_event = event_ms

    def event_time(self, now_ms: int) -> int | None:
        """The quiet-input event time, or None while records still arrive (or nothing was seen)."""
        quiet = now_ms - self.last_arrival
        if self.idle_ms is None or self.max_event is None or quiet < self.idle_ms:
            return None
        return self.max_event - self.delay_ms + quiet
