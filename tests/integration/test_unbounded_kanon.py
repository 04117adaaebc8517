"""The k-anonymity view with ``timing: event`` on a live Kafka stream: it must meet ``max_delay`` with no end of input.

A bounded run flushes every buffer at the end of input, which would hide a deadline that never
fires. Here the job runs on the MiniCluster (thread mode), the sample's events are produced at a
steady pace with their event time set to the moment they are produced, and the job is never told
that the input has ended. While it still runs, every record must come out (released or
suppressed), none later than ``max_delay`` after its own event time (plus the watermark delay and
timer slack), and the released view must be k-anonymous by the independent checker.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from flink_jobs.cli.startup_watch import local_rest_config
from flink_jobs.kafka_job import build_kafka_job, prepare_topics
from flink_jobs.kafka_tools import consume, ensure_topics
from flink_jobs.policy import compile_policy
from tests.support.kanon_checker import assert_accounted, assert_k_anonymous

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
K, MAX_DELAY_S, WATERMARK_DELAY_S = 5, 10, 2
RECORDS, RATE_PER_S = 3000, 200  # 15 s of input
#: timer resolution, bundle flushing and the Kafka send, on a shared 2-core machine
SLACK_S = 5
#: the last records' deadlines pass only after the input has gone quiet; a quiet-input fallback
#: (as the DP view's idle_timeout, 10 s by default) may take this long to move event time on
QUIET_ALLOWANCE_S = 10
QIS = ["age", "zip", "location"]


def _events() -> list[dict]:
    """The first well-formed events of the sample, each with an ``eventId`` to follow it by."""
    events = []
    for line in SAMPLE.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (isinstance(event, dict) and isinstance(event.get("age"), int) and isinstance(event.get("customerId"), str)
                and "timestamp" in event):
            event["eventId"] = f"e{len(events)}"
            events.append(event)
        if len(events) == RECORDS:
            return events
    raise AssertionError("the sample has too few well-formed events")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _produce_paced(bootstrap: str, topic: str, events: list[dict]) -> dict[str, int]:
    """Produce the events at RATE_PER_S, each stamped with the time it is sent; their event times by id."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    sent: dict[str, int] = {}
    start = time.monotonic()
    for i, event in enumerate(events):
        delay = start + i / RATE_PER_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = int(time.time() * 1000)
        event = {**event, "timestamp": _iso(now)}
        sent[event["eventId"]] = now
        producer.produce(topic, json.dumps(event).encode(), key=event["customerId"].encode())
        producer.poll(0)
    assert producer.flush(30) == 0, "the producer did not deliver every event"
    return sent


def _all_running(base: str, job_id: str) -> bool:
    try:
        job = json.load(urllib.request.urlopen(f"{base}/jobs/{job_id}", timeout=5))
    except OSError:
        return False
    return bool(job.get("vertices")) and all(v["status"] == "RUNNING" for v in job["vertices"])


@pytest.mark.timeout(300)
def test_a_running_job_releases_or_suppresses_every_record_within_max_delay_in_event_time(kafka_broker, keyring_ref):
    topic = "live-kanon"
    document = yaml.safe_load(POLICY.read_text())
    document["source"]["topic"] = topic
    document["source"]["watermark_delay"] = f"{WATERMARK_DELAY_S}s"
    view = document["views"]["anonymized"]
    view["sink"]["topic"] = f"{topic}.anonymized"
    view["fields"]["eventId"] = "keep"
    view["k_anonymity"].update(k=K, timing="event", max_delay=f"{MAX_DELAY_S}s")
    document["views"] = {"anonymized": view}
    policy = compile_policy(document, file=f"{topic}.yaml")
    ensure_topics(kafka_broker.bootstrap, [topic])
    prepare_topics(kafka_broker.bootstrap, policy, create=True)
    events = _events()

    base, rest = local_rest_config()
    env = build_kafka_job(policy, keyring_ref, bootstrap=kafka_broker.bootstrap, delivery="exactly-once",
                          execution_mode="thread", checkpoint_interval_ms=1000, restart_attempts=0, config=rest,
                          group_id=f"{topic}-{time.time_ns()}")
    job = env.execute_async(topic)
    job_id = str(job.get_job_id())
    released: list = []
    suppressed: list = []
    dead: list = []
    try:
        deadline = time.monotonic() + 120
        while not _all_running(base, job_id):
            assert time.monotonic() < deadline, "the job's operators did not open within 120 s"
            time.sleep(1)
        sent = _produce_paced(kafka_broker.bootstrap, topic, events)
        # every deadline has passed by then, in event time, and the quiet input had time to move it on
        deadline = time.monotonic() + MAX_DELAY_S + WATERMARK_DELAY_S + QUIET_ALLOWANCE_S + SLACK_S + 10
        while time.monotonic() < deadline:
            time.sleep(3)
            released = consume(kafka_broker.bootstrap, policy.views["anonymized"].topic, timeout=10)
            suppressed = consume(kafka_broker.bootstrap, f"{policy.views['anonymized'].topic}.suppressed",
                                 timeout=10)
            dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=5)
            if len(released) + len(suppressed) + len(dead) >= len(events):
                break
        assert job.get_job_status().result().name == "RUNNING"  # never told the input ended
    finally:
        job.cancel().result()

    # every record came out while the job ran: released or suppressed, once; the sample's malformed
    # values (a purchaseAmount written "279,14") are dead letters, as in every run
    dead_ids = {json.loads(r.value)["eventId"] for r in dead}
    assert len(dead_ids) < len(events) // 100
    sent = {event_id: ms for event_id, ms in sent.items() if event_id not in dead_ids}
    assert_accounted(sent, [r.json()["eventId"] for r in released], [r.json()["eventId"] for r in suppressed])
    assert_k_anonymous([r.json() for r in released], QIS, "customerId", K)
    # the Kafka timestamp of an output record is when the sink sent it; event time here is send time
    last = max(sent.values())
    bound_ms = (MAX_DELAY_S + WATERMARK_DELAY_S + SLACK_S) * 1000
    late = []
    for record in released + suppressed:
        event_ms = sent[record.json()["eventId"]]
        allowed = bound_ms if event_ms + bound_ms <= last else bound_ms + QUIET_ALLOWANCE_S * 1000
        if record.timestamp - event_ms > allowed:
            late.append(record.timestamp - event_ms)
    assert not late, f"{len(late)} records came out past max_delay in event time, the latest after {max(late)} ms"
