"""``kafka_job.main``, the ``flink run -py`` entry point: it fails as ``flink-anonymizer run`` does, without the CLI."""

from __future__ import annotations

from pathlib import Path

from flink_jobs import kafka_job
from flink_jobs.keyring_ref import KEYRING_ENV
from udfs.keyring import Keyring

ROOT = Path(__file__).resolve().parents[2]
POLICY = (ROOT / "conf/policies/customer-events.yaml").read_text()


def test_a_bad_policy_exits_2_with_the_command_lines_message(tmp_path, capsys):
    policy, ring = tmp_path / "bad.yaml", tmp_path / "keyring.json"
    policy.write_text(POLICY.replace("version: 1", "version: 3", 1))
    Keyring.generate().save(ring)
    status = kafka_job.main(["--policy", str(policy), "--bootstrap-servers", "127.0.0.1:9", "--keyring", f"file:{ring}"])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: the policy has 1 problem(s):",
        f"{policy}: version: unsupported version 3 (allowed: 1)",
    ]


def test_no_keyring_exits_2_and_says_how_to_give_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(KEYRING_ENV, raising=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    assert kafka_job.main(["--policy", str(policy), "--bootstrap-servers", "127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.startswith("error: no keyring: pass --keyring env:NAME or file:PATH")
