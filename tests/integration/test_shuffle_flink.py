"""MiniCluster run of the shuffle operator: keyed list state, count windows, the timeout timer, the side output."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from operators.shuffle import SUPPRESSED_HEADER, ShuffleParams, attach

pytestmark = pytest.mark.integration

# the timeout is far beyond the run: windows close by count only, so the outcome is deterministic
# (timeout-driven closing and the end-of-input flush are open bugs, noted on issue 9)
BLOCK = {"columns": ["zip"], "window": 10, "timeout": "10m", "min_size": 5, "partition_by": "region",
         "state_ttl": "1h"}


def test_count_windows_shuffle_per_partition_and_a_small_window_is_never_released():
    from pyflink.common.typeinfo import Types

    from flink_jobs.protect_stream import JobOptions, make_env

    small = [(f"b{i}", "{}", json.dumps({"region": "b", "id": i, "zip": f"b-{i}"})) for i in range(3)]
    big = [(f"a{i}", "{}", json.dumps({"region": "a", "id": i, "zip": f"a-{i}", "last": i == 19}))
           for i in range(20)]
    env = make_env(JobOptions(keyring_ref="", checkpoint_interval_ms=1000, bundle_size=1, bundle_time_ms=10))
    rec_type = Types.TUPLE([Types.STRING()] * 3)
    stream = env.from_collection(small + big, type_info=rec_type)
    shuffled, suppressed = attach(stream, ShuffleParams.from_policy(BLOCK), view_name="test")
    tagged_type = Types.TUPLE([Types.STRING()] * 4)
    out = (shuffled.map(lambda r: ("shuffled", r[0], r[1], r[2]), output_type=tagged_type)
           .union(suppressed.map(lambda r: ("suppressed", r[0], r[1], r[2]), output_type=tagged_type)))
    with out.execute_and_collect() as results:
        rows = list(results)

    released = [json.loads(r[3]) for r in rows if r[0] == "shuffled"]
    dropped = [(json.loads(r[2]), json.loads(r[3])) for r in rows if r[0] == "suppressed"]
    # the two full windows of partition a are released, each keeping its multiset of zips
    assert len(released) == 20 and {v["region"] for v in released} == {"a"}
    assert Counter(v["zip"] for v in released) == Counter(f"a-{i}" for i in range(20))
    for window in (range(10), range(10, 20)):
        ids = {v["id"] for v in released if v["id"] in window}
        assert {v["zip"] for v in released if v["id"] in window} == {f"a-{i}" for i in ids}
    # partition b's three records never make a window of five: they must never be released
    assert not any(v["region"] == "b" for v in released)
    # whatever reaches the suppressed output is partition b's, unshuffled; that the timeout timer
    # routes it there is not asserted: not observed in this MiniCluster run, an open bug (issue 9)
    assert all(h[SUPPRESSED_HEADER] and v["region"] == "b" and v["zip"] == f"b-{v['id']}" for h, v in dropped)
