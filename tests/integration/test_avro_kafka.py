"""Avro through a real broker: Confluent-framed records in, an Avro view and a JSON view out, bad bytes dead-lettered.

The file seam (test_avro_registry.py runs the registry's): the schemas are files, the source's
``conf/schemas/customer-event.avsc`` and the view's, written by ``flink-anonymizer avro-schemas``.
The reader of the Avro view knows only those files: it finds each record's schema by the id in its header.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import yaml

from flink_jobs.avro_format import encode, schema_id, split_frame
from flink_jobs.cli.avro import write_view_schemas
from flink_jobs.cli.startup_watch import local_rest_config
from flink_jobs.kafka_job import build_kafka_job, prepare_topics
from flink_jobs.kafka_tools import consume, ensure_topics
from flink_jobs.policy import compile_policy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events-avro.yaml"
SCHEMA = ROOT / "conf/schemas/customer-event.avsc"
N = 200


def _sample_records() -> list[dict]:
    """The first N sample events that fit the schema (the sample's malformed lines do not)."""
    from fastavro import parse_schema
    from fastavro.validation import validate

    parsed = parse_schema(json.loads(SCHEMA.read_text()))
    names = {f["name"] for f in json.loads(SCHEMA.read_text())["fields"]}
    out = []
    for line in SAMPLE.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        record = {k: v for k, v in event.items() if k in names}
        if validate(record, parsed, raise_errors=False):
            out.append(record)
        if len(out) == N:
            return out
    return out


def produce_and_run(bootstrap: str, topic: str, values: list[bytes], policy, keyring_ref: str,
                    keys: list[bytes | None] | None = None) -> None:
    """Produce ``values`` (under ``keys``) to ``topic``, then run the policy's job, bounded, to the end of what is there."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in zip(keys or [None] * len(values), values, strict=True):
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0
    prepare_topics(bootstrap, policy, create=True)
    _, rest = local_rest_config()
    env = build_kafka_job(policy, keyring_ref, bootstrap=bootstrap, delivery="exactly-once",
                          bounded=True, checkpoint_interval_ms=1000, restart_attempts=0, config=rest,
                          group_id=f"avro-{time.time_ns()}")
    env.execute(f"avro-{topic}")


@pytest.mark.timeout(300)
def test_avro_records_in_avro_and_json_views_out_and_bad_bytes_dead_lettered(kafka_broker, keyring_ref, tmp_path):
    from fastavro import parse_schema, schemaless_reader

    topic = "avro-sample"
    document = yaml.safe_load(POLICY.read_text())
    document["source"]["topic"] = topic
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}"
    policy = compile_policy(document, file=str(POLICY))
    ensure_topics(kafka_broker.bootstrap, [topic])
    schema = json.loads(SCHEMA.read_text())
    sid, parsed = schema_id(schema), parse_schema(schema)
    records = _sample_records()
    good = [encode(r, sid, parsed) for r in records]
    bad = [b'{"customerId": "CUST1"}',                  # JSON, not the wire format
           b"\x00\x00\x00\x00\x2a\x02\x41",             # an id nobody registered
           encode(records[0], sid, parsed)[:9]]         # a body cut short: it does not match its schema
    produce_and_run(kafka_broker.bootstrap, topic, good[:100] + bad + good[100:], policy, keyring_ref)

    # the reader of the Avro view knows only the schema files, and finds each record's by its id
    files = {s: json.loads(p.read_text()) for _, s, p in write_view_schemas(policy, tmp_path / "schemas")}
    masked = []
    for record in consume(kafka_broker.bootstrap, policy.views["masked"].topic, timeout=20):
        view_id, body = split_frame(record.raw_value)
        masked.append(schemaless_reader(io.BytesIO(body), parse_schema(files[view_id]), None))
    support = [r.json() for r in consume(kafka_broker.bootstrap, policy.views["support"].topic, timeout=20)]
    dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=20)

    assert len(masked) == len(support) == N
    raw_ids = {r["customerId"] for r in records}
    for view in (masked, support):
        assert not raw_ids & {r["customerId"] for r in view}
        assert all(r["customerId"].startswith("cus_") for r in view)
    assert [m["customerId"] for m in masked] == [s["customerId"] for s in support]
    assert all(isinstance(m["age"], str) and "-" in m["age"] for m in masked if m["age"] is not None)
    assert all("lat" not in m and "notes" not in m for m in masked)
    reasons = [r.headers["reason"].split()[0] for r in dead]
    assert reasons == ["not_avro:", "unknown_schema_id", "schema_mismatch:"]
    assert [r.raw_value for r in dead] == bad  # the raw bytes, kept whole
