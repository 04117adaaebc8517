"""The per-record view engine: paths, tree clashes, deny by default, nesting, arrays, inversion."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import registry
from udfs.keyring import Keyring
from udfs.record import PathError, apply_view, build_tree, envelope_line, invert_view, leaves, parse_path
from udfs.registry import Transform, TransformError

RING = Keyring.generate(["encrypt", "siv"])


def t(name: str, **params) -> Transform:
    transform = registry.get(name)(params, domain=name.split(".")[-1])
    transform.open(RING)
    return transform


def view(**rules: Transform):
    # keyword names cannot hold dots: "__" stands for "." and "_ARR" for "[*]"
    return build_tree((path.replace("_ARR", "[*]").replace("__", "."), tr) for path, tr in rules.items())


# -- parse_path --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("email", [("email", False)]),  # one name
        ("address.zip", [("address", False), ("zip", False)]),  # nested
        ("items[*].card", [("items", True), ("card", False)]),  # array of objects
        ("tags[*]", [("tags", True)]),  # array of values
        ("a.b[*].c[*].d", [("a", False), ("b", True), ("c", True), ("d", False)]),  # deep
        ("$meta.x-id", [("$meta", False), ("x-id", False)]),  # $ and - are allowed
    ],
)
def test_parse_path_splits_names_and_array_markers(path, expected):
    assert parse_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",  # empty
        "address..zip",  # empty segment
        "items[0].card",  # an index instead of [*]
        "items[*]card",  # no dot after [*]
        "1st",  # starts with a digit
        "a b",  # a space
        ".email",  # leading dot
        "email.",  # trailing dot
    ],
)
def test_when_path_is_malformed_then_path_error(path):
    with pytest.raises(PathError):
        parse_path(path)


def test_path_error_names_the_bad_segment():
    with pytest.raises(PathError) as exc:
        parse_path("items[0].card")
    assert str(exc.value) == "segment 'items[0]' is not a field name, optionally followed by [*]"


# -- build_tree clashes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "paths",
    [
        ["address", "address.zip"],  # a leaf, then a path through it
        ["address.zip", "address"],  # a path, then a leaf on top of it
        ["items[*].card", "items.card"],  # an array, then the same name as an object
        ["items.card", "items[*].card"],  # an object, then the same name as an array
        ["items[*]", "items[*].card"],  # an array of values, then of objects
        ["items", "items[*]"],  # a leaf, then the same name as an array
    ],
)
def test_when_two_paths_overlap_then_path_error(paths):
    with pytest.raises(PathError) as exc:
        build_tree((p, t("keep")) for p in paths)
    assert str(exc.value) == f"{paths[1]} overlaps another rule for the same field"


def test_siblings_under_one_parent_do_not_clash():
    root = build_tree([("address.zip", t("keep")), ("address.city", t("keep")), ("items[*].sku", t("keep"))])
    assert sorted(leaf.path for leaf in leaves(root)) == ["address.city", "address.zip", "items[*].sku"]


# -- apply_view ----------------------------------------------------------------------------------------------
def test_unnamed_fields_are_dropped_and_their_names_reported():
    root = view(customerId=t("keep"), email=t("mask.email"))
    dropped: list[str] = []
    out = apply_view(root, {"customerId": "C1", "email": "john@example.com", "ssn": "123-45-6789", "x": 1}, dropped)
    assert out == {"customerId": "C1", "email": "j***@example.com"}
    assert dropped == ["ssn", "x"]


def test_nested_fields_apply_and_unnamed_nested_fields_are_dropped_by_path():
    root = view(address__zip=t("generalize.truncate", keep=3), address__city=t("keep"))
    dropped: list[str] = []
    record = {"address": {"zip": "94102", "city": "SF", "street": "1 Main St"}, "name": "Jane"}
    out = apply_view(root, record, dropped)
    assert out == {"address": {"zip": "941**", "city": "SF"}}
    assert sorted(dropped) == ["address.street", "name"]


def test_arrays_of_objects_apply_per_item():
    root = view(items_ARR__card=t("mask.keep_last", n=4), items_ARR__sku=t("keep"))
    dropped: list[str] = []
    record = {"items": [{"card": "4111-1111-1111-1234", "sku": "A", "cvv": "123"}, {"card": "5500 0000 0000 0004", "sku": "B"}]}
    out = apply_view(root, record, dropped)
    assert out == {"items": [{"card": "****-****-****-1234", "sku": "A"}, {"card": "**** **** **** 0004", "sku": "B"}]}
    assert dropped == ["items[*].cvv"]


def test_arrays_of_values_apply_per_element_and_drop_removes_elements():
    root = view(tags_ARR=t("redact"), gone_ARR=t("drop"))
    out = apply_view(root, {"tags": ["a", "b"], "gone": ["x", "y"]}, [])
    assert out == {"tags": ["[REDACTED]", "[REDACTED]"], "gone": []}


def test_missing_fields_stay_missing_and_nulls_stay_null():
    root = view(email=t("mask.email"), address__zip=t("keep"), items_ARR__card=t("keep"))
    assert apply_view(root, {}, []) == {}
    assert apply_view(root, {"email": None, "address": None, "items": None}, []) == {
        "email": None, "address": None, "items": None,
    }
    assert apply_view(root, {"items": [None, {"card": None}]}, []) == {"items": [None, {"card": None}]}


def test_drop_removes_the_field_without_counting_it():
    dropped: list[str] = []
    assert apply_view(view(ssn=t("drop"), id=t("keep")), {"ssn": "123-45-6789", "id": 1}, dropped) == {"id": 1}
    assert dropped == []


def test_a_record_field_transform_computes_a_new_field():
    root = view(location=t("generalize.geohash", precision=5, lat_field="lat", lon_field="lon"))
    dropped: list[str] = []
    assert apply_view(root, {"lat": 37.7749, "lon": -122.4194}, dropped) == {"location": "9q8yy"}
    assert sorted(dropped) == ["lat", "lon"]


@pytest.mark.parametrize(
    ("rules", "record", "reason"),
    [
        (
            {"ssn": ("mask.keep_last", {"n": 4})},
            {"ssn": "6789"},
            "field ssn: mask.keep_last: value has 4 characters, needs at least 5",
        ),  # too short for its transform
        (
            {"address.zip": ("keep.string", {})},
            {"address": {"zip": 94102}},
            "field address.zip: keep.string: expected a string, got int",
        ),  # nested, wrong type
        (
            {"items[*].card": ("mask.keep_last", {"n": 4})},
            {"items": [{"card": "4111-1111-1111-1234"}, {"card": 4111}]},
            "field items[*].card: mask.keep_last expected a string, got int",
        ),  # an array item, wrong type
        (
            {"address.zip": ("keep", {})},
            {"address": "1 Main St, 94102"},
            "field address: expected an object, got a string",
        ),  # a string where an object belongs
        (
            {"items[*].card": ("keep", {})},
            {"items": {"card": "4111"}},
            "field items: expected a list, got an object",
        ),  # an object where a list belongs
        (
            {"items[*].card": ("keep", {})},
            {"items": ["4111111111111111"]},
            "field items[*]: expected an object, got a string",
        ),  # a list of strings where a list of objects belongs
    ],
)
def test_errors_carry_the_field_path_and_never_the_value(rules, record, reason):
    root = build_tree((path, t(name, **params)) for path, (name, params) in rules.items())
    with pytest.raises(TransformError) as exc:
        apply_view(root, record, [])
    assert str(exc.value) == reason
    for raw in ("6789", "94102", "4111", "1 Main St"):
        assert raw not in str(exc.value)


# -- invert_view -----------------------------------------------------------------------------------------------
def test_invert_view_decrypts_reversible_fields_at_every_depth():
    root = view(
        id=t("keep"), email=t("encrypt.aes_gcm"), address__street=t("encrypt.aes_siv"),
        items_ARR__card=t("encrypt.aes_gcm"), tags_ARR=t("encrypt.aes_siv"),
    )
    record = {
        "id": "C1", "email": "jane@example.com", "address": {"street": "1 Main St"},
        "items": [{"card": "4111111111111111"}, {"card": "5500000000000004"}], "tags": ["vip", "new"],
    }
    protected = apply_view(root, record, [])
    assert protected["email"] != record["email"] and protected["tags"][0] != "vip"
    assert invert_view(root, protected) == record


def test_invert_view_leaves_one_way_fields_as_they_are():
    root = view(email=t("mask.email"), ssn=t("encrypt.aes_siv"))
    protected = apply_view(root, {"email": "jane@example.com", "ssn": "123-45-6789"}, [])
    assert invert_view(root, protected) == {"email": "j***@example.com", "ssn": "123-45-6789"}


@pytest.mark.parametrize(
    ("path", "record", "field"),
    [
        ("email", {"email": "garbage"}, "email"),  # a top-level field
        ("address.street", {"address": {"street": "garbage"}}, "address.street"),  # a nested field
        ("items[*].card", {"items": [{"card": "garbage"}]}, "items[*].card"),  # a field inside array items
        ("tags[*]", {"tags": ["garbage"]}, "tags[*]"),  # an array of values
    ],
)
def test_invert_view_errors_carry_the_field_path(path, record, field):
    root = build_tree([(path, t("encrypt.aes_gcm"))])
    with pytest.raises(TransformError) as exc:
        invert_view(root, record)
    assert str(exc.value).startswith(f"field {field}: ")


# -- property tests ------------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "zip", "card"]), inner, max_size=3),
    max_leaves=8,
)


PROPERTY_VIEW = view(email=t("mask.email"), address__zip=t("keep.string"), items_ARR__card=t("mask.keep_last", n=4))


@settings(max_examples=150, deadline=None)
@given(record=st.dictionaries(st.sampled_from(["email", "address", "items", "other"]), JSON, max_size=4))
def test_apply_view_on_any_record_gives_a_view_or_a_transform_error(record):
    root = PROPERTY_VIEW
    dropped: list[str] = []
    try:
        out = apply_view(root, record, dropped)
    except TransformError as exc:
        assert str(exc).startswith("field ")
        return
    # deny by default: nothing outside the named paths reaches the view
    assert set(out) <= {"email", "address", "items"}
    if isinstance(out.get("address"), dict):
        assert set(out["address"]) <= {"zip"}
    for item in out.get("items") or []:
        assert item is None or set(item) <= {"card"}
    assert "other" not in out and ("other" in record) == ("other" in dropped)


@pytest.mark.parametrize("key", ["cus_1", 'a"b\\c', "zoë", "\u2028", "\ud800", "", None])
def test_envelope_line_is_json_whose_key_reads_back(key):
    line = envelope_line(key, '{"policy_id":"p"}', '{"a":1}', True)
    assert json.loads(line) == {"key": key or None, "headers": {"policy_id": "p"}, "value": {"a": 1}}
