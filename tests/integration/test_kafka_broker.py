"""The local KRaft broker and the confluent-kafka helpers, against a real broker."""

from __future__ import annotations

import json
import time

import pytest

from flink_jobs import kafka_tools
from flink_jobs.cli import kafka as kafka_cli
from flink_jobs.devtools.kafka_broker import BrokerError, free_port, start_broker
from flink_jobs.kafka_tools import TopicsMissingError, UnreachableError, consume, ensure_topics, produce_file
from tests.integration.kafka_fixture import kafka_broker  # noqa: F401

pytestmark = pytest.mark.integration


def test_start_and_stop_a_second_broker(tmp_path):
    t0 = time.monotonic()
    broker = start_broker(tmp_path / "kafka", timeout=90)
    try:
        elapsed = time.monotonic() - t0
        print(f"broker ready in {elapsed:.1f} s at {broker.bootstrap}")
        assert broker.bootstrap.startswith("127.0.0.1:")
        kafka_tools.check_reachable(broker.bootstrap, timeout=10)
        assert (tmp_path / "kafka" / "server.properties").exists()
    finally:
        broker.stop()
    assert not broker.alive()
    with pytest.raises(UnreachableError):
        kafka_tools.check_reachable(broker.bootstrap, timeout=2)


def test_broker_refuses_a_taken_port(tmp_path, kafka_broker):  # noqa: F811
    with pytest.raises(BrokerError, match="already in use"):
        start_broker(tmp_path / "k2", port=kafka_broker.port, timeout=10)


def test_produce_consume_round_trip(tmp_path, kafka_broker):  # noqa: F811
    lines = [json.dumps({"customerId": f"c{i % 7}", "n": i}) for i in range(200)]
    malformed = ['{"customerId": "c1", "trunc', "not json at all ✓", "   ", '["an", "array"]', '{"customerId": 12}']
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines + malformed) + "\n\n", encoding="utf-8")

    assert produce_file(kafka_broker.bootstrap, "round-trip", path) == len(lines) + len(malformed)
    records = consume(kafka_broker.bootstrap, "round-trip", timeout=30)

    assert [r.raw_value for r in records] == [s.encode() for s in lines + malformed]
    assert [r.key for r in records[:200]] == [f"c{i % 7}" for i in range(200)]
    assert [r.key for r in records[200:]] == [None, None, None, None, "12"]
    assert [r.offset for r in records] == list(range(len(records)))
    assert all(r.timestamp > 0 and r.headers == {} for r in records)
    # n bounds the read
    assert len(consume(kafka_broker.bootstrap, "round-trip", n=10, timeout=10)) == 10


def test_unreachable_address_fails_fast_with_a_clear_message():
    dead = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(UnreachableError) as err:
        kafka_tools.check_reachable(dead, timeout=3)
    elapsed = time.monotonic() - t0
    assert elapsed < 10
    msg = str(err.value)
    assert f"cannot reach Kafka at {dead} within 3 s" in msg
    assert "make kafka-up" in msg and "--bootstrap-servers" in msg
    # the other entry points give the same error rather than hang
    with pytest.raises(UnreachableError):
        ensure_topics(dead, ["x"], timeout=3)


def test_ensure_topics_create_false_names_the_missing_topic(kafka_broker):  # noqa: F811
    with pytest.raises(TopicsMissingError) as err:
        ensure_topics(kafka_broker.bootstrap, ["no-such-topic-a", "no-such-topic-b"], create=False)
    assert "no-such-topic-a" in str(err.value) and "no-such-topic-b" in str(err.value)
    assert err.value.missing == ["no-such-topic-a", "no-such-topic-b"]

    created = ensure_topics(kafka_broker.bootstrap, ["made-here"], partitions=3)
    assert created == ["made-here"]
    assert ensure_topics(kafka_broker.bootstrap, ["made-here"], create=False) == []  # now present


def test_cli_produce_and_consume(tmp_path, kafka_broker, capsys):  # noqa: F811
    path = tmp_path / "cli.jsonl"
    path.write_text('{"customerId": "a", "v": 1}\nbroken {\n', encoding="utf-8")
    b = kafka_broker.bootstrap
    assert kafka_cli.main(["produce", str(path), "--topic", "cli-topic", "--bootstrap-servers", b]) == 0
    capsys.readouterr()
    assert kafka_cli.main(["consume", "--topic", "cli-topic", "-n", "10", "--bootstrap-servers", b, "--timeout", "3"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["key"], o["value"]) for o in out] == [("a", {"customerId": "a", "v": 1}), (None, "broken {")]
    assert kafka_cli.main(["consume", "--topic", "nope", "--bootstrap-servers", b]) == 1
    assert "missing Kafka topic" in capsys.readouterr().err


def test_a_broker_that_cannot_start_reports_its_log(tmp_path):
    # A data folder formatted for another node: the JVM starts, the broker refuses it and exits,
    # and the error carries the end of its log instead of a bare timeout.
    data = tmp_path / "kafka" / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("version=1\ncluster.id=5L6g3nShT-eMCtK--X86sw\nnode.id=7\n")
    t0 = time.monotonic()
    with pytest.raises(BrokerError) as err:
        start_broker(tmp_path / "kafka", timeout=60)
    assert time.monotonic() - t0 < 60
    msg = str(err.value)
    assert "exited" in msg and "broker.log" in msg
    assert "node" in msg.lower()
