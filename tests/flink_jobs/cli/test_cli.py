"""The flink-anonymizer CLI, in process: keys, validate, transforms, help, and run's keyring check."""

from __future__ import annotations

import argparse
import base64
import json
import os
import stat

import pytest

from flink_jobs import cli
from flink_jobs.cli import app, run
from flink_jobs.keyring_ref import KEYRING_ENV
from flink_jobs.protect import Protector
from udfs import registry
from udfs.keyring import Keyring, load_keyring

POLICY = """\
version: 1
id: cli-test
source: {topic: raw, timestamp_field: timestamp}
subject_field: customerId
views:
  masked:
    sink: {topic: masked}
    fields:
      customerId: {pseudonymize: hmac_sha256}
      email: {encrypt: aes_gcm}
      ssn: {mask: keep_last, n: 4}
      timestamp: keep
"""


@pytest.fixture(autouse=True)
def no_ambient_keyring(monkeypatch):
    monkeypatch.delenv(KEYRING_ENV, raising=False)


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "cli-test.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def keyring_file(tmp_path):
    path = tmp_path / "keyring.json"
    assert cli.main(["keys", "new", "--out", str(path)]) == 0
    return path


def _secrets(path) -> list[str]:
    ring = load_keyring(f"file:{path}")
    return [s for k in ring.keys.values() for s in (base64.b64encode(k.material).decode(), k.material.hex())]


