"""The one duration parser behind every policy setting that takes a length of time.

``parse_duration("30s", "window")`` -> ``30000``. Used by the policy loader
(``source.watermark_delay``) and by the shuffle, k-anonymity and differential
privacy blocks, so that ``1.5m`` or ``1d`` means the same thing everywhere.

Accepted forms:

* a number with a unit: ``500ms``, ``30s``, ``1.5m``, ``2h``, ``1d`` (spaces
  around the number and the unit are allowed: ``" 30 s "``);
* unless ``numbers=False``, a plain int or float, read as seconds (``3`` -> 3000).

Fractions of a millisecond are dropped. A bool is never a duration.

This module imports nothing from ``operators`` or ``flink_jobs`` (they import it),
and nothing heavier than :mod:`udfs.registry`, so an operator worker can use it
without pulling in the DP stack.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from udfs.errors import ParamError

__all__ = ["ALLOWED", "UNIT_MS", "parse_duration"]

UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
#: what a duration may look like, for error messages
ALLOWED = "a number with a unit: ms, s, m, h or d (500ms, 30s, 1.5m, 1h)"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: Any, param: str, *, minimum_ms: int = 0, numbers: bool = True) -> int:
    """Milliseconds from a duration such as ``"30s"``; raise :class:`ParamError` naming ``param``.

    Parameters
    ----------
    value : Any
        The policy value: a string with a unit, or (with ``numbers``) a plain number of seconds.
    param : str
        Name of the setting, used in the error.
    minimum_ms : int, default 0
        Shortest accepted duration. 0 refuses negative durations only; 1 also refuses zero.
    numbers : bool, default True
        Whether a plain number (seconds) is accepted. Settings that always had to
        carry a unit pass False.

    Returns
    -------
    int
        The duration in milliseconds.
    """
    if value is None:
        raise ParamError(param, "is missing: it needs a duration", ALLOWED)
    if isinstance(value, bool):
        raise ParamError(param, "must be a duration", ALLOWED)
    if isinstance(value, int | float):
        if not numbers:
            raise ParamError(param, "a bare number has no unit", ALLOWED)
        if not math.isfinite(value):
            raise ParamError(param, "is not a duration", ALLOWED)
        ms = int(Decimal(str(value)) * 1000)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        ms = int(Decimal(match[1]) * UNIT_MS[match[2]])  # Decimal: "0.57s" is 570 ms, not 569
    else:
        raise ParamError(param, "is not a duration", ALLOWED)
    if ms < minimum_ms:
        if minimum_ms <= 0:
            raise ParamError(param, "must not be negative", ALLOWED)
        if minimum_ms == 1:
            raise ParamError(param, "must be longer than 0", "a positive duration such as 500ms, 30s or 1m")
        raise ParamError(param, f"must be at least {minimum_ms}ms", f"a duration of at least {minimum_ms}ms")
    return ms
