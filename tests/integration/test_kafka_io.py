"""The Kafka source/sink seam in a real MiniCluster job against a real broker, exactly-once."""

from __future__ import annotations

import json
import sys
import sysconfig
import time

import pytest

from flink_jobs.kafka_tools import consume, ensure_topics, produce_file
from tests.integration.kafka_fixture import kafka_broker  # noqa: F401

pytestmark = pytest.mark.integration

N_GOOD = 1000
MALFORMED = [
    '{"customerId": "c3", "email": "trunc',
    "not json at all ✓ ünïcödé",
    "   ",
    '["an", "array"]',
    '{"customerId": null, "x": 1}',
    "\t{ }\t",
]


def _is_json_object(value: str | None) -> bool:
    # Only for the checks. Functions the job runs are nested in it, so they are pickled by value:
    # a Python worker cannot import this module (pytest imports it as a top-level `test_kafka_io`).
    try:
        return isinstance(json.loads(value), dict)
    except (TypeError, ValueError):
        return False


def _pass_through_job(bootstrap: str, src: str, dst: str, dlq: str) -> None:
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    from flink_jobs.kafka_io import SINK_TYPE, add_connector_jars, kafka_sink, kafka_source

    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", sys.executable)
    # Thread mode embeds the base interpreter, which does not see the venv's site-packages.
    conf.set_string("python.pythonpath", sysconfig.get_paths()["purelib"])
    # With checkpointing on, Flink restarts a failing job forever; a broken test must fail, not hang.
    conf.set_string("restart-strategy.type", "none")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    env.enable_checkpointing(1000, CheckpointingMode.EXACTLY_ONCE)
    add_connector_jars(env)
    t_env = StreamTableEnvironment.create(env)

    raw = kafka_source(
        env, t_env, bootstrap=bootstrap, topic=src, group_id="kafka-io-test", start="earliest", read_committed=True, bounded=True
    )

    def add_header(rec):
        pos, key, value, ts = rec
        return key, json.dumps({"x-pass": "through", "x-source": pos, "x-ts": str(ts)}), value

    out = raw.map(add_header, output_type=SINK_TYPE).name("add-header").uid("add-header")
    sinks = t_env.create_statement_set()
    kafka_sink(
        t_env,
        out,
        bootstrap=bootstrap,
        topic=dst,
        delivery="exactly-once",
        transactional_id_prefix=f"kafka-io-test-{dst}",
        statement_set=sinks,
    )

    # A second sink in the same job and statement set: the values that are not JSON objects, at-least-once.
    def not_an_object(rec):
        try:
            return not isinstance(json.loads(rec[2]), dict)
        except (TypeError, ValueError):
            return True

    not_objects = raw.filter(not_an_object).name("pick-malformed").uid("pick-malformed")
    kafka_sink(
        t_env,
        not_objects.map(lambda rec: (rec[1], json.dumps({"reason": "not a JSON object"}), rec[2]), output_type=SINK_TYPE),
        bootstrap=bootstrap,
        topic=dlq,
        delivery="at-least-once",
        transactional_id_prefix="unused",
        statement_set=sinks,
    )
    sinks.attach_as_datastream()  # after the last sink, before execute: one job runs everything
    env.execute("kafka-io-pass-through")


def test_pass_through_exactly_once_keeps_keys_headers_and_malformed_bytes(tmp_path, kafka_broker):  # noqa: F811
    b = kafka_broker.bootstrap
    src, dst, dlq = "io-raw", "io-out", "io-raw.dlq"
    ensure_topics(b, [src, dst, dlq])
    good = [json.dumps({"customerId": f"c{i % 37}", "n": i, "email": f"p{i}@example.com"}) for i in range(N_GOOD)]
    lines = good[:500] + MALFORMED + good[500:]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert produce_file(b, src, path) == len(lines)
    sent = consume(b, src, timeout=30)
    assert len(sent) == len(lines)

    t0 = time.monotonic()
    _pass_through_job(b, src, dst, dlq)
    job_seconds = time.monotonic() - t0
    print(f"pass-through job over {len(lines)} records: {job_seconds:.1f} s")

    got = consume(b, dst, timeout=60, isolation="read_committed")
    assert len(got) == len(lines), f"{len(got)} records out for {len(lines)} in"
    # exactly once: every source position appears once, and in order (one partition each side)
    positions = [r.headers["x-source"] for r in got]
    assert positions == [f"{src}/0/{r.offset}" for r in sent]
    # values byte for byte, malformed ones included; keys kept (None where the line had none)
    assert [r.raw_value for r in got] == [s.raw_value for s in sent]
    assert [r.raw_key for r in got] == [s.raw_key for s in sent]
    assert got[500 + 1].raw_value == MALFORMED[1].encode()
    assert got[500 + 2].raw_value == b"   "
    assert all(r.headers["x-pass"] == "through" for r in got)
    assert [int(r.headers["x-ts"]) for r in got] == [s.timestamp for s in sent]
    # nothing beyond the committed records: an uncommitted read sees the same count minus markers
    assert len(consume(b, dst, timeout=30, isolation="read_uncommitted")) == len(lines)

    # the second sink of the same job got exactly the values that are not JSON objects
    bad = consume(b, dlq, timeout=30)
    expected_bad = [s for s in sent if not _is_json_object(s.value)]
    assert [r.raw_value for r in bad] == [s.raw_value for s in expected_bad]
    assert len(bad) == 4  # the truncated object, the text, the blanks and the array; "\t{ }\t" is an object
    assert all(r.headers == {"reason": "not a JSON object"} for r in bad)
