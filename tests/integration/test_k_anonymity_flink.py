"""MiniCluster runs of the k-anonymity cascade: state, timers, side outputs and the end-of-input flush.

A skewed synthetic stream (one subject with many records, many rare combinations)
goes through :func:`operators.k_anonymity.attach`; the independent checker then
proves k on the released records, every input comes out exactly once (released or
suppressed), and no record waits much longer than ``max_delay``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from flink_jobs.report import risk
from operators.k_anonymity import KAnonymityParams, extract_quasi_identifiers
from tests.integration import restart
from tests.support.kanon_checker import assert_accounted, assert_k_anonymous

pytestmark = pytest.mark.integration

K = 4
MAX_DELAY_MS = 1000
SLACK_MS = 1000  # timer firing, bundle flushing and a shared 2-core machine
WARM_UP_S = 4.0
CHECKPOINT_MS = 500
FIELDS = {"customerId": "keep", "id": "keep", "band": "keep"}
BLOCK = {
    "k": K,
    "quasi_identifiers": {
        "age": {"hierarchy": [{"range": 5}, {"range": 10}, {"range": 20}, "*"]},
        "zip": {"paths": ["zip", "address.zip"], "hierarchy": [{"truncate": 4}, {"truncate": 3}, {"truncate": 2}, "*"]},
        "location": {"lat_field": "lat", "lon_field": "lon", "hierarchy": [{"geohash": 5}, {"geohash": 4}, {"geohash": 3}, "*"]},
    },
    "max_delay": f"{MAX_DELAY_MS}ms",
    "state_ttl": "1m",
}


def synthetic(n: int, seed: int) -> list[tuple]:
    """The job's k-anonymity tuples: (key, headers, value without QIs, subject, raw QIs JSON, event ms)."""
    rng = random.Random(seed)
    params = KAnonymityParams.from_policy(BLOCK, FIELDS)
    out = []
    for i in range(n):
        subject = "whale" if rng.random() < 0.1 else f"c{rng.randrange(300)}"  # one subject with many records
        if rng.random() < 0.3:  # rare combinations
            raw = {"age": rng.randrange(18, 90), "zip": f"{rng.randrange(10**5):05d}",
                   "lat": rng.uniform(25, 49), "lon": rng.uniform(-125, -67)}
        else:
            raw = {"age": rng.choice([23, 34, 36, 52]), "lat": 37.7749 + rng.random() / 50, "lon": -122.4194}
            zip_code = rng.choice(["94102", "94110", "94103"])
            if rng.random() < 0.5:  # the sample data has zip top-level or under address
                raw["zip"] = zip_code
            else:
                raw["address"] = {"zip": zip_code}
        qis = extract_quasi_identifiers(params, raw)
        value = {"id": str(i), "customerId": subject, "band": rng.choice("ab")}
        key = None if i % 5 == 0 else f"k{i}"
        out.append((key, json.dumps({"source": "test"}), json.dumps(value), subject, json.dumps(qis), 1_700_000_000_000 + i * 5))
    return out


def run(records: list[tuple], block: dict, parallelism: int, pace_ms: float) -> list[tuple]:
    from pyflink.common import Duration, Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner
    from pyflink.datastream import StreamExecutionEnvironment

    from operators.k_anonymity import attach

    # latency tuning as in the job: small bundles, or a record waits for its bundle to fill
    env = StreamExecutionEnvironment.get_execution_environment(restart.thread_mode_config(small_bundles=True))
    env.set_parallelism(parallelism)
    # as in the job: every state of the cascade must snapshot in thread mode
    env.enable_checkpointing(CHECKPOINT_MS)
    params = KAnonymityParams.from_policy(block, FIELDS)
    in_type = Types.TUPLE([Types.STRING()] * 5 + [Types.LONG()])
    out_type = Types.TUPLE([Types.STRING()] * 4)

    started = []

    def paced(record):
        if not started:
            # downstream tasks start their Python interpreters after this one: let them, or the
            # first records would wait for the job to come up, which is not the operator's doing
            started.append(True)
            time.sleep(WARM_UP_S)
        # spread the input over a few seconds so processing-time deadlines fire mid-stream
        time.sleep(pace_ms / 1000)
        value = json.loads(record[2])
        value["t_in"] = int(time.time() * 1000)
        return (record[0], record[1], json.dumps(value), record[3], record[4], record[5])

    source = env.from_collection(records, type_info=in_type).set_parallelism(1)
    if params.timing == "event":
        class EventTime(TimestampAssigner):
            def extract_timestamp(self, value, record_timestamp):
                return value[5]

        strategy = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(50)).with_timestamp_assigner(EventTime())
        source = source.assign_timestamps_and_watermarks(strategy)
    stream = source.map(paced, output_type=in_type).name("pace").uid("pace")
    released, suppressed = attach(stream, params, view_name="anon")

    def tag(kind):
        def stamp(out):
            value = json.loads(out[2])
            value["t_out"] = int(time.time() * 1000)
            return (kind, out[0], out[1], json.dumps(value))
        return stamp

    both = released.map(tag("released"), output_type=out_type).union(suppressed.map(tag("suppressed"), output_type=out_type))
    with both.execute_and_collect("k-anonymity-test") as results:
        return [tuple(r) for r in results]


