"""Generalization: make a value coarser so that it describes many people, not one.

``age 34`` -> ``30-39``, ``zip 94102`` -> ``941**``, a timestamp to its day, and a
coordinate to a geohash cell. The functions at module level are the plain cores;
the k-anonymity operator uses them for its hierarchies too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from udfs.errors import MISSING, ParamError, TransformError
from udfs.registry import Transform, transform
from udfs.timestamps import parse_timestamp

_GEOHASH_ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"


def numeric_range(value: float, width: int | float, top: float | None = None) -> str:
    """Bucket of ``width`` holding ``value``: ``numeric_range(34, 10) == "30-39"``; ``"90+"`` above ``top``."""
    if top is not None and value >= top:
        return f"{_fmt(top)}+"
    low = math.floor(value / width) * width
    if isinstance(width, int) and float(value).is_integer():
        return f"{int(low)}-{int(low) + width - 1}"
    return f"[{_fmt(low)}, {_fmt(low + width)})"


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def truncate(text: str, keep: int, char: str = "*") -> str:
    """Keep the first ``keep`` characters and mask the rest: ``truncate("94102", 3) == "941**"``."""
    return text[:keep] + char * max(0, len(text) - keep)


def geohash(lat: float, lon: float, precision: int) -> str:
    """Standard geohash of a coordinate, ``precision`` characters (Niemeyer 2008)."""
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    out, bits, char, even = [], 0, 0, True
    while len(out) < precision:
        if even:
            mid = (lon_lo + lon_hi) / 2
            char = (char << 1) | (lon >= mid)
            lon_lo, lon_hi = (mid, lon_hi) if lon >= mid else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            char = (char << 1) | (lat >= mid)
            lat_lo, lat_hi = (mid, lat_hi) if lat >= mid else (lat_lo, mid)
        even = not even
        bits += 1
        if bits == 5:
            out.append(_GEOHASH_ALPHABET[char])
            bits, char = 0, 0
    return "".join(out)


_DATE_UNITS = ("hour", "day", "month", "year")


#: a UTC timestamp to the second, as most producers write it: its minutes and seconds are always valid, so
#: whether it parses and what it cuts to depend only on its first 13 characters (date and hour)
_PLAIN_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:[0-5]\d:[0-5]\dZ")
#: (first 13 characters, unit) -> cut, for such timestamps; a stream's timestamps share a few hours
_CUTS: dict[tuple[str, str], str] = {}


def cut_datetime(value: str, unit: str) -> str:
    """Cut an ISO-8601 timestamp to ``hour``, ``day``, ``month`` or ``year``.

    Raises :class:`ValueError` for a string that is not ISO-8601. A plain UTC timestamp to the
    second is cut once per hour it falls in: parsing each one would cost several times as much.
    """
    if len(value) == 20 and _PLAIN_UTC.fullmatch(value):
        key = (value[:13], unit)
        cut = _CUTS.get(key)
        if cut is None:
            cut = _parse_and_cut(value, unit)  # raises for an impossible date or hour: never remembered
            if len(_CUTS) >= 4096:
                _CUTS.clear()
            _CUTS[key] = cut
        return cut
    return _parse_and_cut(value, unit)


def _parse_and_cut(value: str, unit: str) -> str:
    moment = parse_timestamp(value)
    if unit == "hour":
        text = moment.replace(minute=0, second=0, microsecond=0).isoformat()
        return text.replace("+00:00", "Z")
    if unit == "day":
        return moment.date().isoformat()
    if unit == "month":
        return f"{moment.year:04d}-{moment.month:02d}"
    return f"{moment.year:04d}"


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TransformError(f"{name} expected a finite number, got {type(value).__name__}")
    return value


@transform("generalize.range")
class Range(Transform):
    """Numeric range of a fixed width (``{generalize: range, width: 10, top: 90}``)."""

    params = ("width", "top")

    def validate(self) -> None:
        width = self.option("width")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
            raise ParamError("width", f"must be a positive number, got {width!r}", "a number > 0, such as 10")
        self.width = width
        self.top = self.option("top")
        if self.top is not None and (isinstance(self.top, bool) or not isinstance(self.top, (int, float))):
            raise ParamError("top", "must be a number", "the value from which everything is one bucket, such as 90")

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        return numeric_range(_number(value, self.name), self.width, self.top)


@transform("generalize.truncate")
class Truncate(Transform):
    """Keep a prefix of a string: ``{generalize: truncate, keep: 3}`` gives ``941**``."""

    params = ("keep", "char")

    def validate(self) -> None:
        self.keep = self.int_option("keep", 3, minimum=0)
        self.char = self.option("char", "*")
        if not isinstance(self.char, str) or len(self.char) != 1:
            raise ParamError("char", "must be a single character", 'one character such as "*"')

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            # a zip code as a number has already lost its leading zeros
            raise TransformError(f"{self.name} expected a string, got {type(value).__name__}")
        if len(value) <= self.keep:
            raise TransformError(f"{self.name}: value has {len(value)} characters, needs more than {self.keep}")
        return truncate(value, self.keep, self.char)


@transform("generalize.date")
class Date(Transform):
    """Cut an ISO-8601 date or timestamp to ``hour``, ``day``, ``month`` or ``year``."""

    params = ("to",)

    def validate(self) -> None:
        self.unit = self.choice_option("to", "day", _DATE_UNITS)

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TransformError(f"{self.name} expected an ISO-8601 string, got {type(value).__name__}")
        try:
            return cut_datetime(value, self.unit)
        except ValueError:
            raise TransformError(f"{self.name}: not an ISO-8601 date or timestamp") from None


class CoordinateTransform(Transform):
    """Base of the transforms of a coordinate.

    The value is ``{lat, lon}`` or ``[lat, lon]``; or, with ``lat_field`` and ``lon_field``,
    the view gets a new field computed from two fields of the record. Subclasses call
    :meth:`validate_fields` and implement :meth:`from_point`.
    """

    def validate_fields(self) -> None:
        self.lat_field = self.option("lat_field")
        self.lon_field = self.option("lon_field")
        if (self.lat_field is None) != (self.lon_field is None):
            raise ParamError("lat_field", "lat_field and lon_field go together", "both or neither")
        self.needs_record = self.lat_field is not None

    def apply(self, value: Any) -> Any:
        if value is None or value is MISSING:
            return value
        if isinstance(value, Mapping):
            lat, lon = value.get("lat"), value.get("lon")
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            lat, lon = value
        else:
            raise TransformError(f"{self.name} expected {{lat, lon}} or [lat, lon]")
        return self._point(lat, lon)

    def apply_in_record(self, value: Any, record: Mapping[str, Any]) -> Any:
        lat, lon = record.get(self.lat_field, MISSING), record.get(self.lon_field, MISSING)
        if lat is MISSING or lon is MISSING:
            raise TransformError(f"{self.name}: missing {self.lat_field if lat is MISSING else self.lon_field}")
        if lat is None or lon is None:
            return None
        return self._point(lat, lon)

    def _point(self, lat: Any, lon: Any) -> Any:
        lat, lon = _number(lat, self.name), _number(lon, self.name)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise TransformError(f"{self.name}: coordinate out of range")
        return self.from_point(lat, lon)

    def from_point(self, lat: float, lon: float) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@transform("generalize.geohash")
class Geohash(CoordinateTransform):
    """A coordinate to its geohash cell of ``precision`` characters (4 is about 39 km x 20 km)."""

    params = ("precision", "lat_field", "lon_field")

    def validate(self) -> None:
        self.precision = self.int_option("precision", 5, minimum=1)
        if self.precision > 12:
            raise ParamError("precision", f"at most 12, got {self.precision}", "1 to 12")
        self.validate_fields()

    def from_point(self, lat: float, lon: float) -> str:
        return geohash(lat, lon, self.precision)
