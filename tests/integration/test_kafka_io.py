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


def _pass_through_job(bootstrap: str, src: str, dst: str) -> None:
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    from flink_jobs.kafka_io import SINK_TYPE, add_connector_jars, kafka_sink, kafka_source

    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", sys.executable)
    # Thread mode embeds the base interpreter, which does not see the venv's site-packages.
    conf.set_string("python.pythonpath", sysconfig.get_paths()["purelib"])
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
    sinks = kafka_sink(
        t_env, out, bootstrap=bootstrap, topic=dst, delivery="exactly-once", transactional_id_prefix=f"kafka-io-test-{dst}"
    )
    sinks.attach_as_datastream()
    env.execute("kafka-io-pass-through")


def test_pass_through_exactly_once_keeps_keys_headers_and_malformed_bytes(tmp_path, kafka_broker):  # noqa: F811
    b = kafka_broker.bootstrap
    src, dst = "io-raw", "io-out"
    ensure_topics(b, [src, dst])
    good = [json.dumps({"customerId": f"c{i % 37}", "n": i, "email": f"p{i}@example.com"}) for i in range(N_GOOD)]
    lines = good[:500] + MALFORMED + good[500:]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert produce_file(b, src, path) == len(lines)
    sent = consume(b, src, timeout=30)
    assert len(sent) == len(lines)

    t0 = time.monotonic()
    _pass_through_job(b, src, dst)
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