def risk_report(results, sensitive: str | None = None):
    """The risk report (``flink-anonymizer risk``) of both outputs, read as a recipient reads them: headers and value."""
    pairs = [(json.loads(r[2]), json.loads(r[3])) for r in results]
    return risk.assess(pairs, ["age", "zip", "location"], "customerId", sensitive=sensitive)


def check(records, results, block, *, wait_bound: bool):
    released = [json.loads(r[3]) for r in results if r[0] == "released"]
    suppressed = [json.loads(r[3]) for r in results if r[0] == "suppressed"]
    report = assert_k_anonymous(released, ["age", "zip", "location"], "customerId", block["k"])
    # the product's risk report agrees: k reached, suppressed records counted apart
    sensitive = block.get("l_diversity", {}).get("attribute")
    assessed = risk_report(results, sensitive)
    assert assessed.k >= block["k"] and assessed.records == len(released) and assessed.suppressed == len(suppressed)
    assert assessed.unique_share == 0.0 and assessed.highest_risk <= 1 / block["k"]
    if sensitive is not None:
        assert assessed.l_value >= block["l_diversity"]["l"]
    assert_accounted([json.loads(r[2])["id"] for r in records], [v["id"] for v in released], [v["id"] for v in suppressed])
    headers = [json.loads(r[2]) for r in results if r[0] == "released"]
    levels = sorted({h["k_level"] for h in headers})
    assert all(h["source"] == "test" for h in headers)
    assert {r[1] for r in results} >= {None}  # a record without a Kafka key keeps None
    waits = [v["t_out"] - v["t_in"] for v in released]
    if wait_bound:
        assert max(waits) <= MAX_DELAY_MS + SLACK_MS, f"longest wait {max(waits)} ms"
    print(f"released={len(released)} suppressed={len(suppressed)} classes={report.classes} "
          f"smallest={report.smallest_class} levels={levels} longest_wait_ms={max(waits)}")
    return levels


def test_processing_time_cascade_at_parallelism_1_is_k_anonymous_and_loses_nothing():
    records = synthetic(1500, seed=11)
    results = run(records, BLOCK, parallelism=1, pace_ms=2.0)
    levels = check(records, results, BLOCK, wait_bound=True)
    assert len(levels) >= 2  # the cascade did promote records, not only release at level 0


def test_event_time_cascade_at_parallelism_2_with_l_diversity_is_k_anonymous_and_loses_nothing():
    block = {**BLOCK, "timing": "event", "l_diversity": {"attribute": "band", "l": 2}}
    records = synthetic(1500, seed=12)
    results = run(records, block, parallelism=2, pace_ms=0.0)
    check(records, results, block, wait_bound=False)
    released = [json.loads(r[3]) for r in results if r[0] == "released"]
    assert_k_anonymous(released, ["age", "zip", "location"], "customerId", block["k"], sensitive="band", l_value=2)


