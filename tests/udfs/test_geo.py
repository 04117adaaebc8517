"""generalize.city: known coordinates map to their cities; far points become the country or '*'."""

from __future__ import annotations

import pickle

import pytest

from flink_jobs.policy import compile_transform
from udfs.registry import TransformError


def make(spec: dict):
    problems: list = []
    transform = compile_transform(spec, "views.v.fields.city", "city", problems)
    assert not problems, problems
    transform.open(None)
    return transform


@pytest.mark.parametrize(("lat", "lon", "city"), [
    (37.7749, -122.4194, "San Francisco, US"),  # city centre
    (48.8566, 2.3522, "Paris, FR"),
    (35.6762, 139.6503, "Tokyo, JP"),
    (-33.8688, 151.2093, "Sydney, AU"),  # southern and eastern hemispheres
    (-22.9068, -43.1729, "Rio de Janeiro, BR"),  # southern and western
])
def test_known_coordinates_map_to_their_cities(lat, lon, city):
    assert make({"generalize": "city"}).apply({"lat": lat, "lon": lon}) == city


def test_coordinates_can_come_from_two_fields_of_the_record():
    city = make({"generalize": "city", "lat_field": "lat", "lon_field": "lon"})
    assert city.needs_record
    assert city.apply_in_record(None, {"lat": 48.8566, "lon": 2.3522}) == "Paris, FR"
    assert city.apply_in_record(None, {"lat": None, "lon": 2.0}) is None
    with pytest.raises(TransformError, match="missing lon"):
        city.apply_in_record(None, {"lat": 48.8})


@pytest.mark.parametrize(("far", "point", "expected"), [
    ("star", (30.0, -140.0), "*"),  # mid-Pacific, 1,800 km from any town
    ("country", (30.0, -140.0), "*"),  # too far even for a country guess
    ("star", (72.0, -40.0), "*"),  # inner Greenland, beyond max_distance_km
    ("country", (72.0, -40.0), "GL"),  # ... but near enough to name the country
])
def test_a_point_far_from_any_city_becomes_the_country_or_a_star(far, point, expected):
    city = make({"generalize": "city", "far": far, "max_distance_km": 25, "country_within_km": 1000})
    assert city.apply(list(point)) == expected


@pytest.mark.parametrize("value", [
    [91.0, 0.0],  # latitude out of range
    [0.0, float("nan")],  # not finite
    ["48.8", "2.3"],  # strings
    "Paris",  # not a coordinate
])
def test_when_the_coordinate_is_bad_then_dead_letter_without_the_value(value):
    with pytest.raises(TransformError) as exc:
        make({"generalize": "city"}).apply(value)
    assert "48.8" not in str(exc.value)


@pytest.mark.parametrize(("spec", "param"), [
    ({"generalize": "city", "far": "region"}, "far"),  # unknown choice
    ({"generalize": "city", "max_distance_km": 0}, "max_distance_km"),  # not positive
    ({"generalize": "city", "far": "country", "max_distance_km": 300, "country_within_km": 100},
     "country_within_km"),  # country radius inside the city radius
    ({"generalize": "city", "lat_field": "lat"}, "lat_field"),  # half a pair
])
def test_when_params_are_wrong_then_refused_at_policy_check(spec, param):
    problems: list = []
    assert compile_transform(spec, "views.v.fields.city", "city", problems) is None
    assert problems[0].path == f"views.v.fields.city.{param}"


def test_the_index_is_built_once_per_process_and_not_pickled():
    first, second = make({"generalize": "city"}), make({"generalize": "city", "far": "country"})
    assert first._index is second._index and len(first._index) > 100_000
    copy = pickle.loads(pickle.dumps(first))
    assert copy._index is None
