"""Unit tests of the k-anonymity core: policy checks, extraction, generalization, the cascade. No JVM."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.k_anonymity import (
    KAnonymityParams,
    LocalCascade,
    Partition,
    Stage,
    class_key,
    class_keys,
    core,
    extract_quasi_identifiers,
    fast_geohash,
    ncp,
)
from tests.support.kanon_checker import assert_accounted, assert_k_anonymous
from udfs.generalize import geohash
from udfs.registry import ParamError, TransformError

QIS = {
    "age": {"hierarchy": [{"range": 5}, {"range": 10}, {"range": 20}, "*"]},
    "zip": {"paths": ["zip", "address.zip"], "hierarchy": [{"truncate": 4}, {"truncate": 3}, {"truncate": 2}, "*"]},
    "location": {"lat_field": "lat", "lon_field": "lon", "hierarchy": [{"geohash": 5}, {"geohash": 4}, {"geohash": 3}, "*"]},
}
FIELDS = {"customerId": {"pseudonymize": "hmac_sha256"}, "purchaseAmount": "keep", "band": "keep"}


def block(**overrides):
    out = {"k": 3, "quasi_identifiers": json.loads(json.dumps(QIS)), "max_delay": "1s"}
    out.update(overrides)
    return out


def params(**overrides) -> KAnonymityParams:
    return KAnonymityParams.from_policy(block(**overrides), FIELDS)


def refused(bad_block, fields=FIELDS) -> ParamError:
    with pytest.raises(ParamError) as info:
        KAnonymityParams.from_policy(bad_block, fields)
    return info.value


# -- the policy block ---------------------------------------------------------------


def test_when_block_is_valid_then_lockstep_levels_follow_the_longest_hierarchy():
    p = params(state_ttl="5m", timing="event", l_diversity={"attribute": "band", "l": 2}, path="lockstep")
    assert p.k == 3 and p.levels == 4 and p.max_delay_ms == 1000 and p.state_ttl_ms == 300_000
    assert p.names == ("age", "zip", "location")
    assert p.source_paths == ("age", "zip", "address.zip", "lat", "lon")
    assert p.l_diversity.l == 2
    # deadlines are cumulative shares of max_delay, the last one is max_delay itself
    assert [p.deadline(100, level) for level in range(4)] == [350, 600, 850, 1100]


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"k": 0}, "k"),  # zero
        ({"k": -5}, "k"),  # negative
        ({"k": 1}, "k"),  # k=1 protects nobody
        ({"k": "5"}, "k"),  # a string
        ({"k": True}, "k"),  # a bool is not an integer here
        ({"max_delay": 30}, "max_delay"),  # a bare number has no unit
        ({"max_delay": "0s"}, "max_delay"),  # zero
        ({"state_ttl": "500ms"}, "state_ttl"),  # shorter than max_delay: buffers would expire unseen
        ({"timing": "wall"}, "timing"),  # unknown timing
        ({"on_timeout": "drop"}, "on_timeout"),  # unknown timeout action
        ({"quasi_identifiers": ["age", "zip"]}, "quasi_identifiers"),  # the list form names no hierarchy
        ({"surprise": 1}, "surprise"),  # unknown key
        ({"l_diversity": {"attribute": "nope", "l": 2}}, "l_diversity.attribute"),  # not a view field
        ({"l_diversity": {"attribute": "band", "l": 1}}, "l_diversity.l"),  # l below 2
        ({"path": "zigzag"}, "path"),  # unknown path strategy
        ({"path": [{"age": 0, "zip": 0}]}, "path[0]"),  # a level without location
        ({"path": [{"age": 0, "zip": 1, "location": 0}, {"age": 1, "zip": 0, "location": 0}]}, "path[1]"),  # zip finer
        ({"path": [{"age": 0, "zip": 0, "location": 0}, {"age": 0, "zip": 0, "location": 0}]}, "path[1]"),  # no coarser
        ({"path": [{"age": 4, "zip": 0, "location": 0}]}, "path[0]"),  # past the end of age's hierarchy
    ],
)
def test_when_a_top_level_param_is_wrong_then_its_path_is_named(overrides, path):
    assert refused(block(**overrides)).param == path


def test_when_path_is_cheapest_first_then_cheap_steps_come_before_costly_ones():
    # with age spanning 0-100, a 5-year bucket costs 0.05 of NCP, far more than a zip digit or a geohash character
    p = params(quasi_identifiers={**QIS, "age": {**QIS["age"], "domain": [0, 100]}})
    assert p.path[0] == (0, 0, 0) and p.path[-1] == (3, 3, 3) and p.levels == 10
    assert p.path.index((0, 2, 2)) < p.path.index((1, 2, 2))  # zip and location coarsen before age does
    assert all(sum(b) - sum(a) == 1 for a, b in zip(p.path, p.path[1:], strict=False))  # one QI one step per level


def test_when_path_is_explicit_then_it_may_stop_short_of_all_stars():
    path = [{"age": 0, "zip": 0, "location": 0}, {"age": 1, "zip": 1, "location": 1}]
    p = params(path=path)
    assert p.path == ((0, 0, 0), (1, 1, 1)) and p.levels == 2


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"hierarchy": [{"range": 5}, {"range": 10}]}, "quasi_identifiers.q.hierarchy[1]"),  # no '*' at the end
        ({"hierarchy": [{"range": 10}, {"range": 5}, "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # finer after coarser
        ({"hierarchy": [{"range": 5}, {"range": 7}, "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # 7 is no multiple of 5
        ({"hierarchy": [{"truncate": 3}, {"truncate": 3}, "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # not coarser
        ({"hierarchy": [{"geohash": 13}, "*"]}, "quasi_identifiers.q.hierarchy[0]"),  # geohash above 12
        ({"hierarchy": [{"date": "year"}, {"date": "month"}, "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # date finer
        ({"hierarchy": [{"range": 5}, {"truncate": 2}, "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # mixed kinds
        ({"hierarchy": ["*", "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # something after '*'
        ({"hierarchy": [{"range": 5}, "exact", "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # exact not first
        ({"hierarchy": [{"bucket": 5}, "*"]}, "quasi_identifiers.q.hierarchy[0]"),  # unknown level
        ({"hierarchy": [{"range": 5}, "*"], "colour": 1}, "quasi_identifiers.q.colour"),  # unknown key
        ({"hierarchy": [{"group": 1}, "*"]}, "quasi_identifiers.q"),  # group levels need a table
        ({"hierarchy": [{"range": 5}, "*"], "domain": [10, 0]}, "quasi_identifiers.q.domain"),  # low above high
        ({"hierarchy": [{"range": 5}, "*"], "lat_field": "lat"}, "quasi_identifiers.q.lat_field"),  # lat alone
        ({"hierarchy": [{"grid": 0.02}, {"grid": 0.03}, "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # no multiple
        ({"hierarchy": [{"grid": 0.1}, {"grid": 0.05}, "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # finer after coarser
        ({"hierarchy": [{"grid": 0}, "*"]}, "quasi_identifiers.q.hierarchy[0]"),  # no cell
        ({"hierarchy": [{"grid": 200}, "*"]}, "quasi_identifiers.q.hierarchy[0]"),  # wider than the globe's latitudes
        ({"hierarchy": [{"grid": 0.0000005}, "*"]}, "quasi_identifiers.q.hierarchy[0]"),  # under a millionth of a degree
        ({"hierarchy": [{"geohash": 5}, {"grid": 1}, "*"]}, "quasi_identifiers.q.hierarchy[1]"),  # two kinds of cell
    ],
)
def test_when_a_hierarchy_is_wrong_then_the_level_is_named(spec, path):
    assert refused(block(quasi_identifiers={"q": spec})).param == path


@pytest.mark.parametrize(
    "field",
    [
        "age",  # the QI's own name
        "address.zip",  # one of its source paths
        "lat",  # a coordinate it reads
        "age.bucket",  # a path under its published name
    ],
)
def test_when_a_quasi_identifier_is_also_a_view_field_then_refused(field):
    error = refused(block(), {**FIELDS, field: "keep"})
    assert error.param.startswith("quasi_identifiers.")
    assert "also listed in fields" in error.problem


def test_when_groups_are_given_then_category_levels_use_them(tmp_path):
    table = tmp_path / "occupation.csv"
    table.write_text("nurse;health;*\nsurgeon;health;*\nwelder;trade;*\nplumber;trade;*\n")
    p = params(quasi_identifiers={"job": {"hierarchy_file": str(table)}})
    assert [lv.describe() for lv in p.quasi_identifiers[0].levels] == ["exact", "{group: 1}", "*"]
    assert class_key(p, 1, {"job": "nurse"}) == '["health"]'
    with pytest.raises(TransformError, match="not a value of its hierarchy"):
        extract_quasi_identifiers(p, {"job": "astronaut"})


def test_when_a_group_has_two_parents_then_the_table_is_refused():
    groups = {"nurse": ["health", "care"], "surgeon": ["health", "medicine"]}
    error = refused(block(quasi_identifiers={"job": {"groups": groups, "hierarchy": [{"group": 1}, {"group": 2}, "*"]}}))
    assert error.param == "quasi_identifiers.job.groups" and "two parents" in error.problem


BINARY_FILE_ROWS = "F;*\nM;*\n"


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ({"hierarchy": ["exact", "*"]}, "string"),  # a two-valued string straight to '*'
        ({"hierarchy_file": "FILE"}, "category"),  # ARX rows of value;* only: the file lists the values
        ({"hierarchy_file": "FILE", "hierarchy": ["exact", "*"]}, "category"),  # the same, with the levels written out
        ({"groups": {"F": ["*"], "M": ["*"]}}, "category"),  # the inline table, value -> ['*']
    ],
)
def test_when_a_binary_category_goes_straight_to_star_then_it_is_accepted(tmp_path, spec, kind):
    table = tmp_path / "sex.csv"
    table.write_text(BINARY_FILE_ROWS)
    spec = {k: str(table) if v == "FILE" else v for k, v in spec.items()}
    qi = params(quasi_identifiers={"sex": spec}).quasi_identifiers[0]
    assert qi.kind == kind and [lv.describe() for lv in qi.levels] == ["exact", "*"]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"hierarchy": ["*"]}, "quasi_identifiers.sex.hierarchy"),  # nothing but '*' publishes nothing
        ({"hierarchy": ["exact"]}, "quasi_identifiers.sex.hierarchy[0]"),  # no '*' at the end
        ({"hierarchy_file": "FILE", "hierarchy": ["exact", {"group": 1}, "*"]},
         "quasi_identifiers.sex.hierarchy[1]"),  # value;* rows have no group column
        ({"hierarchy_file": "EMPTY"}, "quasi_identifiers.sex.hierarchy_file"),  # no rows at all
    ],
)
def test_when_a_binary_hierarchy_is_wrong_then_the_level_is_named(tmp_path, spec, path):
    (tmp_path / "sex.csv").write_text(BINARY_FILE_ROWS)
    (tmp_path / "empty.csv").write_text("\n")
    files = {"FILE": str(tmp_path / "sex.csv"), "EMPTY": str(tmp_path / "empty.csv")}
    spec = {k: files.get(v, v) if isinstance(v, str) else v for k, v in spec.items()}
    assert refused(block(quasi_identifiers={"sex": spec})).param == path


def test_when_a_value_is_outside_a_binary_hierarchy_file_then_the_reason_names_the_field(tmp_path):
    table = tmp_path / "sex.csv"
    table.write_text(BINARY_FILE_ROWS)
    p = params(quasi_identifiers={"sex": {"hierarchy_file": str(table)}})
    with pytest.raises(TransformError, match="^field sex: not a value of its hierarchy$"):
        extract_quasi_identifiers(p, {"sex": "X"})
    assert extract_quasi_identifiers(p, {"sex": "F"}) == {"sex": "F"}


# -- extraction and generalization --------------------------------------------------------


def test_when_zip_is_top_level_or_nested_then_both_are_found():
    p = params()
    top = {"age": 34, "zip": "94102", "lat": 37.77, "lon": -122.42}
    nested = {"age": 34, "address": {"zip": "94102"}, "lat": 37.77, "lon": -122.42}
    assert extract_quasi_identifiers(p, top) == extract_quasi_identifiers(p, nested)
    assert extract_quasi_identifiers(p, top) == {"age": 34, "zip": "94102", "location": {"lat": 37.77, "lon": -122.42}}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"zip": "94102", "lat": 1.0, "lon": 2.0}, "field age: missing"),  # no age
        ({"age": "34", "zip": "94102", "lat": 1.0, "lon": 2.0}, "field age: expected a number, got str"),  # text age
        ({"age": 34, "zip": 94102, "lat": 1.0, "lon": 2.0}, "field zip: expected a string, got int"),  # zip lost zeros
        ({"age": 34, "zip": "94102", "lat": 1.0}, "field location: missing"),  # half a coordinate
        ({"age": 34, "zip": "94102", "lat": 91.5, "lon": 2.0}, "field location: coordinate out of range"),
    ],
)
def test_when_a_value_is_missing_or_mistyped_then_the_reason_names_the_field_not_the_value(record, reason):
    with pytest.raises(TransformError) as info:
        extract_quasi_identifiers(params(), record)
    assert str(info.value) == reason
    assert "94102" not in str(info.value) and "91.5" not in str(info.value)


def test_when_level_rises_then_the_class_key_coarsens_to_stars():
    p = params(path="lockstep")
    qis = {"age": 34, "zip": "94102", "location": {"lat": 37.7749, "lon": -122.4194}}
    keys = [json.loads(class_key(p, level, qis)) for level in range(p.levels)]
    assert keys == [["30-34", "9410*", "9q8yy"], ["30-39", "941**", "9q8y"], ["20-39", "94***", "9q8"], ["*", "*", "*"]]


@settings(max_examples=300, deadline=None)
@given(lat=st.floats(-90, 90), lon=st.floats(-180, 180), precision=st.integers(1, 12))
def test_fast_geohash_agrees_with_the_bisecting_one(lat, lon, precision):
    # they may differ only within a float rounding of a cell edge, where either cell is right
    eps = 1e-9
    near = {geohash(lat + a, lon + b, precision) for a in (-eps, 0, eps) for b in (-eps, 0, eps)
            if -90 <= lat + a <= 90 and -180 <= lon + b <= 180}
    assert fast_geohash(lat, lon, precision) in near


@settings(max_examples=200, deadline=None)
@given(age=st.integers(0, 120), zip_code=st.from_regex(r"\A[0-9]{3,6}\Z"), lat=st.floats(-90, 90), lon=st.floats(-180, 180))
def test_class_keys_of_a_stage_agree_with_class_key_at_each_level(age, zip_code, lat, lon):
    p = params(path="cheapest_first")
    qis = {"age": age, "zip": zip_code, "location": {"lat": lat, "lon": lon}}
    assert list(class_keys(p, 0, p.levels - 1, qis)) == [class_key(p, level, qis) for level in range(p.levels)]


GRID = {"lat_field": "lat", "lon_field": "lon", "hierarchy": [{"grid": 0.02}, {"grid": 0.1}, {"grid": 0.5}, "*"]}


def _cell(text: str) -> tuple[float, float, float, float]:
    """``"[37.7, 37.8) x [-122.5, -122.4)"`` -> (lat low, lat high, lon low, lon high)."""
    lat, lon = text.split(" x ")
    return (*(float(x) for x in lat[1:-1].split(", ")), *(float(x) for x in lon[1:-1].split(", ")))


@settings(max_examples=300, deadline=None)
@given(lat=st.floats(-90, 90), lon=st.floats(-180, 180))
def test_grid_cells_hold_the_point_nest_level_by_level_and_agree_with_class_key(lat, lon):
    p = params(quasi_identifiers={"location": GRID}, path="lockstep")
    qis = {"location": {"lat": lat, "lon": lon}}
    keys = class_keys(p, 0, p.levels - 1, qis)
    assert list(keys) == [class_key(p, level, qis) for level in range(p.levels)]
    cells = [_cell(json.loads(key)[0]) for key in keys[:-1]]
    for (lat_lo, lat_hi, lon_lo, lon_hi), size in zip(cells, (0.02, 0.1, 0.5), strict=True):
        assert lat_hi - lat_lo == pytest.approx(size) and lon_hi - lon_lo == pytest.approx(size)
        # the point is inside, up to the millionth of a degree every level rounds down to
        assert lat_lo - 1e-6 <= lat < lat_hi + 1e-6 and lon_lo - 1e-6 <= lon < lon_hi + 1e-6
    for fine, coarse in zip(cells, cells[1:], strict=False):
        assert coarse[0] <= fine[0] and fine[1] <= coarse[1] and coarse[2] <= fine[2] and fine[3] <= coarse[3]
    assert json.loads(keys[-1]) == ["*"]


def test_a_grid_cell_is_published_as_its_latitude_and_longitude_intervals():
    p = params(quasi_identifiers={"location": GRID}, path="lockstep")
    qis = {"location": {"lat": 37.7749, "lon": -122.4194}}
    assert [json.loads(class_key(p, level, qis))[0] for level in range(3)] == [
        "[37.76, 37.78) x [-122.42, -122.4)", "[37.7, 37.8) x [-122.5, -122.4)", "[37.5, 38) x [-122.5, -122)"]
    spans = {"location.lat": (25.0, 49.0), "location.lon": (-125.0, -67.0)}
    assert ncp(p, 0, qis, spans) == pytest.approx((0.02 / 24 + 0.02 / 58) / 2)


def test_a_cascade_over_grid_cells_publishes_only_k_anonymous_classes():
    p = params(k=4, quasi_identifiers={"age": QIS["age"], "location": GRID})
    cascade = LocalCascade(p)
    rng = random.Random(11)
    ids = []
    for now in range(400):
        subject = f"s{rng.randrange(60)}"
        record = (None, "{}", json.dumps({"id": now, "customerId": subject}), subject,
                  json.dumps({"age": rng.randrange(20, 60),
                              "location": {"lat": 37.7 + rng.random() * 0.3, "lon": -122.5 + rng.random() * 0.3}}),
                  now * 5, now * 5)
        ids.append(now)
        cascade.push(record, now * 5)
    cascade.flush()
    released = [json.loads(r[3]) for r in cascade.released]
    assert released and any(r["location"] != "*" for r in released)
    assert_k_anonymous(released, ["age", "location"], "customerId", 4)
    assert_accounted(ids, [r["id"] for r in released], [json.loads(r[2])["id"] for r in cascade.suppressed])


def test_when_values_come_back_then_the_remembered_keys_still_agree_with_class_key():
    p = params(path="cheapest_first")
    stage = Stage(p, 0, p.levels - 1)  # one plan for every record, so its memory is used
    rng = random.Random(5)
    for _ in range(300):
        qis = {"age": rng.choice([34, 34.0, 35, 61.5]), "zip": rng.choice(["94102", "9410", "10001"]),
               "location": {"lat": rng.uniform(37, 38), "lon": rng.uniform(-123, -122)}}
        assert list(stage.keys(qis)) == [class_key(p, level, qis) for level in range(p.levels)]


def test_when_level_rises_then_ncp_does_not_fall():
    p = params(quasi_identifiers={**QIS, "age": {**QIS["age"], "domain": [0, 100]}}, path="lockstep")
    qis = {"age": 34, "zip": "94102", "location": {"lat": 37.7749, "lon": -122.4194}}
    spans = {"location.lat": (25.0, 49.0), "location.lon": (-125.0, -67.0)}
    losses = [ncp(p, level, qis, spans) for level in range(p.levels)]
    assert losses == sorted(losses) and losses[-1] == 1.0 and ncp(p, None, qis) == 1.0
    cell = 360 / 2**13  # a 5-character geohash is 13 bits of longitude, 12 of latitude: the same width in degrees
    expected = (5 / 100 + (10 - 1) / (10**5 - 1) + (cell / 24 + cell / 58) / 2) / 3
    assert losses[0] == pytest.approx(expected)


# -- the buffer of one class ------------------------------------------------------------------


def staged(subject: str, entered: int = 0, band: str = "a", n: int = 0):
    qis = {"age": 34, "zip": "94102", "location": {"lat": 37.77, "lon": -122.42}}
    value = json.dumps({"id": f"{subject}-{n}", "band": band})
    return (None, "{}", value, subject, json.dumps(qis), entered, entered)


def stage_of(p: KAnonymityParams, number: int = 0) -> Stage:
    return Stage(p, *p.stages[number])


def feed(stage: Stage, part: Partition, record, now: int = 0):
    return stage.on_record(part, record, stage.keys(json.loads(record[4])), now)


def ids(releases) -> list[str]:
    return [json.loads(r[0][2])["id"] for r in releases]


def test_when_block_has_four_levels_then_the_first_stage_takes_three_and_the_last_its_own():
    p = params(path="lockstep")
    assert p.stages == ((0, 2), (3, 3)) and params(on_timeout="suppress").stages == ((0, 0),)
    # the first stage is keyed by its coarsest class, which holds all its finer ones
    assert stage_of(p).partition_key(json.loads(staged("a")[4])) == class_key(p, 2, json.loads(staged("a")[4]))


def test_when_one_subject_sends_many_records_then_the_class_stays_buffered():
    stage, part = stage_of(params(path="lockstep")), Partition(3)
    for n in range(10):
        assert feed(stage, part, staged("alice", n=n)) == []
    # all in one finest class, the tree one class per level above it; one subject everywhere; one timer for all ten
    finest, *coarser = keys = part.keys[0]
    assert len(part.records) == 10 and part.classes[0] == {finest: (dict.fromkeys(range(10)), {"alice": 10}, {})}
    assert part.kids[1:] == [{key: {below: None}} for below, key in zip(keys[:-1], coarser, strict=True)]
    assert part.up[:-1] == [{below: key} for below, key in zip(keys[:-1], coarser, strict=True)]
    assert not any(stage._complete(part, index, key) for index, key in enumerate(part.keys[0]))
    assert part.armed == [750]


def test_when_k_distinct_subjects_arrive_then_the_class_is_released_and_passes_through():
    stage, part = stage_of(params()), Partition(stage_of(params()).depth)
    assert feed(stage, part, staged("a")) == []
    assert feed(stage, part, staged("a", n=1)) == []
    assert feed(stage, part, staged("b")) == []
    released = feed(stage, part, staged("c"))
    assert ids(released) == ["a-0", "a-1", "b-0", "c-0"] and {r[1] for r in released} == {0}
    assert part.empty()
    # after release, a lone record passes straight through
    assert ids(feed(stage, part, staged("z"))) == ["z-0"] and part.empty()


def test_when_l_diversity_is_set_then_release_waits_for_l_values():
    p = params(l_diversity={"attribute": "band", "l": 2})
    stage, part = stage_of(p), Partition(stage_of(p).depth)
    for subject in "abcd":
        assert feed(stage, part, staged(subject, band="same")) == []
    assert len(feed(stage, part, staged("e", band="other"))) == 5


def test_when_deadlines_are_close_then_their_timers_coalesce_within_one_percent():
    p = params(path="lockstep")  # max_delay 1s: 10 ms resolution; the first stage ends at 3/4 of it
    stage, part = stage_of(p), Partition(3)
    for t in range(1, 10):
        feed(stage, part, staged("a", entered=t, n=t))
    assert part.armed == [760] and p.timer(751) == 760 and p.timer(750) == 750


def near(subject: str, age: int, zip_code: str, entered: int = 0, n: int = 0):
    qis = {"age": age, "zip": zip_code, "location": {"lat": 37.77, "lon": -122.42}}
    return (None, "{}", json.dumps({"id": f"{subject}-{n}"}), subject, json.dumps(qis), entered, entered)


def test_when_a_deadline_comes_then_the_record_is_released_at_its_finest_complete_level_with_the_fewest_others():
    p = params(k=3, path="lockstep")
    stage, part = stage_of(p), Partition(3)
    # five subjects, all in one level-1 class (30-39, 941**), each alone at level 0
    for n, (subject, age, zip_code) in enumerate([("a", 31, "94102"), ("b", 36, "94110"), ("c", 38, "94177"),
                                                  ("d", 33, "94150"), ("e", 39, "94199")]):
        feed(stage, part, near(subject, age, zip_code, entered=n * 10))
    published, leaving = stage.on_deadline(part, 750, 750)
    # a is due; it goes out at level 1 with the two oldest others, not with all four
    assert ids(published) == ["a-0", "b-0", "c-0"] and {r[1] for r in published} == {1} and leaving == []
    assert sorted(part.records) == [3, 4]
    # the class stays released: d, when due, joins it alone
    published, _ = stage.on_deadline(part, 780, 780)
    a_class = class_key(p, 1, {"age": 31, "zip": "94102", "location": {"lat": 37.77, "lon": -122.42}})
    assert ids(published) == ["d-0"] and published[0][1:] == (1, a_class) and sorted(part.records) == [4]


def test_when_a_deadline_releases_a_group_under_l_diversity_then_the_group_has_l_values():
    p = params(k=2, path="lockstep", l_diversity={"attribute": "band", "l": 2})
    stage, part = stage_of(p), Partition(3)
    # a, b, c meet at level 1 only; a and b share a band, so k=2 alone would take a and b
    for n, (subject, age, zip_code, band) in enumerate([("a", 31, "94102", "x"), ("b", 36, "94110", "x"),
                                                        ("c", 38, "94177", "y")]):
        record = near(subject, age, zip_code, entered=n)
        feed(stage, part, (*record[:2], json.dumps({"id": f"{subject}-0", "band": band}), *record[3:]))
    published, _ = stage.on_deadline(part, 750, 750)
    assert ids(published) == ["a-0", "b-0", "c-0"] and {r[1] for r in published} == {1}


def test_when_a_released_class_outlives_its_state_ttl_then_it_must_fill_again():
    p = params(k=2, state_ttl="2s")
    stage, part = stage_of(p), Partition(stage_of(p).depth)
    feed(stage, part, staged("a"), now=0)
    assert len(feed(stage, part, staged("b"), now=0)) == 2
    assert len(feed(stage, part, staged("c"), now=1_999)) == 1  # passes straight through
    assert feed(stage, part, staged("d", entered=2_000), now=2_000) == []  # its state has expired: buffered
    assert len(feed(stage, part, staged("e", entered=2_000), now=2_000)) == 2


def test_when_deadlines_pass_then_only_the_expired_records_leave():
    stage, part = stage_of(params(path="lockstep")), Partition(3)
    feed(stage, part, staged("a", entered=0))
    feed(stage, part, staged("b", entered=100))
    published, leaving = stage.on_deadline(part, 750, 750)
    assert published == [] and [r[3] for r in leaving] == ["a"]
    # b alone is left in the class, at every level: its finest class, the tree one class per level above it
    finest, *coarser = keys = part.keys[1]
    assert {key: entry[1] for key, entry in part.classes[0].items()} == {finest: {"b": 1}}
    assert part.kids[1:] == [{key: {below: None}} for below, key in zip(keys[:-1], coarser, strict=True)]
    # the class still needs k fresh subjects: "a" left, so two more are needed
    assert feed(stage, part, staged("c", entered=200)) == []


# -- the index of a nested stage: finest classes counted, coarser classes a tree over them ------------------


def index_of(part: Partition) -> tuple:
    """What a partition's class index says, in a form to compare: members in their order, the tree's kids as sets.

    The order of kids is the order the classes were made in, which a rebuild may not repeat;
    nothing is read from it but the order of a union.
    """
    finest = {key: (list(members), subjects, values) for key, (members, subjects, values) in part.classes[0].items()}
    return finest, part.classes[1:], [{key: set(under) for key, under in level.items()} for level in part.kids], part.up


def assert_tallies_hold(part: Partition) -> None:
    """Each tallied coarser class counts, per subject and per value, the finest classes under it holding it."""
    assert part.tallied == sum(len(tallies) for tallies in part.tallies)
    for index, tallies in enumerate(part.tallies):
        for key, (subjects, values) in tallies.items():
            leaves = list(Stage._leaves(part, index, key))  # depth first, one at a time
            assert leaves == Stage._all_leaves(part, index, key)  # one level at a time: the same, in the same order
            under = [part.classes[0][child] for child in leaves]
            assert subjects == dict(Counter(s for _, held, _ in under for s in held)), (index, key)
            assert values == dict(Counter(v for _, _, held in under for v in held)), (index, key)


def test_when_records_in_different_finest_classes_meet_at_a_coarser_level_then_their_union_completes_it():
    p = params(k=3, path="lockstep")
    stage, part = stage_of(p), Partition(3)
    people = [("a", 31, "94102"), ("a", 33, "94150"), ("b", 36, "94110"), ("c", 38, "94177")]
    for n, (subject, age, zip_code) in enumerate(people):
        feed(stage, part, near(subject, age, zip_code, entered=n * 100, n=n))
    coarse = part.keys[0][1]
    # four finest classes (a's two records too), each under the one level-1 class, in the order they came
    assert len(part.classes[0]) == 4 and all(len(subjects) == 1 for _, subjects, _ in part.classes[0].values())
    assert list(part.kids[1][coarse]) == [part.keys[rid][0] for rid in range(4)]
    assert not any(stage._complete(part, 0, key) for key in part.classes[0])
    assert stage._complete(part, 1, coarse)  # a, b and c: three subjects across four finest classes
    published, _ = stage.on_deadline(part, 750, 750)
    # a-0 is due: the oldest records that bring k subjects, a-1 being no new subject
    assert ids(published) == ["a-0", "b-2", "c-3"] and {r[1:] for r in published} == {(1, coarse)}
    assert list(part.records) == [1] and list(part.kids[1][coarse]) == [part.keys[1][0]]


def test_when_a_finest_class_empties_then_it_leaves_the_tree_and_coarser_classes_go_when_they_hold_none():
    p = params(k=5, path="lockstep")
    stage, part = stage_of(p), Partition(3)
    feed(stage, part, near("a", 31, "94102", entered=0))
    feed(stage, part, near("b", 36, "94110", entered=100, n=1))
    first, second = part.keys[0][0], part.keys[1][0]
    _, coarse, coarsest = part.keys[0]
    both = {first: None, second: None}
    assert part.kids[1:] == [{coarse: both}, {coarsest: {coarse: None}}]
    assert part.up[:2] == [{first: coarse, second: coarse}, {coarse: coarsest}]
    _, leaving = stage.on_deadline(part, 750, 750)  # a leaves the stage: k = 5 is out of reach
    assert [r[3] for r in leaving] == ["a"]
    assert list(part.classes[0]) == [second] and part.kids[1:] == [{coarse: {second: None}}, {coarsest: {coarse: None}}]
    assert part.up[:2] == [{second: coarse}, {coarse: coarsest}]
    stage.on_deadline(part, 850, 850)
    assert part.empty() and part.classes == [{}, {}, {}] and part.kids == part.up == [{}, {}, {}]


@pytest.mark.parametrize("seed", range(5))
def test_when_a_coarser_class_is_released_then_sorting_or_merging_its_records_picks_the_same_oldest(seed, monkeypatch):
    rng = random.Random(seed)
    p = params(k=5, path="lockstep")
    # many finest classes of one or two subjects each: classes are completed at the coarser levels
    people = [(rng.choice("abcdefghijkl"), rng.randrange(20, 60), f"941{rng.randrange(100):02d}") for _ in range(150)]
    outcomes = []
    for sort_up_to in (core.SORT_UP_TO, 0):  # 0: every coarser class merged lazily
        monkeypatch.setattr(core, "SORT_UP_TO", sort_up_to)
        stage, part = stage_of(p), Partition(3)
        out = []
        for n, (subject, age, zip_code) in enumerate(people):
            out += feed(stage, part, near(subject, age, zip_code, entered=n * 10, n=n), now=n * 10)
            out += stage.on_deadline(part, n * 10, n * 10)[0]
        out += stage.flush(part, 10_000)[0]
        outcomes.append([(json.loads(record[2])["id"], level, key) for record, level, key in out])
    assert outcomes[0] == outcomes[1] and any(level for _, level, _ in outcomes[0])


def test_when_a_coarser_class_holds_many_finest_classes_then_its_tally_follows_them(monkeypatch):
    monkeypatch.setattr(core, "TALLY_FROM", 3)
    p = params(k=4, path="lockstep", l_diversity={"attribute": "band", "l": 2})
    stage, part = stage_of(p), Partition(3)
    people = [("a", 31, "94102", "x"), ("a", 36, "94110", "x"), ("b", 38, "94177", "x"), ("b", 33, "94150", "x")]
    for n, (subject, age, zip_code, band) in enumerate(people):
        record = near(subject, age, zip_code, entered=n)
        feed(stage, part, (*record[:2], json.dumps({"id": f"{subject}-{n}", "band": band}), *record[3:]))
    coarse = part.keys[0][1]
    assert not stage._complete(part, 1, coarse) and coarse in part.tallies[1]  # four finest classes: tallied
    assert_tallies_hold(part)
    # a third subject, in a finest class already there, and with a new band: it joins the tally
    record = near("c", 36, "94110", entered=5, n=9)
    feed(stage, part, (*record[:2], json.dumps({"id": "c-9", "band": "y"}), *record[3:]))
    assert_tallies_hold(part)
    assert part.tallies[1][coarse] == ({"a": 2, "b": 2, "c": 1}, {'"x"': 4, '"y"': 1})
    assert not stage._complete(part, 1, coarse)  # three subjects, k = 4
    feed(stage, part, near("d", 39, "94199", entered=6, n=10))
    assert_tallies_hold(part)
    assert stage._complete(part, 1, coarse)
    published, _ = stage.on_deadline(part, 750, 750)  # a-0 due: released at level 1 with the fewest others
    assert ids(published) == ["a-0", "b-2", "c-9", "d-10"] and {r[1] for r in published} == {1}
    assert_tallies_hold(part)
    assert coarse in part.released[1] and sorted(part.records) == [1, 3]


@pytest.mark.parametrize("seed", range(10))
def test_when_hierarchies_do_not_nest_then_every_level_counts_its_records_and_releases_stay_k_anonymous(seed):
    # the policy check refuses a group with two parents, so the table is swapped in after it: a stage must not
    # lean on nesting it cannot see. Its finest level is a group that does not fix the next one
    valid = {"nurse": ["health", "care"], "surgeon": ["health", "care"], "carer": ["social", "care"],
             "doctor": ["social", "care"]}
    crossed = {"nurse": ("health", "care"), "surgeon": ("health", "medicine"), "carer": ("social", "care"),
               "doctor": ("social", "medicine")}
    quasi = {"job": {"groups": valid, "hierarchy": ["exact", {"group": 1}, {"group": 2}, "*"]}}
    p = params(k=3, quasi_identifiers=quasi, path=[{"job": 1}, {"job": 2}, {"job": 3}])
    p.quasi_identifiers[0].groups.update(crossed)
    stage = stage_of(p)
    assert not stage._nested and (stage.first, stage.last) == (0, 1)
    part = Partition(stage.depth)
    rng = random.Random(seed)
    out, ids_in, left = [], [], []
    # two subjects in each group of level 0, so no class is complete there; three under "care" at level 1
    jobs = {"s0": "nurse", "s1": "surgeon", "s2": "carer", "s3": "carer", "s4": rng.choice(list(crossed))}
    for i in range(150):
        subject = rng.choice(list(jobs)[:4] if i < 100 else list(jobs))
        ids_in.append(str(i))
        record = (None, "{}", json.dumps({"id": str(i), "customerId": subject}), subject,
                  json.dumps({"job": jobs[subject]}), i * 10, i * 10)
        out += feed(stage, part, record, now=i * 10)
        published, leaving = stage.on_deadline(part, i * 10, i * 10)
        out += published
        left += leaving
        # every buffered record is counted at every level; there is no index of finest classes
        for level in part.classes:
            assert sorted(rid for members, _, _ in level.values() for rid in members) == sorted(part.records)
        assert part.kids == part.up == [{}, {}]
    published, leaving = stage.flush(part, 10_000)
    out += published
    left += leaving
    released = [{**json.loads(record[2]), "job": json.loads(key)[0]} for record, _, key in out]
    assert "care" in {r["job"] for r in released}  # nurses and carers meet at level 1 only
    assert_k_anonymous(released, ["job"], "customerId", 3)
    assert_accounted(ids_in, [r["id"] for r in released], [json.loads(r[2])["id"] for r in left])


# -- the whole cascade ------------------------------------------------------------------------


def cascade_records(rng: random.Random, n: int, subjects: int, rare: float, step: int = 7):
    """Synthetic staged records, one every ``step`` ms; ``rare`` is the share with a unique-ish location."""
    for i in range(n):
        subject = f"s{rng.randrange(subjects)}"
        if rng.random() < rare:
            qis = {"age": rng.randrange(0, 100), "zip": f"{rng.randrange(10**5):05d}",
                   "location": {"lat": rng.uniform(-60, 60), "lon": rng.uniform(-170, 170)}}
        else:
            qis = {"age": rng.choice([31, 33, 47]), "zip": rng.choice(["94102", "94107", "10001"]),
                   "location": {"lat": 37.77 + rng.random() / 100, "lon": -122.42}}
        value = json.dumps({"id": str(i), "customerId": subject})
        yield (None, "{}", value, subject, json.dumps(qis), i * step, i * step)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(2, 6), rare=st.floats(0, 0.5), subjects=st.integers(3, 40))
def test_cascade_publishes_only_k_anonymous_classes_and_accounts_for_every_record(seed, k, rare, subjects):
    p = params(k=k)
    cascade = LocalCascade(p)
    rng = random.Random(seed)
    ids = []
    for now, record in enumerate(cascade_records(rng, 300, subjects, rare)):
        ids.append(json.loads(record[2])["id"])
        cascade.push(record, now * 7)
    cascade.flush()
    released = [json.loads(r[3]) for r in cascade.released]
    assert_k_anonymous(released, ["age", "zip", "location"], "customerId", k)
    assert_accounted(ids, [r["id"] for r in released], [json.loads(r[2])["id"] for r in cascade.suppressed])
    assert all(r[4] <= p.max_delay_ms + p.timer_resolution_ms for r in cascade.released)


def test_when_a_record_is_rare_then_it_is_promoted_and_then_suppressed():
    p = params(k=2)
    cascade = LocalCascade(p)
    cascade.push(staged("loner", entered=0), 0)
    cascade.advance(999)
    assert cascade.released == [] and cascade.suppressed == []
    cascade.advance(1000)
    assert cascade.released == [] and len(cascade.suppressed) == 1
    key, headers, value, wait = cascade.suppressed[0]
    assert json.loads(headers) == {"k_suppressed": "timeout"} and wait == 1000
    assert json.loads(value)["age"] == 34  # the suppressed output holds raw QIs: it is as sensitive as the input


def test_when_two_subjects_meet_only_at_a_coarser_level_then_they_are_released_there():
    p = params(k=2, path="lockstep")
    cascade = LocalCascade(p)
    near = staged("a", entered=0)
    other = json.dumps({"age": 38, "zip": "94177", "location": {"lat": 37.77, "lon": -122.42}})
    cascade.push(near, 0)
    cascade.push((None, "{}", '{"id": "b"}', "b", other, 0, 0), 0)
    cascade.advance(749)
    assert cascade.released == []
    cascade.advance(750)  # the first stage's deadline: they meet at level 1
    assert [r[0] for r in cascade.released] == [1, 1]
    published = json.loads(cascade.released[0][3])
    assert (published["age"], published["zip"]) == ("30-39", "941**")
    assert json.loads(cascade.released[0][2]) == {"k_level": "1"}


@pytest.mark.parametrize("source", ["inline", "file"])  # [exact, '*'] written out, and ARX rows of value;*
def test_a_cascade_with_a_binary_quasi_identifier_publishes_only_k_anonymous_classes(tmp_path, source):
    table = tmp_path / "sex.csv"
    table.write_text(BINARY_FILE_ROWS)
    sex = {"hierarchy": ["exact", "*"]} if source == "inline" else {"hierarchy_file": str(table)}
    quasi = {"sex": sex, "age": {"hierarchy": [{"range": 10}, {"range": 20}, "*"], "domain": [0, 100]}}
    p = params(k=3, quasi_identifiers=quasi, path="lockstep")
    assert p.path == ((0, 0), (1, 1), (1, 2))  # sex reaches '*' at level 1, age one level later
    cascade = LocalCascade(p)
    rng = random.Random(7)
    ids = []
    for i in range(400):
        subject = f"s{rng.randrange(60)}"
        qis = {"sex": rng.choice("FM"), "age": rng.choice([23, 27, 34, 45, 61, 88])}
        if i % 50 == 0:  # three rare nonagenarians, F, M, F: fewer than k of each sex, k of them together
            subject = f"r{i // 50 % 3}"
            qis = {"sex": "FMF"[i // 50 % 3], "age": 95}
        ids.append(str(i))
        cascade.push((None, "{}", json.dumps({"id": str(i), "customerId": subject}), subject, json.dumps(qis),
                      i * 5, i * 5), i * 5)
    cascade.flush()
    released = [json.loads(r[3]) for r in cascade.released]
    assert_k_anonymous(released, ["sex", "age"], "customerId", 3)
    assert_accounted(ids, [r["id"] for r in released], [json.loads(r[2])["id"] for r in cascade.suppressed])
    assert {r["sex"] for r in released} <= {"F", "M", "*"} and any(r["sex"] == "*" for r in released)
    assert {r["sex"] for r in released if r["sex"] != "*"} == {"F", "M"}  # exact where the class is big enough


def test_when_on_timeout_is_suppress_then_there_is_no_cascade():
    p = params(k=2, on_timeout="suppress")
    cascade = LocalCascade(p)
    cascade.push(staged("loner"), 0)
    cascade.advance(1000)
    assert p.levels == 1 and len(cascade.suppressed) == 1


# -- the Flink state: a partition comes back from what its journal wrote ------------------------


def replay(part: Partition, facts: dict, released: dict) -> None:
    """Apply the partition's journal to dicts, as the Flink operator applies it to its map states."""
    puts, removes, marks, unmarks = part.writes()
    for rid, record in puts:
        facts[rid] = record
    for rid in removes:
        del facts[rid]
    for name in unmarks:
        released.pop(name, None)
    released.update(marks)
    part.clear_journal()


