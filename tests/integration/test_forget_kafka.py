"""Right to be forgotten on real Kafka: `forget SUBJECT --policy P` reaches every compacted view.

The views are compacted topics with a short segment.ms and a tiny min.cleanable.dirty.ratio, so the
broker compacts them within the test. The job runs through the command line (bounded, exactly-once);
then one subject is forgotten. Once the broker has compacted, no view holds a record of that subject
under any key, everyone else's latest records are as the job wrote them, and of the records read
before the forget only the forgotten subject's encrypted fields fail to decrypt.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from flink_jobs.kafka_tools import consume, ensure_topics, produce_file
from flink_jobs.policy import load_policy
from tests.integration.test_cli_runs import run_cli
from udfs.keyring import load_keyring
from udfs.record import invert_view
from udfs.registry import TransformError

pytestmark = pytest.mark.integration

TOPIC = "raw-forget"
VIEWS = ("masked", "anonymized", "linked")
SUBJECTS = [f"CUST{i:06d}" for i in range(12)]
FORGOTTEN = SUBJECTS[5]
#: compacted within seconds once allowed: a segment rolls after 500 ms (at the next append), any dirt is
#: cleanable. Until the test has read what the job wrote, a day's compaction lag (on the broker's clock,
#: not the events' 2024 timestamps) keeps the cleaner off it: it had compacted a view before the read.
COMPACTED = {"cleanup.policy": "compact", "segment.ms": "500", "min.cleanable.dirty.ratio": "0.001",
             "min.compaction.lag.ms": "86400000", "message.timestamp.type": "LogAppendTime",
             "delete.retention.ms": "500"}
#: how long the broker may take to compact (its cleaner looks every 15 s when idle): a bound, not a measure
COMPACTION_WAIT_S = 150
RUN_TIMEOUT_S = 240


def events() -> list[dict]:
    out = []
    for n in range(5):
        for i, subject in enumerate(SUBJECTS):
            out.append({"eventId": f"E{n}-{i}", "customerId": subject, "email": f"user{i}.{n}@example.org",
                        "age": 31 + (i % 3) * 10, "purchaseAmount": 10.0 * n + i,
                        "timestamp": f"2024-03-15T00:{n:02d}:{i:02d}Z"})
    return out


def policy_document(vault_ref: str) -> dict:
    per_subject = {"per_subject": True, "vault": vault_ref}
    base = {"eventId": "keep", "purchaseAmount": {"keep": "number"}, "timestamp": "keep"}
    return {
        "version": 1, "id": "forget-kafka",
        "source": {"topic": TOPIC, "timestamp_field": "timestamp"},
        "subject_field": "customerId",
        "views": {
            # keyed by the raw id; the email under the subject's own data key
            "masked": {"sink": {"topic": f"{TOPIC}.masked", "compacted": True},
                       "fields": {**base, "customerId": "keep", "email": {"encrypt": "aes_gcm", **per_subject}}},
            # keyed by a pseudonym from the subject's data key: nobody can compute it after forget
            "anonymized": {"sink": {"topic": f"{TOPIC}.anonymized", "compacted": True},
                           "fields": {**base, "customerId": {"pseudonymize": "hmac_sha256", "prefix": "cus_",
                                                             "length": 24, **per_subject},
                                      "email": {"encrypt": "aes_siv", **per_subject}},
                           "k_anonymity": {"k": 2, "max_delay": "2s",
                                           "quasi_identifiers": {"age": {"hierarchy": [{"range": 10}, "*"]}}}},
            # keyed by the keyring's pseudonym: forget computes it with the keyring
            "linked": {"sink": {"topic": f"{TOPIC}.linked", "compacted": True},
                       "fields": {**base, "customerId": {"pseudonymize": "hmac_sha256", "prefix": "cus_"}}},
        },
    }


def latest(records) -> dict[str, dict | None]:
    """Key -> its last value (None for a tombstone), in offset order: what compaction keeps."""
    out: dict[str, dict | None] = {}
    for record in records:
        out[record.key] = None if record.raw_value is None else record.json()
    return out


def allow_compaction(bootstrap: str, topics: list[str]) -> None:
    """Drop the topics' compaction lag to 0, so the broker may compact them from now on."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resources = [ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("min.compaction.lag.ms", "0", incremental_operation=AlterConfigOpType.SET)])
        for topic in topics]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(timeout=30)


def decrypt(policy, view: str, value: dict) -> dict:
    return invert_view(policy.views[view].tree, value)


