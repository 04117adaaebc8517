"""Change data capture end to end from real parts: PostgreSQL, Kafka Connect with Debezium, the broker, the job.

Debezium snapshots a seeded customers table, then streams an insert, an update and a delete (with
its tombstone). The job runs conf/policies/customers-cdc.yaml on the change topic; every change
must reach every view, with no raw identifier from `before` or `after` in any protected view, and
the delete must stay a delete and the tombstone a tombstone, under the same view key as the row's
earlier events.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from flink_jobs.cli.startup_watch import local_rest_config
from flink_jobs.devtools.cdc_demo import NEW, POLICY, SEED, start_chain
from flink_jobs.kafka_job import build_kafka_job, prepare_topics
from flink_jobs.kafka_tools import consume, ensure_topics
from flink_jobs.policy import compile_policy
from tests.support.pg_fixture import postgres_server  # noqa: F401

pytestmark = pytest.mark.integration

#: what Debezium writes for the scenario: a snapshot read per seeded row, then c, u, d and a tombstone
EXPECTED = len(SEED) + 4


@pytest.fixture
def cdc_chain(postgres_server, kafka_broker):  # noqa: F811
    folder = Path(tempfile.mkdtemp(prefix="anon-cdc-"))
    chain = start_chain(postgres_server, kafka_broker.bootstrap, folder, database="shop_cdc", prefix="cdctest")
    try:
        yield chain
    finally:
        chain.stop()


def start_cdc_job(document: dict, policy_file: Path, bootstrap: str, keyring_ref: str) -> tuple:
    """Write and compile the policy, create its compacted views, start the job: (policy, job client)."""
    policy_file.write_text(yaml.safe_dump(document))
    policy = compile_policy(document, file=str(policy_file))
    ensure_topics(bootstrap, [v.topic for v in policy.views.values()], config={"cleanup.policy": "compact"})
    prepare_topics(bootstrap, policy, create=True)
    _, rest = local_rest_config()
    env = build_kafka_job(policy, keyring_ref, bootstrap=bootstrap, delivery="at-least-once",
                          checkpoint_interval_ms=1000, restart_attempts=0, config=rest,
                          group_id=f"cdc-{time.time_ns()}")
    return policy, env.execute_async(f"cdc-{policy.document['source']['format']}")


def _raw_identifiers() -> set[str]:
    values = set()
    for row in [*SEED, NEW]:
        values.update(row[:5])  # customer id, name, email, ssn, phone
    values.add("grace@navy.example.mil")
    return values


@pytest.mark.timeout(360)
def test_debezium_changes_reach_every_view_protected_and_deletes_stay_deletes(cdc_chain, kafka_broker, keyring_ref,
                                                                              tmp_path, capsys):
    document = yaml.safe_load(POLICY.read_text())
    document["source"]["topic"] = cdc_chain.topic
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{cdc_chain.topic}.{name}"
    policy_file = tmp_path / "customers-cdc.yaml"
    policy, job = start_cdc_job(document, policy_file, kafka_broker.bootstrap, keyring_ref)
    try:
        cdc_chain.changes()
        views: dict[str, list] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            views = {name: consume(kafka_broker.bootstrap, view.topic, timeout=5, isolation="read_uncommitted")
                     for name, view in policy.views.items()}
            if all(len(records) >= EXPECTED for records in views.values()):
                break
            time.sleep(2)
        raw = consume(kafka_broker.bootstrap, cdc_chain.topic, timeout=5)
        dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=5)
    finally:
        job.cancel().result()

    # Debezium wrote the scenario: snapshot reads, then an insert, an update, a delete and a tombstone
    raw_ops = [json.loads(r.value)["op"] if r.value else None for r in raw]
    assert raw_ops == ["r"] * len(SEED) + ["c", "u", "d", None]
    assert not dead, [r.headers.get("reason") for r in dead]
    secrets = _raw_identifiers()
    for name, records in views.items():
        assert len(records) == EXPECTED, f"{name}: {len(records)} of {EXPECTED} changes"
        ops = [json.loads(r.value)["op"] if r.value else None for r in records]
        assert ops == raw_ops, name
        for record in records:
            text = f"{record.key} {record.value}"
            leaked = [s for s in secrets if s in text]
            assert not leaked, f"{name} holds raw identifiers {leaked}"
        update = json.loads(records[len(SEED) + 1].value)
        assert update["before"] is not None and update["after"] is not None
        assert update["before"]["customer_id"] == update["after"]["customer_id"]
        assert update["before"]["customer_id"].startswith("cus_")
        assert "query" not in update["source"] and update["source"]["table"] == "customers"
        # the deleted row (the second seeded customer): snapshot read, delete and tombstone share one view key
        snapshot, delete, tombstone = records[1], records[len(SEED) + 2], records[len(SEED) + 3]
        assert json.loads(delete.value)["after"] is None and json.loads(delete.value)["before"] is not None
        assert tombstone.value is None
        assert snapshot.key == delete.key == tombstone.key and tombstone.key.startswith('{"id":"row_')
    # the views differ by audience: support masks the email, analytics never has it
    support = json.loads(views["support"][0].value)["after"]
    analytics = json.loads(views["analytics"][0].value)["after"]
    assert support["email"].endswith("@example.com") and "*" in support["email"]
    assert "email" not in analytics and analytics["zip"].endswith("**")

    # forget the first customer: its row (snapshot read, then updated) is tombstoned in every compacted view
    from flink_jobs.cli import main

    assert main(["forget", SEED[0][0], "--policy", str(policy_file), "--keyring", keyring_ref,
                 "--vault", f"sqlite:{tmp_path / 'vault.db'}", "--bootstrap-servers", kafka_broker.bootstrap]) == 0
    out = capsys.readouterr().out
    assert SEED[0][0] not in out and out.count("tombstone written") == len(policy.views)
    for name, view in policy.views.items():
        after = consume(kafka_broker.bootstrap, view.topic, timeout=10, isolation="read_uncommitted")
        assert len(after) == EXPECTED + 1, name
        assert after[-1].value is None and after[-1].key == views[name][0].key  # the first seeded row's key