@pytest.mark.parametrize("tally_from", [core.TALLY_FROM, 2])
@pytest.mark.parametrize("seed", range(30))
def test_when_a_partition_is_rebuilt_from_its_written_state_then_it_behaves_as_the_one_that_never_left(
        seed, tally_from, monkeypatch):
    monkeypatch.setattr(core, "TALLY_FROM", tally_from)
    rng = random.Random(seed)
    # a short TTL, so released classes also run out (and leave the state) mid-run
    p = params(k=3, path="lockstep", l_diversity={"attribute": "band", "l": 2}, state_ttl="1500ms")
    stage = stage_of(p)
    kept, restored = Partition(stage.depth), Partition(stage.depth)
    facts: dict = {}
    released: dict = {}
    now = 0
    for i in range(300):
        now += rng.choice([0, 1, 3, 10, 40])
        if rng.random() < 0.75:
            # late records too; a few subjects, ages and zips, so classes fill at every level
            record = near(rng.choice("aabcdef"), rng.choice([31, 36, 52]), rng.choice(["94102", "94110", "10001"]),
                          entered=now - rng.choice([0, 0, 5, 30]), n=i)
            record = (*record[:2], json.dumps({"id": f"r{i}", "band": rng.choice("xy")}), *record[3:])
            got, want = feed(stage, restored, record, now), feed(stage, kept, record, now)
        else:
            got, want = stage.on_deadline(restored, now, now), stage.on_deadline(kept, now, now)
        assert got == want
        replay(restored, facts, released)
        assert facts == restored.records
        assert released == {f"{i}|{key}": at for i, level in enumerate(restored.released) for key, at in level.items()}
        # the index kept up record by record is the one a rebuild makes from the records alone
        assert index_of(restored) == index_of(stage.rebuild(facts.items(), [], now))
        assert_tallies_hold(restored)
        kept.clear_journal()
        if rng.random() < 0.1:  # a restore: only the written state survives
            restored = stage.rebuild(facts.items(), released.items(), now)
            assert list(restored.records.values()) == list(kept.records.values())  # ids may differ, not order
            replay(restored, facts, released)  # classes past their TTL leave the state
    assert stage.flush(restored, now) == stage.flush(kept, now)




