"""protect_stream on a real Kafka broker: accounting, leaks, order, exactly-once across a restart."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from flink_jobs import cli
from flink_jobs.kafka_job import build_kafka_job, prepare_topics
from flink_jobs.kafka_tools import consume, ensure_topics, produce_file
from flink_jobs.policy import compile_policy, load_policy
from tests.support.leak_scan import pii_values
from udfs.keyring import Keyring

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"


def _policy_on(topic: str, *, masked_only: bool = False):
    document = load_policy(POLICY).document
    document = json.loads(json.dumps(document))
    document["source"]["topic"] = topic
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}"
    if masked_only:
        document["views"] = {"masked": document["views"]["masked"]}
    return compile_policy(document, file=f"{topic}.yaml")


def _raw_lines() -> list[str]:
    return [line for line in SAMPLE.read_text().split("\n") if line.strip()]


def _expected_identities(dead_values: set[str]) -> Counter:
    """(customerId, timestamp) of every raw record that is not a dead letter, with multiplicity."""
    return Counter((json.loads(line)["customerId"], json.loads(line)["timestamp"])
                   for line in _raw_lines() if line not in dead_values)


def _identities(records) -> Counter:
    return Counter((r.json()["customerId"], r.json()["timestamp"]) for r in records)


@pytest.fixture(scope="module")
def bounded_run(kafka_broker, keyring_ref):
    topic = "raw-events-bounded"
    policy = _policy_on(topic)
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    produced = produce_file(kafka_broker.bootstrap, topic, SAMPLE)
    prepare_topics(kafka_broker.bootstrap, policy, create=True)
    env = build_kafka_job(policy, keyring_ref, bootstrap=kafka_broker.bootstrap, delivery="exactly-once",
                          bounded=True, checkpoint_interval_ms=1000, restart_attempts=0)
    env.execute("protect-kafka-bounded")
    read = {name: consume(kafka_broker.bootstrap, view.topic, timeout=20) for name, view in policy.views.items()}
    read["dlq"] = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=20)
    return policy, produced, read


def test_every_record_is_in_each_view_or_in_the_dead_letters_exactly_once(bounded_run):
    policy, produced, read = bounded_run
    assert produced == len(_raw_lines())
    positions = [r.headers["position"] for r in read["dlq"]]
    assert len(positions) == len(set(positions)) == 40
    masked = read["masked"]
    assert len(masked) + len(read["dlq"]) == produced
    # each raw record once: no duplicates, no gaps
    assert _identities(masked) == _expected_identities({r.value for r in read["dlq"]})
    assert len(read["anonymized"]) + len(read["dlq"]) <= produced


def test_dead_letters_carry_a_reason_header_and_the_raw_record(bounded_run):
    _, _, read = bounded_run
    raw = set(_raw_lines())
    for record in read["dlq"]:
        assert record.headers["reason"]
        assert record.value in raw


def test_output_records_carry_policy_headers_and_keys(bounded_run):
    policy, _, read = bounded_run
    for record in read["masked"][:100]:
        assert record.headers["policy_id"] == policy.id
        assert record.headers["policy_hash"] == policy.hash
        assert record.key == record.json()["customerId"]  # the raw key is kept


def test_no_raw_pii_reaches_a_protected_topic(bounded_run):
    _, _, read = bounded_run
    text = "\n".join(r.value for name in ("masked", "anonymized", "aggregated") for r in read[name])
    assert not [v for v in pii_values(_raw_lines()) if v in text]


def test_the_risk_report_reads_the_anonymized_topic_and_finds_k(bounded_run, kafka_broker, capsys):
    policy, _, _ = bounded_run
    status = cli.main(["risk", "--quasi-identifiers", "age,zip,location", "--subject", "customerId", "--json",
                       "--bootstrap-servers", kafka_broker.bootstrap, f"kafka:{policy.views['anonymized'].topic}",
                       "--fail-below", "5"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["k"] >= 5


def test_per_key_order_is_kept(bounded_run):
    _, _, read = bounded_run
    expected = defaultdict(list)
    for line in _raw_lines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("customerId"), str):
            expected[record["customerId"]].append(record.get("timestamp"))
    seen = defaultdict(list)
    for record in sorted(read["masked"], key=lambda r: (r.partition, r.offset)):
        value = record.json()
        seen[value["customerId"]].append(value["timestamp"])
    for customer, timestamps in seen.items():
        assert timestamps == [t for t in expected[customer] if t in set(timestamps)]


def test_exactly_once_across_a_stop_and_a_restart_from_the_last_checkpoint(kafka_broker, keyring_ref, tmp_path):
    topic = "raw-events-restart"
    policy = _policy_on(topic, masked_only=True)
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    produced = produce_file(kafka_broker.bootstrap, topic, SAMPLE)
    prepare_topics(kafka_broker.bootstrap, policy, create=True)
    checkpoints = tmp_path / "checkpoints"
    config = {
        "execution.checkpointing.dir": f"file://{checkpoints}",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        # slow the protect operator down so the stop lands mid-stream
        "python.fn-execution.bundle.size": "10",
    }
    # bounded in both runs: the stopping offsets travel in the source's checkpointed splits
    env = build_kafka_job(policy, keyring_ref, bootstrap=kafka_broker.bootstrap, delivery="exactly-once",
                          bounded=True, checkpoint_interval_ms=500, restart_attempts=0, config=config)
    client = env.execute_async("protect-kafka-first")
    deadline = time.monotonic() + 120
    completed: list[Path] = []
    while time.monotonic() < deadline and not completed and not _finished(client):
        time.sleep(0.5)
        completed = [p for p in checkpoints.rglob("chk-*") if (p / "_metadata").exists()]
    client.cancel().result()
    assert completed, "no checkpoint completed within 120 s"
    latest = max(completed, key=lambda p: int(p.name.split("-")[1]))
    first_pass = consume(kafka_broker.bootstrap, policy.views["masked"].topic, timeout=10)

    config["execution.state-recovery.path"] = f"file://{latest}"
    # a source restored from a checkpoint does not end by itself here: run it until the
    # committed views hold every record (or a deadline), then cancel it
    env = build_kafka_job(policy, keyring_ref, bootstrap=kafka_broker.bootstrap, delivery="exactly-once",
                          bounded=True, checkpoint_interval_ms=500, restart_attempts=0, config=config)
    client = env.execute_async("protect-kafka-resumed")
    deadline = time.monotonic() + 180
    masked, dead = [], []
    try:
        while time.monotonic() < deadline and len(masked) + len(dead) < produced and not _finished(client):
            time.sleep(2)
            masked = consume(kafka_broker.bootstrap, policy.views["masked"].topic, timeout=5)
            dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=5)
        time.sleep(2)  # one more checkpoint: anything duplicated would now be committed too
    finally:
        if not _finished(client):
            client.cancel().result()
    masked = consume(kafka_broker.bootstrap, policy.views["masked"].topic, timeout=10)
    dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=10)
    assert len(first_pass) < len(masked), "the first run was not stopped mid-stream"
    assert len(masked) + len(dead) == produced, "duplicates or gaps after the restart"
    assert _identities(masked) == _expected_identities({r.value for r in dead})


def _finished(client) -> bool:
    return str(client.get_job_status().result()) in ("JobStatus.FINISHED", "JobStatus.FAILED")


def test_an_unreachable_broker_gives_a_clear_error_quickly(tmp_path, capsys):
    Keyring.generate().save(tmp_path / "k.json")
    started = time.monotonic()
    status = cli.main(["run", "--policy", str(POLICY), "--bootstrap-servers", "127.0.0.1:9",
                       "--keyring", f"file:{tmp_path / 'k.json'}"])
    assert status == 2
    assert "cannot reach Kafka at 127.0.0.1:9" in capsys.readouterr().err
    assert time.monotonic() - started < 60
