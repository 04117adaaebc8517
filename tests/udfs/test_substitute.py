"""Substitution with realistic fakes: deterministic per key and domain, different under another key."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import registry
from udfs.keyring import Keyring
from udfs.registry import ParamError, Transform, TransformError
from udfs.substitute import CITIES, EMAIL_DOMAINS, FIRST_NAMES, LAST_NAMES, STREET_NAMES, STREET_SUFFIXES

KINDS = ["person_name", "email", "street_address", "city"]
RING_A = Keyring.generate(["substitute"])
RING_B = Keyring.generate(["substitute"])

NAME = re.compile(r"^(?P<first>[A-Z][a-z]+) (?P<last>[A-Z][a-z]+)$")
EMAIL = re.compile(r"^(?P<first>[a-z]+)\.(?P<last>[a-z]+)(?P<n>\d{1,3})@(?P<domain>example\.(com|net|org))$")
STREET = re.compile(r"^(?P<number>\d{1,4}) (?P<street>[A-Z][a-z]+) (?P<suffix>[A-Z][a-z]+)$")


def make(kind: str, keyring: Keyring = RING_A, **params) -> Transform:
    transform = registry.get(f"substitute.{kind}")(params, domain="some_field")
    transform.open(keyring)
    return transform


def test_person_name_is_a_first_and_last_name_from_the_lists():
    out = make("person_name").apply("John Doe")
    match = NAME.match(out)
    assert match is not None
    assert match["first"] in FIRST_NAMES and match["last"] in LAST_NAMES


def test_email_is_a_fake_address_on_a_reserved_domain():
    out = make("email").apply("john.doe@gmail.com")
    match = EMAIL.match(out)
    assert match is not None
    assert match["domain"] in EMAIL_DOMAINS
    assert match["first"] in {n.lower() for n in FIRST_NAMES}
    assert match["last"] in {n.lower() for n in LAST_NAMES}


def test_street_address_is_a_number_a_street_and_a_suffix():
    out = make("street_address").apply("1600 Pennsylvania Avenue NW")
    match = STREET.match(out)
    assert match is not None
    assert 1 <= int(match["number"]) <= 9899
    assert match["street"] in STREET_NAMES and match["suffix"] in STREET_SUFFIXES


def test_city_is_one_of_the_listed_towns():
    assert make("city").apply("San Francisco") in CITIES


@pytest.mark.parametrize("kind", KINDS)
def test_same_input_same_key_gives_the_same_fake(kind):
    assert make(kind).apply("Jane Roe") == make(kind).apply("Jane Roe")


@pytest.mark.parametrize(
    "variant",
    [
        "jane roe",  # lower case
        "JANE ROE",  # upper case
        "  Jane Roe\t",  # surrounding white space
    ],
)
def test_case_and_surrounding_space_do_not_make_another_person(variant):
    assert make("person_name").apply(variant) == make("person_name").apply("Jane Roe")


def test_domain_defaults_to_the_kind_so_two_name_fields_agree():
    # the policy passes the field's leaf name as the domain; substitution ignores it for the kind
    first = registry.get("substitute.person_name")({}, domain="name")
    second = registry.get("substitute.person_name")({}, domain="contact_name")
    assert first.domain == second.domain == "person_name"
    first.open(RING_A)
    second.open(RING_A)
    assert first.apply("Jane Roe") == second.apply("Jane Roe")


def test_an_explicit_domain_gives_other_fakes():
    values = [f"Person {i}" for i in range(10)]
    default = make("person_name")
    other = make("person_name", domain="employees")
    assert other.domain == "employees"
    assert [default.apply(v) for v in values] != [other.apply(v) for v in values]


@pytest.mark.parametrize("kind", KINDS)
def test_null_passes_through(kind):
    assert make(kind).apply(None) is None


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (42, "int"),  # a number
        (["Jane"], "list"),  # a list
        (True, "bool"),  # a bool
    ],
)
def test_when_value_is_not_a_string_then_transform_error(value, type_name):
    with pytest.raises(TransformError) as exc:
        make("person_name").apply(value)
    assert str(exc.value) == f"substitute.person_name expected a string, got {type_name}"


def test_when_no_keyring_is_given_then_open_refuses():
    transform = registry.get("substitute.city")({})
    with pytest.raises(ParamError) as exc:
        transform.open(None)
    assert "needs a 'substitute' key" in exc.value.problem


def test_substitution_needs_a_substitute_key():
    assert registry.get("substitute.email").key_purpose == "substitute"
    assert registry.get("substitute.email").deterministic is True


def test_the_chosen_key_id_is_recorded_and_never_the_material():
    transform = make("city")
    assert transform.key_id == RING_A.active["substitute"]
    assert RING_A.resolve("substitute").material.hex() not in repr(transform)


# -- property tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None)
@given(value=st.text())
def test_no_crash_on_any_string_and_deterministic(kind, value):
    transform = make(kind)
    out = transform.apply(value)
    assert isinstance(out, str) and out
    assert make(kind).apply(value) == out


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ("person_name", NAME),  # First Last
        ("email", EMAIL),  # first.lastNN@example.tld
        ("street_address", STREET),  # 123 Oak St
    ],
)
@settings(max_examples=100, deadline=None)
@given(value=st.text())
def test_format_kept_for_any_string(kind, shape, value):
    assert shape.match(make(kind).apply(value)) is not None


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.text(min_size=1), min_size=8, max_size=8, unique_by=lambda s: s.strip().casefold()))
def test_a_different_key_gives_different_fakes(kind, values):
    # compared over eight values: one value can collide by chance (30 cities), eight together cannot
    under_a = [make(kind, RING_A).apply(v) for v in values]
    under_b = [make(kind, RING_B).apply(v) for v in values]
    assert under_a != under_b


# the lists hold real names and towns, so a value that is on a list must not come back as its own fake
OWN_FAKE_CANDIDATES = {
    "person_name": [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES],
    "city": list(CITIES),
}


@pytest.mark.parametrize("kind", sorted(OWN_FAKE_CANDIDATES))
@pytest.mark.parametrize("seed", range(3))
def test_a_value_on_the_lists_never_comes_back_as_its_own_fake(kind, seed):
    ring = Keyring.generate(["substitute"])
    transform, reopened = make(kind, ring), make(kind, ring)
    values = OWN_FAKE_CANDIDATES[kind]
    same = [v for v in values if transform.apply(v).casefold() == v.casefold()]
    shouted = [v for v in values if transform.apply(f" {v.upper()} ").casefold() == v.casefold()]
    assert same == [] and shouted == []
    # a value that needed a second pick still gets the same fake every time
    assert [reopened.apply(v) for v in values] == [transform.apply(v) for v in values]

