"""Windowed shuffling core: multiset kept, associations broken, small windows never released in the clear."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from operators.shuffle import SUPPRESSED_HEADER, WINDOW_HEADER, ShuffleParams, Shuffler, partition_key
from udfs.registry import ParamError


def records(n: int, start: int = 0) -> list[tuple]:
    return [(f"k{i}", "{}", json.dumps({"id": i, "zip": f"9{i:04d}", "age": 20 + i % 50}))
            for i in range(start, start + n)]


def entries(recs: list[tuple], entered: int = 0) -> list[tuple]:
    return [(r, entered) for r in recs]


def values(recs) -> list[dict]:
    return [json.loads(r[2]) for r in recs]


PARAMS = ShuffleParams.from_policy({"columns": ["zip", "age"], "window": 20, "min_size": 5})


def test_when_a_window_closes_then_each_column_keeps_its_multiset():
    recs = records(20)
    shuffled, suppressed, held = Shuffler(PARAMS).close(entries(recs), now_ms=0)
    assert not suppressed and not held and len(shuffled) == 20
    for column in ("id", "zip", "age"):
        assert Counter(v[column] for v in values(shuffled)) == Counter(v[column] for v in values(recs))


def test_a_windows_released_records_share_one_window_id_that_the_next_window_does_not():
    core = Shuffler(PARAMS)
    first, second = (core.close(entries(records(20, start)), now_ms=0)[0] for start in (0, 20))
    ids = [{json.loads(r[1])[WINDOW_HEADER] for r in window} for window in (first, second)]
    assert len(ids[0]) == 1 and len(ids[1]) == 1 and ids[0] != ids[1]
    assert all(set(json.loads(r[1])) == {WINDOW_HEADER} for r in first)  # nothing else is added

def test_associations_between_columns_and_records_are_broken_statistically():
    core, n, rounds = Shuffler(PARAMS), 20, 300
    kept_zip = kept_pair = 0
    for _ in range(rounds):
        out = values(core.close(entries(records(n)), now_ms=0)[0])
        kept_zip += sum(v["zip"] == f"9{v['id']:04d}" for v in out)
        kept_pair += sum(v["age"] == 20 + int(v["zip"][1:]) % 50 for v in out)
    # a uniform permutation keeps 1 fixed point on average per window: 300 expected of 6,000
    assert 200 < kept_zip < 420
    assert 200 < kept_pair < 420  # columns are permuted independently of each other too


def test_the_operator_is_not_deterministic():
    core = Shuffler(PARAMS)
    outputs = {json.dumps(values(core.close(entries(records(20)), now_ms=0)[0])) for _ in range(5)}
    assert len(outputs) > 1
    assert core.random.__class__.__name__ == "SystemRandom"


def test_a_record_without_a_column_keeps_lacking_it():
    recs = records(6) + [("k-x", "{}", json.dumps({"id": 99, "age": 1}))]
    out = values(Shuffler(PARAMS).close(entries(recs), now_ms=0)[0])
    assert sum("zip" not in v for v in out) == 1
    assert next(v for v in out if "zip" not in v)["id"] == 99


def test_when_a_window_is_below_min_size_then_suppressed_not_shuffled():
    recs = records(4)
    shuffled, suppressed, held = Shuffler(PARAMS).close(entries(recs), now_ms=0)
    assert shuffled == [] and held == []
    assert [r[2] for r in suppressed] == [r[2] for r in recs]
    assert all(json.loads(r[1])[SUPPRESSED_HEADER] == "window too small" for r in suppressed)


def test_when_hold_is_chosen_then_a_small_window_joins_the_next_and_expires_past_max_hold():
    params = ShuffleParams.from_policy({"columns": ["zip"], "window": 10, "min_size": 5,
                                        "small_window": "hold", "max_hold": "1m"})
    core = Shuffler(params, random=random.Random(0))
    shuffled, suppressed, held = core.close(entries(records(3), entered=0), now_ms=1_000)
    assert shuffled == [] and suppressed == [] and len(held) == 3
    # the next window releases the held records with the new ones
    shuffled, suppressed, held = core.close(held + entries(records(4, start=3), entered=2_000), now_ms=3_000)
    assert len(shuffled) == 7 and not suppressed and not held
    # held past max_hold: suppressed, never released unshuffled
    shuffled, suppressed, held = core.close(entries(records(2), entered=0), now_ms=61_000)
    assert shuffled == [] and len(suppressed) == 2 and held == []
    assert json.loads(suppressed[0][1])[SUPPRESSED_HEADER] == "held too long"


def test_partition_by_keys_windows_by_the_field_value():
    params = ShuffleParams.from_policy({"columns": ["zip"], "window": "30s", "partition_by": "region"})
    key = partition_key
    assert key(params, '{"region": "eu", "zip": "1"}') == key(params, '{"zip": "2", "region": "eu"}')
    assert key(params, '{"region": "us"}') != key(params, '{"region": "eu"}')
    assert params.window_ms == 30_000 and params.count is None


@pytest.mark.parametrize(("block", "param"), [
    ({"columns": [], "window": 10}, "columns"),  # nothing to shuffle
    ({"columns": ["zip"]}, "window"),  # no window
    ({"columns": ["zip"], "window": 1}, "window"),  # a window of one
    ({"columns": ["zip"], "window": 10, "min_size": 1}, "min_size"),  # one record is not shuffled
    ({"columns": ["zip"], "window": 10, "min_size": 11}, "min_size"),  # never reachable
    ({"columns": ["zip"], "window": 10, "small_window": "release"}, "small_window"),  # would leak
    ({"columns": ["zip"], "window": "1m", "timeout": "10s"}, "timeout"),  # time windows need none
    ({"columns": ["zip"], "window": "1h", "state_ttl": "1m"}, "state_ttl"),  # state gone before the window
    ({"columns": ["zip"], "window": 10, "colums": ["x"]}, "colums"),  # typo
])
def test_when_the_block_is_wrong_then_refused_naming_the_key(block, param):
    with pytest.raises(ParamError) as exc:
        ShuffleParams.from_policy(block)
    assert exc.value.param == param


def test_when_the_input_ends_then_a_held_window_is_suppressed_not_kept_forever():
    params = ShuffleParams.from_policy({"columns": ["zip"], "window": 10, "min_size": 5,
                                        "small_window": "hold", "max_hold": "1m"})
    shuffled, suppressed, held = Shuffler(params).close(entries(records(3)), now_ms=1_000, final=True)
    assert shuffled == [] and held == [] and len(suppressed) == 3
    assert {json.loads(r[1])[SUPPRESSED_HEADER] for r in suppressed} == {"end of input"}


@pytest.mark.parametrize("small_window", ["suppress", "hold"])  # either choice releases a big enough last window
def test_when_the_input_ends_then_a_last_window_of_min_size_is_shuffled_and_released(small_window):
    params = ShuffleParams.from_policy({"columns": ["zip"], "window": 10, "min_size": 5, "small_window": small_window})
    recs = records(6)
    shuffled, suppressed, held = Shuffler(params).close(entries(recs), now_ms=0, final=True)
    assert len(shuffled) == 6 and not suppressed and not held
    assert Counter(v["zip"] for v in values(shuffled)) == Counter(v["zip"] for v in values(recs))


@pytest.mark.parametrize(("block", "param"), [
    ({"columns": ["zip"], "window": "0s"}, "window"),  # a time window of zero never holds anything
    ({"columns": ["zip"], "window": "0ms"}, "window"),
    ({"columns": ["zip"], "window": 0}, "window"),  # a count window of zero
    ({"columns": ["zip"], "window": -5}, "window"),  # a negative count window
    ({"columns": ["zip"], "window": 10, "timeout": "0s"}, "timeout"),  # a count window closed at once
    ({"columns": ["zip"], "window": 10, "timeout": -1}, "timeout"),  # negative seconds
    ({"columns": ["zip"], "window": 10, "small_window": "hold", "max_hold": "0s"}, "max_hold"),
    ({"columns": ["zip"], "window": 10, "small_window": "hold", "max_hold": -30}, "max_hold"),
    ({"columns": ["zip"], "window": 10, "state_ttl": "0s"}, "state_ttl"),
    ({"columns": ["zip"], "window": 10, "state_ttl": -3600}, "state_ttl"),
])
def test_when_a_window_or_timeout_is_zero_or_negative_then_refused_naming_it(block, param):
    with pytest.raises(ParamError) as exc:
        ShuffleParams.from_policy(block)
    assert exc.value.param == param
    assert exc.value.problem in ("must be longer than 0", "a count window needs at least 2 records")


@pytest.mark.parametrize(("fields", "param"), [
    ({"window_ms": 0}, "window"),
    ({"window_ms": -1}, "window"),
    ({"count": 10, "timeout_ms": 0}, "timeout"),
    ({"count": 10, "max_hold_ms": -1, "small_window": "hold"}, "max_hold"),
])
def test_when_built_directly_with_a_non_positive_duration_then_refused(fields, param):
    with pytest.raises(ParamError) as exc:
        ShuffleParams(columns=("zip",), **fields)
    assert exc.value.param == param and exc.value.problem == "must be longer than 0"


@pytest.mark.parametrize(("text", "ms"), [
    ("500ms", 500),  # milliseconds
    ("30s", 30_000),  # seconds
    ("2m", 120_000),  # minutes
    (3, 3_000),  # a bare integer is seconds
])
def test_durations_are_read_in_milliseconds(text, ms):
    from operators.shuffle import parse_duration

    assert parse_duration(text, "timeout") == ms


def test_the_operator_module_does_not_import_the_dp_stack():
    # diffprivlib pulls in scipy's pybind11 modules, which can deadlock a PyFlink thread-mode worker
    import subprocess
    import sys

    code = "import sys, operators.shuffle; print('diffprivlib' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2])).stdout
    assert out.split() == ["False", "False"]
