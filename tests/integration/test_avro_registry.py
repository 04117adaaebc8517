"""Avro through a real broker and a real Confluent-compatible schema registry (Apicurio Registry).

The producer registers the source's schema under ``<source topic>-value`` and frames its records
with the registry's id; the job (``source.schema`` set to the registry's URL, as ``--schema-registry``
does) reads each record's writer schema by that id, and every view registers its own schema under
``<view topic>-value``. The views' reader knows only the registry's URL.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import yaml

from flink_jobs.avro_format import RegistrySchemaStore, RegistryUnavailable, encode, split_frame
from flink_jobs.devtools.processes import free_port
from flink_jobs.kafka_tools import consume, ensure_topics
from flink_jobs.policy import PolicyError, compile_policy
from tests.integration.test_avro_kafka import SCHEMA, _sample_records, produce_and_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "conf/policies/customer-events-avro.yaml"


def _policy_doc(topic: str, registry_url: str) -> dict:
    """The Avro policy on fresh topics, every view's sink Avro, its schemas in the registry."""
    document = yaml.safe_load(POLICY.read_text())
    document["source"]["topic"] = topic
    document["source"]["schema"] = registry_url
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}"
        view["sink"]["format"] = "avro"
    return document


@pytest.mark.timeout(120)
def test_the_registry_store_registers_fetches_and_says_what_it_does_not_know(schema_registry):
    store = RegistrySchemaStore(schema_registry.url)
    schema = {"type": "record", "name": "Probe", "fields": [{"name": "x", "type": "int"}]}
    sid = store.register("probe-value", schema)
    assert store.register("probe-value", schema) == sid          # the same schema keeps its id
    assert RegistrySchemaStore(schema_registry.url).by_id(sid) == schema  # fetched, not cached
    assert store.latest("probe-value") == (sid, schema)
    assert store.latest("nobody-registered-this-value") is None
    assert store.by_id(2_000_000_000) is None
    with pytest.raises(RegistryUnavailable):  # nothing listens there: the job fails, no record is dead-lettered
        RegistrySchemaStore(f"http://127.0.0.1:{free_port()}/apis/ccompat/v6", timeout=5).by_id(1)


@pytest.mark.timeout(60)
def test_a_policy_whose_source_subject_is_not_registered_is_refused(schema_registry):
    document = _policy_doc(f"unregistered-{time.time_ns()}", schema_registry.url)
    with pytest.raises(PolicyError) as caught:
        compile_policy(document, file=str(POLICY))
    assert f"no schema registered under {document['source']['topic']}-value" in str(caught.value)


@pytest.mark.timeout(300)
def test_avro_in_every_view_out_under_its_registered_schema_and_bad_records_dead_lettered(
        kafka_broker, schema_registry, keyring_ref):
    from fastavro import parse_schema, schemaless_reader

    topic = f"avro-registry-{time.time_ns()}"
    # the producer: registers the source's schema, frames each record with the registry's id
    producer_store = RegistrySchemaStore(schema_registry.url)
    schema = json.loads(SCHEMA.read_text())
    sid, parsed = producer_store.register(f"{topic}-value", schema), parse_schema(schema)
    records = _sample_records()
    good = [encode(r, sid, parsed) for r in records]
    unknown_id = 2_000_000_000
    assert producer_store.by_id(unknown_id) is None
    bad = [b'{"customerId": "CUST1"}',                              # JSON, not the wire format
           b"\x00" + unknown_id.to_bytes(4, "big") + b"\x02\x41",   # an id the registry does not know
           encode(records[0], sid, parsed)[:9]]                     # cut short: does not match its schema

    policy = compile_policy(_policy_doc(topic, schema_registry.url), file=str(POLICY))
    ensure_topics(kafka_broker.bootstrap, [topic])
    produce_and_run(kafka_broker.bootstrap, topic, good[:100] + bad + good[100:], policy, keyring_ref)

    # the reader knows only the registry's URL: each record's schema is fetched by the id in its header
    reader = RegistrySchemaStore(schema_registry.url)
    views: dict[str, list[dict]] = {}
    ids: dict[str, set[int]] = {}
    for name, view in policy.views.items():
        for record in consume(kafka_broker.bootstrap, view.topic, timeout=20):
            view_id, body = split_frame(record.raw_value)
            ids.setdefault(name, set()).add(view_id)
            writer = reader.by_id(view_id)
            assert writer is not None, f"view {name}: id {view_id} not in the registry"
            views.setdefault(name, []).append(schemaless_reader(io.BytesIO(body), parse_schema(writer), None))
    dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=20)

    assert set(views) == {"masked", "support"} and all(len(v) == len(records) for v in views.values())
    for name, view in policy.views.items():
        # one schema per view, registered under its own subject, and not the source's
        latest = reader.latest(f"{view.topic}-value")
        assert latest is not None and ids[name] == {latest[0]} and latest[0] != sid
        assert {f["name"] for f in latest[1]["fields"]} == set(views[name][0])
    assert ids["masked"] != ids["support"]
    raw_ids = {r["customerId"] for r in records}
    for view in views.values():
        assert not raw_ids & {r["customerId"] for r in view}
        assert all(r["customerId"].startswith("cus_") for r in view)
    assert [m["customerId"] for m in views["masked"]] == [s["customerId"] for s in views["support"]]
    assert set(views["support"][0]) == {"customerId", "email", "region", "timestamp"}
    assert all(isinstance(m["age"], str) and "-" in m["age"] for m in views["masked"] if m["age"] is not None)
    reasons = [r.headers["reason"] for r in dead]
    assert [r.split()[0] for r in reasons] == ["not_avro:", "unknown_schema_id", "schema_mismatch:"]
    assert reasons[1] == f"unknown_schema_id {unknown_id}"
    assert [r.raw_value for r in dead] == bad  # the raw bytes, kept whole


@pytest.mark.timeout(120)
def test_avro_schemas_with_schema_registry_registers_each_views_schema(schema_registry, tmp_path, capsys):
    from flink_jobs.cli import main

    document = yaml.safe_load(POLICY.read_text())
    store = RegistrySchemaStore(schema_registry.url)
    store.register(f"{document['source']['topic']}-value", json.loads(SCHEMA.read_text()))
    assert main(["avro-schemas", "--policy", str(POLICY), "--schema-registry", schema_registry.url,
                 "--out", str(tmp_path)]) == 0
    subject = f"{document['views']['masked']['sink']['topic']}-value"
    sid, registered = store.latest(subject)
    assert json.loads((tmp_path / f"{subject}.avsc").read_text()) == registered
    assert f"view masked: schema id {sid} " in capsys.readouterr().out
    assert store.latest(f"{document['views']['support']['sink']['topic']}-value") is None  # a JSON view has none
