"""Avro keys beside Avro values, through a real broker and the real Apicurio Registry.

The producer registers a key schema under ``<topic>-key`` and the value schema under ``<topic>-value``
and frames both with the registry's ids, as Kafka Connect does with its Avro converter for keys and
values; some records keep a plain text key, as before. The job decodes each Avro key through the same
registry as the values. Each view is keyed by its own protected subject, never by the raw key, and no
raw customer id is in any view; a key that starts with the magic byte but cannot be read (an unknown
id, a frame cut short) sends its record to the dead letters, its key and value bytes kept whole.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import yaml

from flink_jobs.avro_format import RegistrySchemaStore, encode, split_frame
from flink_jobs.kafka_tools import consume, ensure_topics
from flink_jobs.policy import compile_policy
from tests.integration.test_avro_kafka import SCHEMA, _sample_records, produce_and_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "conf/policies/customer-events-avro.yaml"
KEY_SCHEMA = {"type": "record", "name": "CustomerKey", "namespace": "shop",
              "fields": [{"name": "customerId", "type": "string"}]}
UNKNOWN_ID = 2_000_000_000


@pytest.mark.timeout(300)
def test_avro_keys_are_read_through_the_registry_views_keyed_by_their_own_subject_and_bad_keys_dead_lettered(
        kafka_broker, schema_registry, keyring_ref):
    from fastavro import parse_schema, schemaless_reader

    topic = f"avro-keys-{time.time_ns()}"
    producer_store = RegistrySchemaStore(schema_registry.url)
    key_id = producer_store.register(f"{topic}-key", KEY_SCHEMA)
    value_id = producer_store.register(f"{topic}-value", json.loads(SCHEMA.read_text()))
    key_parsed, value_parsed = parse_schema(KEY_SCHEMA), parse_schema(json.loads(SCHEMA.read_text()))
    records = _sample_records()
    values = [encode(r, value_id, value_parsed) for r in records]
    # every other record keeps a text key: both kinds are read
    keys = [encode({"customerId": r["customerId"]}, key_id, key_parsed) if i % 2 == 0 else r["customerId"].encode()
            for i, r in enumerate(records)]
    assert producer_store.by_id(UNKNOWN_ID) is None
    bad = [(b"\x00" + UNKNOWN_ID.to_bytes(4, "big") + b"\x14CUST303148", values[0]),  # a key under an unknown id
           (keys[0][:7], values[0])]                                                  # an Avro key cut short

    document = yaml.safe_load(POLICY.read_text())
    document["source"].update(topic=topic, schema=schema_registry.url)
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}"
    policy = compile_policy(document, file=str(POLICY))
    ensure_topics(kafka_broker.bootstrap, [topic])
    produce_and_run(kafka_broker.bootstrap, topic, values[:100] + [v for _, v in bad] + values[100:], policy,
                    keyring_ref, keys=keys[:100] + [k for k, _ in bad] + keys[100:])

    # each view as (key, its record): the Avro view read through the registry, the JSON view as it is
    reader = RegistrySchemaStore(schema_registry.url)
    views: dict[str, list[tuple[str, dict]]] = {}
    texts: list[str] = []
    for name, view in policy.views.items():
        for record in consume(kafka_broker.bootstrap, view.topic, timeout=20):
            if document["views"][name]["sink"].get("format") == "avro":
                view_id, body = split_frame(record.raw_value)
                value = schemaless_reader(io.BytesIO(body), parse_schema(reader.by_id(view_id)), None)
            else:
                value = record.json()
            views.setdefault(name, []).append((record.key, value))
            texts.append(f"{record.key} {json.dumps(value)}")
    dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=20)

    assert set(views) == {"masked", "support"} and all(len(v) == len(records) for v in views.values())
    for name, keyed in views.items():
        # the view's own protected subject keys each record, whatever kind of key the raw record had
        assert all(key == value["customerId"] and key.startswith("cus_") for key, value in keyed), name
    assert [key for key, _ in views["masked"]] == [key for key, _ in views["support"]]
    raw_ids = {r["customerId"] for r in records}
    leaked = sorted(i for i in raw_ids if any(i in text for text in texts))
    assert not leaked, f"{len(leaked)} raw customer id(s) from the keys are in a view"  # never print them

    reasons = [r.headers["reason"] for r in dead]
    assert reasons[0] == f"bad_key unknown_schema_id {UNKNOWN_ID}"
    assert reasons[1].startswith("bad_key schema_mismatch:")
    assert [(r.raw_key, r.raw_value) for r in dead] == bad  # key and value bytes, kept whole
    assert not any("CUST" in reason for reason in reasons)
