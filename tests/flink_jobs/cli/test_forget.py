"""`forget --policy`: each compacted view's own key for the subject, as the job computes it. No broker.

The Kafka end of it (tombstones, compaction, every view read back) is in
tests/integration/test_forget_kafka.py.
"""

from __future__ import annotations

import json

import pytest
import yaml

from flink_jobs import cli
from flink_jobs.cli.vault import view_keys
from flink_jobs.keyring_ref import KEYRING_ENV
from flink_jobs.protect import Protector
from udfs.keyring import Keyring
from udfs.vault import Vault

SUBJECT = "CUST000042"


def policy_document(vault_ref: str) -> dict:
    def view(topic: str, customer_id, compacted: bool = True) -> dict:
        fields = {"amount": "keep", "timestamp": "keep"}
        if customer_id is not None:
            fields["customerId"] = customer_id
        return {"sink": {"topic": topic, "compacted": compacted}, "fields": fields}

    return {
        "version": 1, "id": "forget-test",
        "source": {"topic": "raw", "timestamp_field": "timestamp"},
        "subject_field": "customerId",
        "views": {
            "masked": view("masked", "keep"),  # the raw id
            "pseudonymized": view("pseudonymized", {"pseudonymize": "hmac_sha256", "prefix": "cus_"}),
            "forgettable": view("forgettable", {"pseudonymize": "hmac_sha256", "per_subject": True,
                                                "vault": vault_ref}),
            "sealed": view("sealed", {"encrypt": "aes_siv"}),  # deterministic, one-to-one
            "randomized": view("randomized", {"encrypt": "aes_gcm"}),  # a new key every time
            "unkeyed": view("unkeyed", None),  # the subject field is dropped (deny by default)
            "truncated": view("truncated", {"mask": "keep_last", "n": 4}),  # shared with other subjects
            "plain": view("plain", "keep", compacted=False),  # not compacted: nothing to tombstone
        },
    }


@pytest.fixture
def setup(tmp_path):
    vault_ref = f"sqlite:{tmp_path / 'vault.db'}"
    keyring = Keyring.generate()
    ring_file = tmp_path / "ring.json"
    keyring.save(ring_file)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy_document(vault_ref)))
    return vault_ref, keyring, ring_file, policy_file


def job_keys(policy_file, keyring, record: dict) -> dict[str, str]:
    """The key each view's record gets in the job, from the Protector core."""
    protector = Protector(yaml.safe_load(policy_file.read_text()), str(policy_file))
    protector.open(keyring)
    try:
        return {r.channel: r.value[0] for r in protector.process("line 1", None, json.dumps(record))}
    finally:
        for transform in protector.policy.transforms():
            getattr(transform, "close", lambda: None)()


def test_each_compacted_view_gets_the_key_the_job_gave_the_subjects_records(setup):
    vault_ref, keyring, _, policy_file = setup
    written = job_keys(policy_file, keyring, {"customerId": SUBJECT, "amount": 3, "timestamp": "2024-03-15T00:00:00Z"})
    with Vault.open(vault_ref, keyring).closing() as vault:
        keys = {k.view: k for k in view_keys(str(policy_file), keyring, SUBJECT, vault, vault_ref)}
    assert set(keys) == {"masked", "pseudonymized", "forgettable", "sealed", "randomized", "unkeyed", "truncated"}
    for view in ("masked", "pseudonymized", "forgettable", "sealed"):
        assert keys[view].key == written[view], view
    assert keys["masked"].key == SUBJECT and keys["pseudonymized"].key.startswith("cus_")
    assert keys["forgettable"].key != keys["pseudonymized"].key[4:]  # the subject's data key, not the keyring's
    for view, why in (("randomized", "randomized"), ("unkeyed", "dropped"), ("truncated", "shared")):
        assert keys[view].key is None and why in keys[view].how, view


def test_forget_names_the_views_it_cannot_tombstone_and_never_prints_the_subject(setup, capsys, monkeypatch):
    vault_ref, keyring, ring_file, policy_file = setup
    document = yaml.safe_load(policy_file.read_text())
    # only views whose key cannot be derived are compacted: no tombstone to write, so no broker needed
    for name in ("masked", "pseudonymized", "forgettable", "sealed"):
        document["views"][name]["sink"]["compacted"] = False
    policy_file.write_text(yaml.safe_dump(document))
    job_keys(policy_file, keyring, {"customerId": SUBJECT, "amount": 3, "timestamp": "2024-03-15T00:00:00Z"})
    monkeypatch.delenv(KEYRING_ENV, raising=False)
    status = cli.main(["forget", SUBJECT, "--policy", str(policy_file), "--keyring", f"file:{ring_file}",
                       "--vault", vault_ref])
    out = capsys.readouterr().out
    assert status == 0
    for view in ("randomized", "unkeyed", "truncated"):
        assert f"view {view} -> {view}: cannot be tombstoned; retention applies" in out
    assert SUBJECT not in out and "tombstone written" not in out