@pytest.mark.parametrize("key, subject", [
    ("cus_1", "CUST1"),             # plain
    ("", "a\x1fb\x1ec"),            # separators inside a raw subject travel JSON-encoded
    (None, 'quote " and \\ back'),  # no key; JSON escapes
])
def test_when_a_staged_record_is_encoded_then_it_decodes_to_the_same_record_and_keys(key, subject):
    from operators.k_anonymity import decode_staged, encode_staged

    record = (key, '{"policy_id":"p"}', '{"x":1}', subject, '{"age":34}', 1_700_000_000_000, 1_700_000_000_500)
    keys = ('[30,"152"]', '["*","15"]')
    assert decode_staged(encode_staged(record, keys)) == (record, keys)


def test_when_the_stager_stages_a_record_then_its_key_is_the_partition_and_its_keys_are_the_stage_ends():
    from operators.k_anonymity import Stager, decode_staged, encode_staged

    params = KAnonymityParams.from_policy({"k": 2, "quasi_identifiers": QIS, "max_delay": "10s"}, {})
    qis = {"age": 34, "zip": "15222", "location": {"lat": 40.44, "lon": -80.02}}
    staged, keys = Stager(params).staged("k", "{}", "{}", "s1", qis, 1000, 5000)
    record, decoded_keys = decode_staged(encode_staged(staged, keys))
    stage = Stage(params, *params.stages[0])
    assert record == staged and decoded_keys == keys == (stage.keys(qis)[0], stage.keys(qis)[-1])
    assert record[6] == 5000  # processing timing: entered at the wall clock, not the event time
    assert stage.all_keys(record, keys) == stage.keys(qis)