def test_when_on_timeout_is_suppress_then_rare_records_reach_the_suppressed_output_only():
    block = {**BLOCK, "on_timeout": "suppress"}
    records = synthetic(300, seed=13)
    results = run(records, block, parallelism=1, pace_ms=0.0)
    check(records, results, block, wait_bound=False)
    suppressed = [(json.loads(r[2]), json.loads(r[3])) for r in results if r[0] == "suppressed"]
    assert suppressed, "rare combinations at k=4 must time out"
    headers, value = suppressed[0]
    assert headers["k_suppressed"] == "timeout" and "k_level" not in headers
    assert isinstance(value["age"], int)  # raw QIs: the suppressed output is as sensitive as the input


def _restart_run(records: list[tuple], out_dir: Path, checkpoints: Path, *, pace_ms: float, restore: str | None):
    """One run of the cascade into a FileSink, from a number sequence source (it checkpoints its position)."""
    from pyflink.common import Types

    from operators.k_anonymity import attach

    env = restart.checkpointing_env(checkpoints, restore, CHECKPOINT_MS)
    params = KAnonymityParams.from_policy(BLOCK, FIELDS)
    in_type = Types.TUPLE([Types.STRING()] * 5 + [Types.LONG()])
    stream = restart.paced_rows(env, records, in_type, pace_ms)
    released, suppressed = attach(stream, params, view_name="anon")

    def line(kind):
        return lambda out: json.dumps([kind, out[1], out[2]])

    both = (released.map(line("released"), output_type=Types.STRING()).uid("line-released")
            .union(suppressed.map(line("suppressed"), output_type=Types.STRING()).uid("line-suppressed")))
    both.sink_to(restart.file_sink(out_dir)).name("files").uid("files")
    return env


def test_a_restart_from_a_retained_checkpoint_loses_and_duplicates_no_buffered_record(tmp_path):
    records = synthetic(400, seed=14)
    out_dir, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    # stop mid-stream, once a few checkpoints hold buffered records (400 records take 6 s to read)
    first, latest = restart.stop_then_restore(
        lambda pace_ms, restore: _restart_run(records, out_dir, checkpoints, pace_ms=pace_ms, restore=restore),
        out_dir, checkpoints, "k-anonymity-restart", total=len(records),
    )
    lines = restart.committed_lines(out_dir)
    released = [json.loads(value) for kind, _headers, value in lines if kind == "released"]
    suppressed = [json.loads(value) for kind, _headers, value in lines if kind == "suppressed"]
    # every input exactly once across both runs: released or suppressed, none lost, none twice
    assert_accounted([json.loads(r[2])["id"] for r in records], [v["id"] for v in released], [v["id"] for v in suppressed])
    assert_k_anonymous(released, ["age", "zip", "location"], "customerId", K)
    print(f"first run committed {first}, restored from {latest.name}, total {len(lines)}")


@pytest.mark.parametrize(("timing", "number", "shares"), [("processing", 0, True), ("event", 0, False),
                                                          ("processing", 1, False)])
def test_only_a_first_stage_on_processing_time_lets_the_protect_operator_publish_for_it(timing, number, shares):
    # with timing: event a stage's watermark moves with the records it receives: a record published by
    # the protect operator instead would hold back the deadlines of the records buffered here
    from operators.k_anonymity.flink import _stage_function

    params = KAnonymityParams.from_policy({**BLOCK, "timing": timing}, FIELDS)
    stage = _stage_function(params, number, "view", "promote", "suppress", True, 0, shortcut_token="token")
    assert (stage.shortcut_token == "token") is shares


def test_a_first_stage_publishes_for_callers_in_its_own_thread_and_job_only():
    import threading

    from operators.k_anonymity.flink import _register_first_stage, _unregister_first_stage, released_shortcut

    class Stage:
        def publish_released(self, record, keys, now):
            return record

    stage, task = Stage(), (0, 0)
    key = _register_first_stage("token", "view", task, stage)
    try:
        assert released_shortcut("token", "view", task)("r", ("k",), 0) == "r"
        assert released_shortcut("another job", "view", task) is None and released_shortcut("token", "other", task) is None
        assert released_shortcut("token", "view", (0, 1)) is None  # a later attempt: this stage is an earlier run's
        found = []
        other = threading.Thread(target=lambda: found.append(released_shortcut("token", "view", task)))
        other.start()
        other.join()
        assert found == [None]  # another task's thread
    finally:
        _unregister_first_stage(key, stage)
    assert released_shortcut("token", "view", task) is None
