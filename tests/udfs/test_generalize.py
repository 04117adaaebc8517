"""Generalization: numeric ranges, truncation, dates cut to a unit, coordinates to geohash cells."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import registry
from udfs.generalize import _parse_and_cut, cut_datetime, geohash, numeric_range, truncate
from udfs.registry import MISSING, ParamError, Transform, TransformError

GEOHASH_ALPHABET = set("0123456789bcdefghjkmnpqrstuvwxyz")


def make(name: str, **params) -> Transform:
    # the lifecycle every engine follows: build (policy check), then open (per task), then apply
    transform = registry.get(name)(params, domain="field")
    transform.open(None)
    return transform


# -- plain cores: known answers ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "width", "top", "expected"),
    [
        (34, 10, None, "30-39"),  # the design's example
        (30, 10, None, "30-39"),  # lower edge belongs to the bucket
        (39, 10, None, "30-39"),  # upper edge
        (0, 10, None, "0-9"),  # zero
        (-5, 10, None, "-10--1"),  # negative values round down
        (95, 10, 90, "90+"),  # above top: one open bucket
        (90, 10, 90, "90+"),  # top itself is in the open bucket
        (89, 10, 90, "80-89"),  # just under top
        (34.5, 10, None, "[30, 40)"),  # a fraction gets a half-open interval
        (34, 2.5, None, "[32.5, 35)"),  # a fractional width
        (34.0, 10, None, "30-39"),  # a whole float is named like an integer
    ],
)
def test_numeric_range_known_answers(value, width, top, expected):
    assert numeric_range(value, width, top) == expected


@pytest.mark.parametrize(
    ("text", "keep", "char", "expected"),
    [
        ("94102", 3, "*", "941**"),  # the design's example
        ("94102", 0, "*", "*****"),  # keep nothing
        ("94102", 5, "*", "94102"),  # keep everything (the core does not refuse)
        ("94102", 2, "x", "94xxx"),  # another mask character
    ],
)
def test_truncate_known_answers(text, keep, char, expected):
    assert truncate(text, keep, char) == expected


@pytest.mark.parametrize(
    ("lat", "lon", "precision", "expected"),
    [
        (37.7749, -122.4194, 5, "9q8yy"),  # San Francisco
        (57.64911, 10.40744, 11, "u4pruydqqvj"),  # Jutland, the example from Niemeyer's geohash.org
        (42.6, -5.6, 5, "ezs42"),  # León, Spain
        (0.0, 0.0, 4, "s000"),  # the origin is in the north-east quadrant
        (-90.0, -180.0, 3, "000"),  # south-west corner
        (90.0, 180.0, 3, "zzz"),  # north-east corner
        (37.7749, -122.4194, 1, "9"),  # one character
    ],
)
def test_geohash_known_answers(lat, lon, precision, expected):
    assert geohash(lat, lon, precision) == expected


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("2024-03-05T14:23:11Z", "hour", "2024-03-05T14:00:00Z"),  # UTC keeps its Z
        ("2024-03-05T14:23:11+02:00", "hour", "2024-03-05T14:00:00+02:00"),  # an offset is kept
        ("2024-03-05T14:23:11.123456", "hour", "2024-03-05T14:00:00"),  # naive, with microseconds
        ("2024-03-05T14:23:11Z", "day", "2024-03-05"),  # to the day
        ("2024-03-05T14:23:11Z", "month", "2024-03"),  # to the month
        ("2024-03-05T14:23:11Z", "year", "2024"),  # to the year
        ("2024-03-05", "hour", "2024-03-05T00:00:00"),  # a bare date is midnight
        ("0999-01-02", "year", "0999"),  # years are zero-padded
    ],
)
def test_cut_datetime_known_answers(value, unit, expected):
    assert cut_datetime(value, unit) == expected


# -- generalize.range ------------------------------------------------------------------------------
def test_range_transform_applies_width_and_top():
    assert make("generalize.range", width=10).apply(34) == "30-39"
    assert make("generalize.range", width=10, top=90).apply(97) == "90+"
    assert make("generalize.range", width=10).apply(None) is None


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"width": -10}, "width"),  # negative width
        ({"width": 0}, "width"),  # zero width
        ({}, "width"),  # width is required
        ({"width": "10"}, "width"),  # a string
        ({"width": True}, "width"),  # a bool
        pytest.param({"width": math.nan}, "width", id="nan"),  # YAML .nan is not a width
        pytest.param({"width": math.inf}, "width", id="inf"),  # YAML .inf puts everything in one "[nan, nan)" bucket
        ({"width": 10, "top": "90"}, "top"),  # top as a string
        ({"width": 10, "bottom": 0}, "bottom"),  # unknown parameter
    ],
)
def test_when_range_parameter_is_bad_then_refused(params, param):
    with pytest.raises(ParamError) as exc:
        make("generalize.range", **params)
    assert exc.value.param == param


def test_negative_width_error_says_what_is_allowed():
    with pytest.raises(ParamError) as exc:
        make("generalize.range", width=-10)
    assert exc.value.problem == "must be a positive number, got -10"
    assert exc.value.allowed == "a number > 0, such as 10"


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ("34", "str"),  # a number in quotes
        (True, "bool"),  # a bool
        (math.inf, "float"),  # infinity
        (math.nan, "float"),  # not a number
    ],
)
def test_when_range_value_is_not_a_finite_number_then_transform_error(value, type_name):
    with pytest.raises(TransformError) as exc:
        make("generalize.range", width=10).apply(value)
    assert str(exc.value) == f"generalize.range expected a finite number, got {type_name}"


# -- generalize.truncate ---------------------------------------------------------------------------
def test_truncate_transform_keeps_a_prefix():
    assert make("generalize.truncate", keep=3).apply("94102") == "941**"
    assert make("generalize.truncate").apply("94102") == "941**"  # keep defaults to 3
    assert make("generalize.truncate", keep=1, char="#").apply("94102") == "9####"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("941", "generalize.truncate: value has 3 characters, needs more than 3"),  # would be kept whole
        ("", "generalize.truncate: value has 0 characters, needs more than 3"),  # empty
        (94102, "generalize.truncate expected a string, got int"),  # a zip code as a number
    ],
)
def test_when_truncate_value_is_too_short_or_not_a_string_then_transform_error(value, reason):
    with pytest.raises(TransformError) as exc:
        make("generalize.truncate", keep=3).apply(value)
    assert str(exc.value) == reason


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"keep": -1}, "keep"),  # negative
        ({"keep": "3"}, "keep"),  # a string
        ({"char": "**"}, "char"),  # two characters
    ],
)
def test_when_truncate_parameter_is_bad_then_refused(params, param):
    with pytest.raises(ParamError) as exc:
        make("generalize.truncate", **params)
    assert exc.value.param == param


# -- generalize.date -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "2024-03-05"),  # default: the day
        ({"to": "hour"}, "2024-03-05T14:00:00Z"),  # to the hour
        ({"to": "month"}, "2024-03"),  # to the month
        ({"to": "year"}, "2024"),  # to the year
    ],
)
def test_date_transform_cuts_to_the_unit(params, expected):
    assert make("generalize.date", **params).apply("2024-03-05T14:23:11Z") == expected


def test_when_date_unit_is_unknown_then_refused():
    with pytest.raises(ParamError) as exc:
        make("generalize.date", to="week")
    assert exc.value.param == "to"
    assert exc.value.allowed == "hour, day, month, year"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("yesterday", "generalize.date: not an ISO-8601 date or timestamp"),  # not a date
        ("2024-13-01", "generalize.date: not an ISO-8601 date or timestamp"),  # month 13
        (1709648591, "generalize.date expected an ISO-8601 string, got int"),  # epoch seconds
    ],
)
def test_when_date_value_is_not_iso_8601_then_transform_error(value, reason):
    with pytest.raises(TransformError) as exc:
        make("generalize.date").apply(value)
    assert str(exc.value) == reason


# -- generalize.geohash ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        {"lat": 37.7749, "lon": -122.4194},  # an object
        [37.7749, -122.4194],  # a [lat, lon] pair
    ],
)
def test_geohash_transform_takes_an_object_or_a_pair(value):
    assert make("generalize.geohash", precision=5).apply(value) == "9q8yy"


def test_geohash_with_lat_and_lon_fields_reads_the_record():
    transform = make("generalize.geohash", precision=5, lat_field="lat", lon_field="lon")
    assert transform.needs_record is True
    record = {"lat": 37.7749, "lon": -122.4194}
    assert transform.apply_in_record(MISSING, record) == "9q8yy"
    assert transform.apply_in_record(MISSING, {"lat": None, "lon": 1.0}) is None


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"lon": -122.4}, "generalize.geohash: missing lat"),  # no latitude
        ({"lat": 37.7}, "generalize.geohash: missing lon"),  # no longitude
        ({"lat": "37.7", "lon": -122.4}, "generalize.geohash expected a finite number, got str"),  # a string
        ({"lat": 91.0, "lon": 0.0}, "generalize.geohash: coordinate out of range"),  # beyond the pole
        ({"lat": 0.0, "lon": -180.5}, "generalize.geohash: coordinate out of range"),  # beyond the date line
    ],
)
def test_when_coordinate_fields_are_bad_then_transform_error(record, reason):
    transform = make("generalize.geohash", lat_field="lat", lon_field="lon")
    with pytest.raises(TransformError) as exc:
        transform.apply_in_record(MISSING, record)
    assert str(exc.value) == reason


@pytest.mark.parametrize(
    "value",
    [
        "37.7,-122.4",  # a string
        [37.7],  # one number
        {"latitude": 37.7, "longitude": -122.4},  # other names
    ],
)
def test_when_coordinate_value_is_malformed_then_transform_error(value):
    with pytest.raises(TransformError):
        make("generalize.geohash").apply(value)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"precision": 0}, "precision"),  # too coarse
        ({"precision": 13}, "precision"),  # beyond 12
        ({"lat_field": "lat"}, "lat_field"),  # lat without lon
        ({"lon_field": "lon"}, "lat_field"),  # lon without lat
    ],
)
def test_when_geohash_parameter_is_bad_then_refused(params, param):
    with pytest.raises(ParamError) as exc:
        make("generalize.geohash", **params)
    assert exc.value.param == param


# -- property tests ------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(value=st.text(), keep=st.integers(min_value=0, max_value=8))
def test_truncate_never_crashes_and_keeps_length_and_prefix(value, keep):
    try:
        out = make("generalize.truncate", keep=keep).apply(value)
    except TransformError:
        return
    assert len(out) == len(value)
    assert out[:keep] == value[:keep] and set(out[keep:]) == {"*"}


@pytest.mark.parametrize("unit", ["hour", "day", "month", "year"])
@settings(max_examples=150, deadline=None)
@given(value=st.one_of(st.text(), st.text(alphabet="0123456789-:TZ+. ", max_size=30)))
def test_date_never_crashes_on_any_string(unit, value):
    try:
        out = make("generalize.date", to=unit).apply(value)
    except TransformError:
        return
    assert isinstance(out, str)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("generalize.truncate", {"keep": 3}),  # too short
        ("generalize.date", {}),  # not a date
        ("generalize.range", {"width": 10}),  # not a number
        ("generalize.geohash", {}),  # not a coordinate
    ],
)
@settings(max_examples=100, deadline=None)
@given(value=st.text(max_size=3))
def test_no_transform_error_message_contains_the_value(name, params, value):
    # a sentinel no message has of its own: if it shows up, the value was echoed
    tagged = "\u2603" + value
    try:
        make(name, **params).apply(tagged)
    except TransformError as exc:
        assert "\u2603" not in str(exc)


@settings(max_examples=150, deadline=None)
@given(moment=st.datetimes(timezones=st.just(dt.UTC)))
def test_cut_datetime_agrees_with_datetime_fields(moment):
    text = moment.isoformat()
    assert cut_datetime(text, "day") == moment.date().isoformat()
    assert cut_datetime(text, "month") == f"{moment.year:04d}-{moment.month:02d}"
    hour = dt.datetime.fromisoformat(cut_datetime(text, "hour").replace("Z", "+00:00"))
    assert hour == moment.replace(minute=0, second=0, microsecond=0)


@settings(max_examples=150, deadline=None)
@given(
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
    precision=st.integers(min_value=1, max_value=12),
)
def test_geohash_cells_nest_and_use_the_alphabet(lat, lon, precision):
    cell = geohash(lat, lon, precision)
    assert len(cell) == precision and set(cell) <= GEOHASH_ALPHABET
    # a coarser cell is a prefix of a finer one: this is what the k-anonymity hierarchy relies on
    assert geohash(lat, lon, precision + 1).startswith(cell)


@settings(max_examples=150, deadline=None)
@given(value=st.integers(min_value=-(10**9), max_value=10**9), width=st.integers(min_value=1, max_value=1000))
def test_numeric_range_contains_the_value(value, width):
    text = numeric_range(value, width)
    low_n = math.floor(value / width) * width
    assert text == f"{low_n}-{low_n + width - 1}"
    assert low_n <= value <= low_n + width - 1


def _cut_or_error(cut, value: str, unit: str) -> str:
    try:
        return cut(value, unit)
    except ValueError:
        return "ValueError"


@settings(max_examples=300, deadline=None)
@given(year=st.integers(0, 9999), month=st.integers(0, 13), day=st.integers(0, 32), hour=st.integers(0, 25),
       minute=st.integers(0, 61), second=st.integers(0, 61), unit=st.sampled_from(["hour", "day", "month", "year"]))
def test_a_plain_utc_timestamp_cuts_as_a_parsed_one_valid_or_not(year, month, day, hour, minute, second, unit):
    # the remembered cut of a plain UTC timestamp (cut_datetime) against parsing each one (_parse_and_cut):
    # impossible dates, hours, minutes and seconds included, each asked twice so the second is remembered
    value = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"
    want = _cut_or_error(_parse_and_cut, value, unit)
    assert _cut_or_error(cut_datetime, value, unit) == want
    assert _cut_or_error(cut_datetime, value, unit) == want
    # another moment of the same hour, the first one remembered
    later = value[:14] + "59:59Z"
    assert _cut_or_error(cut_datetime, later, unit) == _cut_or_error(_parse_and_cut, later, unit)


@pytest.mark.parametrize("value", ["2024-03-15T07:23:45Z", "2024-02-30T07:00:00Z", "2024-03-15T24:00:00Z",
                                   "2024-03-15T07:60:00Z", "2024-03-15T07:23:45+00:00", "2024-03-15T07:23:45.5Z",
                                   "2024-03-15 07:23:45Z", "2024-03-15T07:23:45"])
@pytest.mark.parametrize("unit", ["hour", "day", "month", "year"])
def test_other_forms_and_impossible_timestamps_cut_as_parsed(value, unit):
    assert _cut_or_error(cut_datetime, value, unit) == _cut_or_error(_parse_and_cut, value, unit)
    assert _cut_or_error(cut_datetime, value, unit) == _cut_or_error(_parse_and_cut, value, unit)