# -- keys ----------------------------------------------------------------------------------------------
def test_keys_new_writes_a_0600_keyring_and_prints_ids_only(tmp_path, capsys):
    path = tmp_path / "k.json"
    assert cli.main(["keys", "new", "--out", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = load_keyring(f"file:{path}")
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {path} with keys: ")
    for key in ring.keys.values():
        assert f"{key.purpose}={key.id}" in out
    for secret in _secrets(path):
        assert secret not in out


def test_keys_new_refuses_to_overwrite_without_force(keyring_file, capsys):
    before = keyring_file.read_text()
    capsys.readouterr()
    assert cli.main(["keys", "new", "--out", str(keyring_file)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {keyring_file} exists; pass --force to overwrite it (its keys would be lost)\n"
    assert keyring_file.read_text() == before


def test_keys_new_with_force_overwrites_and_stays_0600(keyring_file):
    os.chmod(keyring_file, 0o644)
    before = load_keyring(f"file:{keyring_file}").active
    assert cli.main(["keys", "new", "--out", str(keyring_file), "--force"]) == 0
    assert load_keyring(f"file:{keyring_file}").active != before
    assert stat.S_IMODE(os.stat(keyring_file).st_mode) == 0o600


@pytest.mark.parametrize(
    "reference",
    [
        "{path}",  # a bare path
        "file:{path}",  # a file: reference
    ],
)
def test_keys_rotate_makes_a_new_key_active_and_keeps_the_old(keyring_file, capsys, reference):
    old = load_keyring(f"file:{keyring_file}").active["encrypt"]
    capsys.readouterr()
    assert cli.main(["keys", "rotate", "--keyring", reference.format(path=keyring_file), "--purpose", "encrypt"]) == 0
    ring = load_keyring(f"file:{keyring_file}")
    new = ring.active["encrypt"]
    assert new != old and sorted(ring.ids("encrypt")) == sorted([old, new])
    assert capsys.readouterr().out == f"encrypt: {new} is now active (was {old}; kept for old data)\n"
    assert stat.S_IMODE(os.stat(keyring_file).st_mode) == 0o600


def test_after_keys_rotate_old_ciphertexts_still_decrypt(keyring_file):
    gcm = registry.get("encrypt.aes_gcm")({}, domain="email")
    gcm.open(load_keyring(f"file:{keyring_file}"))
    token = gcm.apply("jane@example.com")
    assert cli.main(["keys", "rotate", "--keyring", str(keyring_file), "--purpose", "encrypt"]) == 0
    after = registry.get("encrypt.aes_gcm")({}, domain="email")
    after.open(load_keyring(f"file:{keyring_file}"))
    assert after.key_id != gcm.key_id
    assert after.invert(token) == "jane@example.com"


def test_keys_rotate_refuses_an_unknown_purpose(keyring_file, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["keys", "rotate", "--keyring", str(keyring_file), "--purpose", "signing"])
    assert exc.value.code == 2
    assert "invalid choice: 'signing'" in capsys.readouterr().err


def test_keys_list_shows_ids_and_active_marks_but_never_material(keyring_file, capsys):
    assert cli.main(["keys", "rotate", "--keyring", str(keyring_file), "--purpose", "siv"]) == 0
    capsys.readouterr()
    assert cli.main(["keys", "list", "--keyring", f"file:{keyring_file}"]) == 0
    out = capsys.readouterr().out
    ring = load_keyring(f"file:{keyring_file}")
    lines = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
    assert set(lines) == set(ring.keys)
    for key_id, cols in lines.items():
        assert cols[1] == ring.keys[key_id].purpose
        assert (cols[-1] == "active") == (ring.active[cols[1]] == key_id)
    for secret in _secrets(keyring_file):
        assert secret not in out


def test_keys_list_reads_an_env_reference(keyring_file, monkeypatch, capsys):
    monkeypatch.setenv("CLI_TEST_KEYRING", keyring_file.read_text())
    capsys.readouterr()
    assert cli.main(["keys", "list", "--keyring", "env:CLI_TEST_KEYRING"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(load_keyring(f"file:{keyring_file}").keys)


def test_keys_without_an_action_prints_its_help_and_exits_2(capsys):
    assert cli.main(["keys"]) == 2
    assert "usage: flink-anonymizer keys" in capsys.readouterr().out


# -- validate --------------------------------------------------------------------------------------------
def test_validate_a_good_policy_exits_0_and_describes_it(policy_file, capsys):
    assert cli.main(["validate", str(policy_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"ok: {policy_file}: policy cli-test (hash ")
    assert out[0].endswith("), source raw")
    assert out[1] == "  view masked -> masked: 4 fields"
    assert out[2] == "  (keys not checked: pass --keyring to check them)"


def test_validate_with_a_keyring_checks_the_keys(policy_file, keyring_file, capsys):
    capsys.readouterr()
    assert cli.main(["validate", str(policy_file), "--keyring", f"file:{keyring_file}"]) == 0
    assert "keys not checked" not in capsys.readouterr().out


def test_validate_a_bad_policy_exits_2_and_names_file_path_problem_and_allowed(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(POLICY.replace("{mask: keep_last, n: 4}", "{mask: keep_last, n: 4, min_length: 4}")
                    .replace("version: 1", "version: 3"))
    assert cli.main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: the policy has 2 problem(s):",
        f"{path}: version: unsupported version 3 (allowed: 1)",
        f"{path}: views.masked.fields.ssn.n: keep_last 4 would reveal whole values of length 4 "
        "(allowed: n smaller than min_length (4))",
    ]


def test_validate_with_a_keyring_missing_a_purpose_exits_2(policy_file, tmp_path, capsys):
    partial = tmp_path / "partial.json"
    Keyring.generate(["pseudonym"]).save(partial)
    assert cli.main(["validate", str(policy_file), "--keyring", f"file:{partial}"]) == 2
    err = capsys.readouterr().err
    assert f"{policy_file}: views.masked.fields.email: keyring file:{partial} has no active 'encrypt' key" in err


def test_validate_a_missing_file_exits_2(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert f"{tmp_path / 'nope.yaml'}: <top>: file not found" in capsys.readouterr().err


# -- transforms and help ------------------------------------------------------------------------------------
def test_transforms_lists_every_registered_name_with_its_summary(capsys):
    assert cli.main(["transforms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == registry.names()
    for expected in ("keep", "drop", "null", "redact", "mask.email", "mask.keep_last", "mask.phone",
                     "substitute.person_name", "pseudonymize.hmac_sha256", "encrypt.aes_gcm", "encrypt.aes_siv",
                     "generalize.geohash"):
        assert expected in names
    email = next(line for line in lines if line.startswith("mask.email "))
    assert "j***@example.com" in email


def _command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*path, name))
                found += _command_paths(sub, (*path, name))
    return found


COMMANDS = _command_paths(app.build_parser())


def test_the_command_tree_has_the_documented_commands():
    for path in [("run",), ("validate",), ("keys",), ("keys", "new"), ("keys", "rotate"), ("keys", "list"),
                 ("decrypt",), ("transforms",)]:
        assert path in COMMANDS


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "top")
def test_help_works_on_every_command(path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: flink-anonymizer" + "".join(f" {p}" for p in path))
    assert "-h, --help" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert capsys.readouterr().out.startswith("usage: flink-anonymizer")


# -- run: refused before Flink starts ------------------------------------------------------------------------
def test_run_without_a_keyring_gives_the_clear_error(policy_file, tmp_path, capsys):
    assert cli.main(["run", "--policy", str(policy_file), "--input", str(tmp_path / "in.jsonl"),
                     "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: no keyring: pass --keyring env:NAME or file:PATH, or set ${KEYRING_ENV} "
        "(create one with: flink-anonymizer keys new --out keyring.json)\n"
    )
    assert not (tmp_path / "out").exists()


def test_run_with_a_missing_keyring_file_names_it(policy_file, tmp_path, capsys):
    missing = tmp_path / "none.json"
    assert cli.main(["run", "--policy", str(policy_file), "--keyring", f"file:{missing}"]) == 2
    assert f"keyring file {missing} does not exist" in capsys.readouterr().err


def test_run_without_input_or_kafka_says_what_to_pass(policy_file, keyring_file, capsys):
    capsys.readouterr()
    assert cli.main(["run", "--policy", str(policy_file), "--keyring", f"file:{keyring_file}"]) == 2
    assert "pass --input FILE and --output DIR" in capsys.readouterr().err


def test_run_with_a_bundle_size_below_one_is_refused_before_flink(policy_file, keyring_file, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["run", "--policy", str(policy_file), "--keyring", f"file:{keyring_file}", "--bundle-size", "0",
                     "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]) == 2
    assert "--bundle-size must be at least 1, not 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_with_a_bad_policy_is_refused_before_flink(tmp_path, keyring_file, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(POLICY.replace("{mask: keep_last, n: 4}", "{mask: keep_lats, n: 4}"))
    capsys.readouterr()
    assert cli.main(["run", "--policy", str(path), "--keyring", f"file:{keyring_file}",
                     "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]) == 2
    assert "unknown transform 'mask.keep_lats'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- progress display ---------------------------------------------------------------------------------
PROGRESS_LINE = r"\[[# ]{30}\] +\d{1,3}\.\d% [\d,]+/[\d,]+ records +\d+\.\ds"


@pytest.mark.parametrize(("seen", "total", "percent", "hashes"), [
    ((6_000, 4_040), 10_040, "100.0%", 30),  # the two subtasks' final counts
    ((2_510,), 10_040, " 25.0%", 7),  # part way
])
def test_when_the_job_ends_the_progress_display_prints_a_last_line_with_the_final_count(
        tmp_path, capsys, seen, total, percent, hashes):
    import re
    import threading
    import time

    for i, n in enumerate(seen):
        (tmp_path / f"subtask-{i}.json").write_text(json.dumps({"records_in": n}))
    done = threading.Event()
    done.set()  # a job shorter than the first redraw still ends with a line
    run._show_progress(tmp_path, total, done, time.monotonic())
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and re.fullmatch(PROGRESS_LINE, lines[-1]), lines
    assert f"{percent} {sum(seen):,}/{total:,} records" in lines[-1]
    assert lines[-1].count("#") == hashes


@pytest.mark.parametrize(("content", "records"), [
    (b'{"a":1}\n{"a":2}\n\n', 2),  # the last line is blank: 219/218 once
    (b'{"a":1}\n{"a":2}\n \t', 2),  # the last line is whitespace, with no newline after it
    (b'{"a":1}\r\n\r\n{"a":2}\r\n', 2),  # CRLF, a blank line between
    (b'{"a":1}\r{"a":2}\r\r', 2),  # lone CRs: Flink's reader splits there too
    (b'\n \n\r\n', 0),  # nothing but blank lines
    (b'{"a":1}', 1),  # one line, no newline
])
def test_count_records_counts_the_lines_flink_reads_that_are_not_blank(tmp_path, content, records):
    from flink_jobs.protect import BLANK
    from flink_jobs.protect_stream import line_count

    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    assert run.count_records(path) == records
    # the job reads line_count lines and counts in only those that are not blank
    lines = content.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n")[:line_count(path)]
    assert records == sum(1 for line in lines if line.strip(BLANK))


def test_count_records_is_not_fooled_by_a_crlf_cut_between_two_read_chunks(tmp_path):
    path = tmp_path / "in.jsonl"
    head = b"x" * ((1 << 20) - 1)  # its \r is the chunk's last byte, its \n the next chunk's first
    path.write_bytes(head + b"\r\n" + b'{"a":1}\r\n')
    assert run.count_records(path) == 2


# -- decrypt -------------------------------------------------------------------------------------------
def test_decrypt_gives_back_the_encrypted_fields(policy_file, keyring_file, tmp_path, capsys):
    import yaml

    protector = Protector(yaml.safe_load(POLICY), str(policy_file))
    protector.open(load_keyring(f"file:{keyring_file}"))
    record = {"customerId": "C1", "email": "jane@example.com", "ssn": "123-45-6789", "timestamp": "2024-03-05T14:23:11Z"}
    (routed,) = protector.process("p0:0", None, json.dumps(record))
    view_file = tmp_path / "masked.jsonl"
    view_file.write_text(routed.value[2] + "\n")
    protected = json.loads(routed.value[2])
    capsys.readouterr()
    assert cli.main(["decrypt", "--policy", str(policy_file), "--view", "masked",
                     "--keyring", f"file:{keyring_file}", str(view_file)]) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["email"] == "jane@example.com"
    assert back["ssn"] == "***-**-6789" and back["customerId"] == protected["customerId"]