@pytest.mark.timeout(RUN_TIMEOUT_S + COMPACTION_WAIT_S + 120)
def test_forget_tombstones_every_compacted_view_under_its_own_key_and_shreds_the_rest(
        kafka_broker, keyring_ref, tmp_path):
    bootstrap = kafka_broker.bootstrap
    vault_ref = f"sqlite:{tmp_path / 'vault.db'}"
    policy_file = tmp_path / "forget.yaml"
    policy_file.write_text(yaml.safe_dump(policy_document(vault_ref)))
    raw = events()
    raw_file = tmp_path / "events.jsonl"
    raw_file.write_text("".join(json.dumps(e) + "\n" for e in raw))
    by_event = {e["eventId"]: e for e in raw}
    forgotten_events = {e["eventId"] for e in raw if e["customerId"] == FORGOTTEN}
    topics = [f"{TOPIC}.{view}" for view in VIEWS]
    ensure_topics(bootstrap, topics, config=COMPACTED)
    produce_file(bootstrap, TOPIC, raw_file)

    common = ["--keyring", keyring_ref]
    result = run_cli(["run", "--policy", str(policy_file), "--bootstrap-servers", bootstrap, "--bounded",
                      "--quiet", *common], timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    before = {view: consume(bootstrap, f"{TOPIC}.{view}", timeout=30) for view in VIEWS}
    for view, records in before.items():
        assert {r.json()["eventId"] for r in records} == set(by_event), view  # the job wrote every event
    # the keys the forgotten subject's records were written under, one per view
    their_keys = {view: {r.key for r in records if r.json()["eventId"] in forgotten_events}
                  for view, records in before.items()}
    assert their_keys["masked"] == {FORGOTTEN} and all(len(keys) == 1 for keys in their_keys.values())
    assert their_keys["anonymized"] != their_keys["linked"]  # two pseudonyms: the data key's and the keyring's
    allow_compaction(bootstrap, topics)

    result = run_cli(["forget", FORGOTTEN, "--policy", str(policy_file), "--bootstrap-servers", bootstrap,
                      "--vault", vault_ref, *common], timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    for view in VIEWS:
        assert f"view {view} -> {TOPIC}.{view}: tombstone written under its key" in result.stdout
    assert FORGOTTEN not in result.stdout + result.stderr
    assert not any(key in result.stdout for keys in their_keys.values() for key in keys)

    # wait for compaction; a record appended after segment.ms rolls the segment that holds the tombstone
    deadline = time.monotonic() + COMPACTION_WAIT_S
    while True:
        roll = tmp_path / "roll.jsonl"
        roll.write_text(json.dumps({"roll": time.time_ns()}) + "\n")
        for topic in topics:
            produce_file(bootstrap, topic, roll, key_field="roll")
        after = {view: consume(bootstrap, f"{TOPIC}.{view}", timeout=30) for view in VIEWS}
        left = [r for records in after.values() for r in records
                if r.raw_value is not None and "eventId" in r.json() and r.json()["eventId"] in forgotten_events]
        if not left:
            break
        assert time.monotonic() < deadline, f"{len(left)} records of the forgotten subject left after compaction"
        time.sleep(2)

    for view in VIEWS:
        kept = {k: v for k, v in latest(after[view]).items() if v is not None and "eventId" in v}
        # no record of the subject under any key
        assert not any(v["eventId"] in forgotten_events for v in kept.values()), view
        assert not (their_keys[view] & set(kept)), view
        # everyone else's latest records are intact, as the job wrote them
        expected = {k: v for k, v in latest(before[view]).items() if k not in their_keys[view]}
        assert kept == expected, view
        assert len(kept) == len(SUBJECTS) - 1

    # of the records read before the forget, only the forgotten subject's fields no longer decrypt
    policy = load_policy(policy_file, keyring=load_keyring(keyring_ref))
    policy.open(load_keyring(keyring_ref))
    try:
        for view in ("masked", "anonymized"):
            for record in before[view]:
                value = record.json()
                if value["eventId"] in forgotten_events:
                    with pytest.raises(TransformError, match="subject forgotten") as info:
                        decrypt(policy, view, value)
                    assert by_event[value["eventId"]]["email"] not in str(info.value)
                else:
                    assert decrypt(policy, view, value)["email"] == by_event[value["eventId"]]["email"]
    finally:
        for transform in policy.transforms():
            getattr(transform, "close", lambda: None)()

