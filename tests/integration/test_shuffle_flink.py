"""MiniCluster runs of the shuffle operator: keyed list state, count windows, the timeout timer,
the end-of-input flush and the suppressed side output, in STREAMING and in BATCH mode.

One streaming job runs the same input through two operators, one whose policy suppresses a
small window and one whose policy holds it back. The input pauses once, long past the
timeout, so a small window is closed by its timer before more records of its partition come.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from operators.shuffle import SUPPRESSED_HEADER, ShuffleParams, attach

pytestmark = pytest.mark.integration

#: how long the source stops, and the timeout that must fire meanwhile (4x slack for a loaded machine)
PAUSE_S, TIMEOUT = 8, "2s"
BASE = {"columns": ["zip"], "window": 10, "timeout": TIMEOUT, "min_size": 5, "partition_by": "region",
        "state_ttl": "1h"}
POLICIES = {"suppress": {**BASE, "small_window": "suppress"},
            "hold": {**BASE, "small_window": "hold", "max_hold": "10m"}}


def _record(region: str, i: int) -> tuple:
    return (f"{region}{i}", "{}", json.dumps({"region": region, "id": i, "zip": f"{region}-{i}"}))


#: in order: two full windows of a; 3 of b, then the pause; 6 more of b, 7 of c, then a's last 3
BEFORE = [_record("a", i) for i in range(20)] + [_record("b", i) for i in range(3)]
AFTER = ([_record("b", i) for i in range(3, 9)] + [_record("c", i) for i in range(7)]
         + [_record("a", i) for i in range(20, 23)])
PAUSE = ("pause", "{}", "{}")


def _run(records: list[tuple], policies: dict, *, batch: bool) -> dict[str, tuple[list, list]]:
    """Run ``records`` through one shuffle operator per policy; {name: (released values, (headers, value) suppressed)}."""
    from pyflink.common.typeinfo import Types

    from flink_jobs.protect_stream import JobOptions, make_env

    env = make_env(JobOptions(keyring_ref="", checkpoint_interval_ms=1000, bundle_size=1, bundle_time_ms=10,
                              batch=batch))
    rec_type = Types.TUPLE([Types.STRING()] * 3)
    pause_s = PAUSE_S

    def _pause(record: tuple) -> tuple:
        # nested, so it is pickled by value: the workers cannot import this test module
        if record[0] == "pause":
            time.sleep(pause_s)
        return record

    source = env.from_collection(records, type_info=rec_type).map(_pause, output_type=rec_type)
    source = source.filter(lambda r: r[0] != "pause")
    tagged_type = Types.TUPLE([Types.STRING()] * 4)
    outputs = []
    for name, block in policies.items():
        shuffled, suppressed = attach(source, ShuffleParams.from_policy(block), view_name=name)
        outputs.append(shuffled.map(lambda r, n=name: (f"{n}:shuffled", r[0], r[1], r[2]), output_type=tagged_type))
        outputs.append(suppressed.map(lambda r, n=name: (f"{n}:suppressed", r[0], r[1], r[2]),
                                      output_type=tagged_type))
    with outputs[0].union(*outputs[1:]).execute_and_collect() as results:
        rows = list(results)
    return {name: ([json.loads(r[3]) for r in rows if r[0] == f"{name}:shuffled"],
                   [(json.loads(r[2]), json.loads(r[3])) for r in rows if r[0] == f"{name}:suppressed"])
            for name in policies}


def _ids(values, region: str) -> set[int]:
    return {v["id"] for v in values if v["region"] == region}


def _assert_window_kept(released: list[dict], region: str, ids) -> None:
    """The records ``ids`` of ``region`` were shuffled among themselves: their zips are exactly theirs."""
    window = [v for v in released if v["region"] == region and v["id"] in set(ids)]
    assert Counter(v["zip"] for v in window) == Counter(f"{region}-{i}" for i in ids), (region, ids)


def _assert_balanced(records: list[tuple], released: list[dict], suppressed: list) -> None:
    """Every record comes out once, released or suppressed, and the zips as a multiset are unchanged."""
    sent = Counter((json.loads(r[2])["region"], json.loads(r[2])["id"]) for r in records if r[0] != "pause")
    out = Counter((v["region"], v["id"]) for v in released) + Counter((v["region"], v["id"]) for _, v in suppressed)
    assert out == sent
    zips_in = Counter(json.loads(r[2])["zip"] for r in records if r[0] != "pause")
    assert Counter(v["zip"] for v in released) + Counter(v["zip"] for _, v in suppressed) == zips_in


@pytest.fixture(scope="module")
def streaming() -> tuple[list, dict]:
    records = BEFORE + [PAUSE] + AFTER
    return records, _run(records, POLICIES, batch=False)


@pytest.mark.parametrize("policy", ["suppress", "hold"])  # a small window suppressed; held back
def test_streaming_keeps_each_windows_multiset_and_loses_no_record(streaming, policy):
    records, results = streaming
    released, suppressed = results[policy]
    _assert_balanced(records, released, suppressed)
    _assert_window_kept(released, "a", range(10))  # closed by count
    _assert_window_kept(released, "a", range(10, 20))  # closed by count
    _assert_window_kept(released, "c", range(7))  # closed at the end of input, above min_size
    # and the values did move: every record keeping its own zip in every window is vanishingly unlikely
    assert any(v["zip"] != f"{v['region']}-{v['id']}" for v in released)
    # a's last three never make a window of five: suppressed unshuffled at the end of input
    assert _ids(released, "a") == set(range(20))
    assert {(h[SUPPRESSED_HEADER], v["id"], v["zip"]) for h, v in suppressed if v["region"] == "a"} == {
        ("window too small" if policy == "suppress" else "end of input", i, f"a-{i}") for i in range(20, 23)}


def test_streaming_suppress_routes_a_timed_out_small_window_to_the_side_output(streaming):
    _, results = streaming
    released, suppressed = results["suppress"]
    # b's first three are alone when the timeout fires during the pause: suppressed, unshuffled
    assert {(h[SUPPRESSED_HEADER], v["id"], v["zip"]) for h, v in suppressed if v["region"] == "b"} == {
        ("window too small", i, f"b-{i}") for i in range(3)}
    # the six that come after the pause make a window of their own, closed at the end of input
    assert _ids(released, "b") == set(range(3, 9))
    _assert_window_kept(released, "b", range(3, 9))


def test_streaming_hold_carries_a_timed_out_small_window_into_the_next(streaming):
    _, results = streaming
    released, suppressed = results["hold"]
    # b's first three wait through the pause, then go out shuffled with the six after it
    assert not [v for _, v in suppressed if v["region"] == "b"]
    assert _ids(released, "b") == set(range(9))
    _assert_window_kept(released, "b", range(9))


@pytest.fixture(scope="module")
def batch() -> tuple[list, dict]:
    records = BEFORE + AFTER
    return records, _run(records, POLICIES, batch=True)


@pytest.mark.parametrize("policy", ["suppress", "hold"])  # a small window suppressed; held back
def test_batch_mode_keeps_each_partitions_multiset_and_closes_the_last_window(batch, policy):
    records, results = batch
    released, suppressed = results[policy]
    _assert_balanced(records, released, suppressed)
    # BATCH mode sorts a partition's records, so which ones share a count window is not fixed;
    # per partition: a's 23 make two windows of 10 and a last one of 3, b's 9 and c's 7 one each
    assert Counter(v["region"] for v in released) == {"a": 20, "b": 9, "c": 7}
    for region, n in (("a", 23), ("b", 9), ("c", 7)):
        zips = Counter(v["zip"] for v in released if v["region"] == region)
        zips += Counter(v["zip"] for _, v in suppressed if v["region"] == region)
        assert zips == Counter(f"{region}-{i}" for i in range(n))
    reason = "window too small" if policy == "suppress" else "end of input"
    assert [h[SUPPRESSED_HEADER] for h, v in suppressed] == [reason] * 3
    assert all(v["region"] == "a" and v["zip"] == f"a-{v['id']}" for _, v in suppressed)
