"""Debezium's change events as Avro through a real schema registry, end to end from real parts.

PostgreSQL (wal_level=logical), Kafka Connect with Debezium's PostgreSQL connector and Apicurio's
Avro converter for keys and values (both in Confluent's wire format, their schemas registered in the
real Apicurio Registry), the broker, and the job on ``source.format: debezium-avro``. Debezium snapshots
a seeded customers table, then streams an insert, an update and a delete (with its tombstone); three
records that are not Debezium's Avro (no wire format, an id the registry does not know, both under a
JSON key; a key under an unknown id) are produced beside them. Every change must reach every view,
protected, with no raw identifier from `before` or `after`, keyed by the row's Avro key under the view's
rules; the delete stays a delete and the tombstone a tombstone under the row's view key; the bad
records reach the dead letters with their reasons and their key and value bytes.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from flink_jobs.avro_format import RegistrySchemaStore, split_frame
from flink_jobs.devtools.cdc_demo import NEW, POLICY, SEED, start_chain
from flink_jobs.devtools.connect_worker import avro_converter
from flink_jobs.kafka_tools import consume
from flink_jobs.policy import PolicyError, compile_policy
from tests.integration.test_cdc_debezium import EXPECTED, start_cdc_job
from tests.support.leak_scan import record_pii_values
from tests.support.pg_fixture import postgres_server  # noqa: F401

pytestmark = pytest.mark.integration

#: the columns that identify a customer
IDENTIFYING = ("customer_id", "name", "email", "ssn", "phone")
UNKNOWN_ID = 2_000_000_000


@pytest.fixture
def avro_chain(postgres_server, kafka_broker, schema_registry):  # noqa: F811
    folder = Path(tempfile.mkdtemp(prefix="anon-cdc-avro-"))
    chain = start_chain(postgres_server, kafka_broker.bootstrap, folder, database="shop_cdc_avro",
                        prefix="cdcavro", converters=avro_converter(schema_registry.native_url))
    try:
        yield chain
    finally:
        chain.stop()


def _wait_for_subject(store: RegistrySchemaStore, subject: str, timeout: float = 90) -> tuple[int, dict]:
    # the converter registers the envelope with the connector's first event (the snapshot)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = store.latest(subject)
        if latest is not None:
            return latest
        time.sleep(1)
    raise AssertionError(f"the converter registered nothing under {subject} within {timeout:g} s")


def _policy_doc(topic: str, registry_url: str) -> dict:
    document = yaml.safe_load(POLICY.read_text())
    document["source"].update(topic=topic, format="debezium-avro", schema=registry_url)
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}"
    return document


def _decode(store: RegistrySchemaStore, value: bytes) -> dict:
    # a reader that knows only the registry: the writer schema by the id in the frame
    from fastavro import parse_schema, schemaless_reader

    sid, body = split_frame(value)
    schema = store.by_id(sid)
    assert schema is not None, f"id {sid} is not in the registry"
    return schemaless_reader(io.BytesIO(body), parse_schema(schema), None)


@pytest.mark.timeout(420)
def test_debezium_avro_changes_reach_every_view_protected_and_bad_bytes_are_dead_lettered(
        avro_chain, kafka_broker, schema_registry, keyring_ref, tmp_path):
    from confluent_kafka import Producer

    topic = avro_chain.topic
    store = RegistrySchemaStore(schema_registry.url)
    envelope_id, envelope = _wait_for_subject(store, f"{topic}-value")
    assert envelope["name"].endswith("Envelope")

    # policy checking reads the registered envelope: its paths are the row's columns
    bad_document = _policy_doc(topic, schema_registry.url)
    bad_document["views"]["support"]["fields"]["loyalty_tier"] = "keep"
    with pytest.raises(PolicyError) as caught:
        compile_policy(bad_document, file=str(POLICY))
    assert "views.support.fields.loyalty_tier: not in the source schema" in str(caught.value)

    unknown_frame = b"\x00" + UNKNOWN_ID.to_bytes(4, "big") + b"\x02\x41"
    # (key, value); the change topic is compacted: a record needs a key
    bad = [(b'{"id": 999}', b'{"op": "c"}'),   # a JSON key (still read), a value not in the wire format
           (b'{"id": 999}', unknown_frame),    # a value under an id the registry does not know
           (unknown_frame, b'{"op": "c"}')]    # a key under an unknown id: judged before its value
    assert store.by_id(UNKNOWN_ID) is None
    policy, job = start_cdc_job(_policy_doc(topic, schema_registry.url), tmp_path / "customers-cdc-avro.yaml",
                                kafka_broker.bootstrap, keyring_ref)
    try:
        producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
        failed = []
        for key, value in bad:
            producer.produce(topic, key=key, value=value,
                             on_delivery=lambda err, _msg: err is not None and failed.append(err))
        assert producer.flush(30) == 0 and not failed, failed
        avro_chain.changes()
        views: dict[str, list] = {}
        dead: list = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            views = {name: consume(kafka_broker.bootstrap, view.topic, timeout=5, isolation="read_uncommitted")
                     for name, view in policy.views.items()}
            dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=5, isolation="read_uncommitted")
            if all(len(records) >= EXPECTED for records in views.values()) and len(dead) >= len(bad):
                break
            time.sleep(2)
        raw = consume(kafka_broker.bootstrap, topic, timeout=5)
    finally:
        job.cancel().result()

    # Debezium wrote the scenario as Avro in Confluent's wire format, keys and values, under the registry's ids
    changes = [r for r in raw if (r.raw_key, r.raw_value) not in bad]
    events = [_decode(store, r.raw_value) if r.raw_value is not None else None for r in changes]
    raw_ops = [e["op"] if e else None for e in events]
    assert raw_ops == ["r"] * len(SEED) + ["c", "u", "d", None]
    assert {split_frame(r.raw_value)[0] for r in changes if r.raw_value is not None} == {envelope_id}
    key_id, key_schema = store.latest(f"{topic}-key")
    assert {split_frame(r.raw_key)[0] for r in changes} == {key_id} and key_schema["type"] == "record"
    row_ids = [_decode(store, r.raw_key)["id"] for r in changes]
    assert row_ids[len(SEED) + 2] == row_ids[len(SEED) + 3] == row_ids[1]  # the deleted row's delete and tombstone

    # the bad records, and nothing else, in the dead letters: reasons named, key and value bytes kept whole
    assert [r.headers["reason"] for r in dead] == ["not_avro: no Confluent magic byte and schema id",
                                                   f"unknown_schema_id {UNKNOWN_ID}",
                                                   f"bad_key unknown_schema_id {UNKNOWN_ID}"]
    assert [(r.raw_key, r.raw_value) for r in dead] == bad

    rows = [row for e in events if e for row in (e["before"], e["after"]) if row]
    secrets = record_pii_values(rows, IDENTIFYING)
    assert {SEED[0][0], SEED[1][2], NEW[1], "grace@navy.example.mil"} <= secrets
    for name, records in views.items():
        assert len(records) == EXPECTED, f"{name}: {len(records)} of {EXPECTED} changes"
        assert [json.loads(r.value)["op"] if r.value else None for r in records] == raw_ops, name
        for record in records:
            text = f"{record.key} {record.value}"
            leaked = sorted(s for s in secrets if s in text)
            assert not leaked, f"{name} holds {len(leaked)} raw identifier(s)"  # never print them
        for record, event in zip(records, events, strict=True):
            if event is None:
                continue
            value = json.loads(record.value)
            assert value["ts_ms"] == event["ts_ms"] and value["source"]["table"] == "customers"
            assert "query" not in value["source"]
        update = json.loads(records[len(SEED) + 1].value)
        assert update["before"]["customer_id"] == update["after"]["customer_id"]
        assert update["before"]["customer_id"].startswith("cus_")
        # the deleted row (the second seeded customer): snapshot read, delete and tombstone share one view key
        snapshot, delete, tombstone = records[1], records[len(SEED) + 2], records[len(SEED) + 3]
        assert json.loads(delete.value)["after"] is None and json.loads(delete.value)["before"] is not None
        assert tombstone.value is None
        assert snapshot.key == delete.key == tombstone.key and tombstone.key.startswith('{"id":"row_')
        # each view key is the row's Avro key under the view's rule: one per row, the raw id nowhere
        view_ids = [json.loads(r.key)["id"] for r in records]
        assert all(view_id.startswith("row_") for view_id in view_ids), name
        assert len(set(zip(row_ids, view_ids, strict=True))) == len(set(row_ids)) == len(set(view_ids)), name
    support = json.loads(views["support"][len(SEED) + 1].value)
    analytics = json.loads(views["analytics"][len(SEED) + 1].value)
    assert support["before"]["tier"] == "gold" and support["after"]["tier"] == "platinum"
    assert "*" in support["after"]["email"] and support["after"]["email"].endswith("@navy.example.mil")
    assert "email" not in analytics["after"] and analytics["after"]["zip"] == "100**"
