"""The one reader of ISO-8601 dates and timestamps.

:func:`parse_timestamp` keeps a timestamp as written (``generalize.date`` cuts a naive one and
it stays naive); where an instant is needed (event time, k-anonymity's date spans) a naive
timestamp is read as UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any


def parse_timestamp(value: Any) -> dt.datetime:
    """An ISO-8601 date or timestamp as written: a naive one stays naive.

    Raises :class:`TypeError` for a value that is not a string and :class:`ValueError`
    for a string that is not ISO-8601.
    """
    if not isinstance(value, str):
        raise TypeError("not a string")
    return dt.datetime.fromisoformat(value)


def epoch_seconds(value: Any) -> float:
    """Seconds since the epoch of an ISO-8601 timestamp, naive ones as UTC; errors as :func:`parse_timestamp`."""
    moment = parse_timestamp(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def epoch_ms(value: Any) -> int | None:
    """Milliseconds since the epoch, naive timestamps as UTC; None for anything but an ISO-8601 string."""
    try:
        return int(epoch_seconds(value) * 1000)
    except (TypeError, ValueError):
        return None
