"""The vault on both backends: the same suite against SQLite and a real PostgreSQL."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.support.pg_fixture import pg_vault_url, postgres_server  # noqa: F401
from udfs import registry
from udfs.keyring import Keyring
from udfs.registry import ParamError, TransformError
from udfs.vault import (
    DEFAULT_VAULT,
    SubjectForgotten,
    Vault,
    VaultError,
    open_backend,
    resolve_reference,
)

TABLES = ("tokens", "subject_keys", "audit", "meta", "schema_version")


# the PostgreSQL runs start a server: integration tests, so `-m "not integration"` needs none
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def vault_ref(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'vault.db'}"
    return request.getfixturevalue("pg_vault_url")


@pytest.fixture
def vault(vault_ref, keyring):
    opened = Vault.open(vault_ref, keyring)
    yield opened
    opened.close()


def tokens_from(*names):
    """A token maker that hands out the given tokens in order, then fails the test."""
    it = iter(names)
    return lambda: next(it)


def tokenize(vault: Vault, domain: str, value, subject, token: str) -> str:
    return vault.tokenize(domain, value, subject, json.dumps(value).encode(), tokens_from(token))


def every_cell(vault: Vault) -> list:
    return [cell for table in TABLES for row in vault.backend.query(f"SELECT * FROM {table}") for cell in row]


def test_when_a_value_is_tokenized_twice_then_the_first_token_is_kept(vault):
    assert tokenize(vault, "customer_id", "CUST1", "CUST1", "tok_a") == "tok_a"
    assert tokenize(vault, "customer_id", "CUST1", "CUST1", "tok_b") == "tok_a"


def test_when_two_tasks_share_a_vault_then_they_agree_on_tokens(vault, vault_ref, keyring):
    other = Vault.open(vault_ref, keyring)
    try:
        first = tokenize(vault, "customer_id", "CUST1", "CUST1", "tok_a")
        assert tokenize(other, "customer_id", "CUST1", "CUST1", "tok_b") == first
        assert vault.data_key("CUST1") == other.data_key("CUST1")
    finally:
        other.close()


def test_when_domains_differ_then_tokens_and_indexes_differ(vault):
    tokenize(vault, "customer_id", "CUST1", "CUST1", "tok_a")
    assert tokenize(vault, "order_id", "CUST1", "CUST1", "tok_b") == "tok_b"
    assert vault.value_hmac("customer_id", "CUST1") != vault.value_hmac("order_id", "CUST1")


def test_when_detokenized_then_the_original_bytes_come_back(vault):
    tokenize(vault, "customer_id", 12345, "CUST1", "tok_a")
    assert json.loads(vault.detokenize("customer_id", "tok_a")) == 12345


def test_when_a_token_is_unknown_or_in_another_domain_then_it_is_refused(vault):
    tokenize(vault, "customer_id", "CUST1", "CUST1", "tok_a")
    with pytest.raises(SubjectForgotten, match="subject forgotten"):
        vault.detokenize("customer_id", "tok_never")
    with pytest.raises(SubjectForgotten):
        vault.detokenize("order_id", "tok_a")


def test_when_a_random_token_is_taken_then_another_is_drawn(vault):
    tokenize(vault, "d", "A0000001", "s1", "tok_same")
    # the first candidate clashes with A's token: unique (domain, token) sends it round again
    token = vault.tokenize("d", "B0000002", "s2", b'"B0000002"', tokens_from("tok_same", "tok_other"))
    assert token == "tok_other"
    assert json.loads(vault.detokenize("d", "tok_same")) == "A0000001"


def test_when_the_token_space_is_exhausted_then_a_transform_error_says_so(vault):
    tokenize(vault, "d", "A0000001", "s1", "tok_same")
    with pytest.raises(TransformError, match="no free token") as info:
        vault.tokenize("d", "B0000002", "s2", b'"B0000002"', itertools.repeat("tok_same").__next__, attempts=3)
    assert "B0000002" not in str(info.value)


def test_the_vault_never_stores_a_value_or_a_subject_in_the_clear(vault):
    secrets_in = {"value": "alice@example.com", "subject": "CUST-ALICE-42", "domain": "email"}
    vault.tokenize("email", secrets_in["value"], secrets_in["subject"], json.dumps(secrets_in["value"]).encode(),
                   tokens_from("tok_x"))
    vault.forget("CUST-SOMEONE-ELSE")
    for cell in every_cell(vault):
        blob = cell if isinstance(cell, bytes) else str(cell).encode()
        assert secrets_in["value"].encode() not in blob
        assert secrets_in["subject"].encode() not in blob
        assert b"alice" not in blob


def test_when_sqlite_then_the_file_holds_no_plaintext(tmp_path, keyring):
    path = tmp_path / "vault.db"
    with Vault.open(f"sqlite:{path}", keyring).closing() as v:
        tokenize(v, "email", "bob@example.org", "CUST-BOB", "tok_y")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"bob@example.org" not in raw and b"CUST-BOB" not in raw


def test_subjects_are_stored_as_their_hmac_and_data_keys_wrapped(vault):
    key_ref, data_key = vault.data_key("CUST1")
    rows = vault.backend.query("SELECT subject_hmac, key_ref, wrapped_key, kek_id FROM subject_keys")
    assert len(rows) == 1
    subject_hmac, stored_ref, wrapped, kek_id = rows[0]
    assert subject_hmac == vault.subject_hmac("CUST1") and len(subject_hmac) == 32
    assert stored_ref == key_ref
    assert data_key not in wrapped
    assert kek_id.startswith("kek-")


def test_when_forgotten_then_key_and_tokens_go_and_others_stay(vault):
    tokenize(vault, "customer_id", "CUST1", "CUST1", "tok_1")
    tokenize(vault, "email", "one@example.com", "CUST1", "tok_1e")
    tokenize(vault, "customer_id", "CUST2", "CUST2", "tok_2")
    ref1, _ = vault.data_key("CUST1")

    result = vault.forget("CUST1")

    assert (result.keys, result.tokens) == (1, 2)
    for token, domain in (("tok_1", "customer_id"), ("tok_1e", "email")):
        with pytest.raises(SubjectForgotten):
            vault.detokenize(domain, token)
    with pytest.raises(SubjectForgotten, match="subject forgotten"):
        vault.data_key_by_ref(ref1)
    assert json.loads(vault.detokenize("customer_id", "tok_2")) == "CUST2"


def test_forget_is_idempotent_and_every_call_is_audited_without_the_subject(vault):
    tokenize(vault, "customer_id", "CUST1", "CUST1", "tok_1")
    assert vault.forget("CUST1").tokens == 1
    again = vault.forget("CUST1")
    assert (again.keys, again.tokens) == (0, 0)
    rows = vault.backend.query("SELECT action, domain, count FROM audit ORDER BY id")
    assert rows == [("forget", None, 2), ("forget", None, 0)]
    assert all("CUST1" not in str(cell) for row in vault.backend.query("SELECT * FROM audit") for cell in row)


def test_when_a_forgotten_subject_returns_then_it_gets_a_new_key(vault):
    old_ref, old_key = vault.data_key("CUST1")
    vault.forget("CUST1")
    new_ref, new_key = vault.data_key("CUST1")
    assert new_ref != old_ref and new_key != old_key


def test_the_schema_is_migrated_once(vault_ref, keyring):
    for _ in range(2):
        backend = open_backend(vault_ref)
        try:
            assert backend.query("SELECT version FROM schema_version") == [(1,)]
            assert backend.schema_version() == 1
        finally:
            backend.close()


def test_when_the_token_key_rotates_then_the_vault_keeps_its_index_key(vault_ref):
    ring = Keyring.generate()
    with Vault.open(vault_ref, ring).closing() as v:
        tokenize(v, "customer_id", "CUST1", "CUST1", "tok_a")
    old = ring.active["token"]
    ring.add("token")
    with Vault.open(vault_ref, ring).closing() as v:
        assert v.index_key_id == old
        assert tokenize(v, "customer_id", "CUST1", "CUST1", "tok_b") == "tok_a"


def test_when_the_keyring_lacks_the_index_key_then_the_vault_refuses_to_open(vault_ref):
    with Vault.open(vault_ref, Keyring.generate()).closing():
        pass
    with pytest.raises(VaultError, match="indexed with token key"):
        Vault.open(vault_ref, Keyring.generate())


def test_when_the_kek_is_missing_then_unwrapping_fails_without_key_material(vault_ref, keyring):
    with Vault.open(vault_ref, keyring).closing() as v:
        ref, material = v.data_key("CUST1")
    ring = Keyring({k: key for k, key in keyring.keys.items() if key.purpose != "kek"},
                   {p: i for p, i in keyring.active.items() if p != "kek"})
    with Vault.open(vault_ref, ring).closing() as v, pytest.raises(TransformError, match="no 'kek' key") as info:
        v.data_key_by_ref(ref)
    assert material.hex() not in str(info.value)


# -- per-subject encryption ---------------------------------------------------------------------


def per_subject(name: str, vault_ref: str, keyring: Keyring, domain: str = "email"):
    transform = registry.get(name)({"per_subject": True, "subject_field": "customerId", "vault": vault_ref},
                                   domain=domain)
    transform.open(keyring)
    return transform


@pytest.mark.parametrize(
    "name, prefix",
    [
        ("encrypt.aes_gcm", "gk1."),  # randomized: equal values differ
        ("encrypt.aes_siv", "sk1."),  # deterministic per subject: joinable within the subject
    ],
)
def test_per_subject_encryption_round_trips_and_is_shredded_by_forget(name, prefix, vault_ref, keyring):
    enc = per_subject(name, vault_ref, keyring)
    a = enc.apply_in_record("ann@example.com", {"customerId": "A"})
    b = enc.apply_in_record({"n": 1}, {"customerId": "B"})
    assert a.startswith(prefix) and "ann" not in a
    reader = per_subject(name, vault_ref, keyring)  # another task, with cold caches
    assert reader.invert(a) == "ann@example.com"
    assert reader.invert(b) == {"n": 1}

    with Vault.open(vault_ref, keyring).closing() as v:
        v.forget("A")
    fresh = per_subject(name, vault_ref, keyring)
    with pytest.raises(TransformError, match="subject forgotten") as info:
        fresh.invert(a)
    assert "ann" not in str(info.value)
    assert fresh.invert(b) == {"n": 1}
    for t in (enc, reader, fresh):
        t.close()


def test_per_subject_siv_is_deterministic_per_subject_only(vault_ref, keyring):
    enc = per_subject("encrypt.aes_siv", vault_ref, keyring)
    same = [enc.apply_in_record("x@example.com", {"customerId": "A"}) for _ in range(2)]
    other = enc.apply_in_record("x@example.com", {"customerId": "B"})
    assert same[0] == same[1] != other
    enc.close()


def test_per_subject_encryption_without_the_subject_field_is_a_transform_error(vault_ref, keyring):
    enc = per_subject("encrypt.aes_gcm", vault_ref, keyring)
    with pytest.raises(TransformError, match="subject field customerId is missing"):
        enc.apply_in_record("secret-value", {"other": 1})
    enc.close()


@pytest.mark.parametrize(
    "params, param",
    [
        ({"per_subject": True}, "subject_field"),  # no subject field
        ({"per_subject": "yes"}, "per_subject"),  # not a boolean
        ({"subject_field": "customerId"}, "subject_field"),  # subject without per_subject
        ({"per_subject": True, "subject_field": "customerId", "vault": "mysql://x"}, "vault"),  # unknown scheme
        ({"per_subject": True, "subject_field": "customer Id"}, "subject_field"),  # not a field name
    ],
)
def test_per_subject_parameters_are_checked_at_policy_time(params, param):
    with pytest.raises(ParamError) as info:
        registry.get("encrypt.aes_gcm")(params, domain="email")
    assert info.value.param == param


def test_without_per_subject_the_old_ciphertexts_are_unchanged(keyring):
    enc = registry.get("encrypt.aes_siv")({}, domain="email")
    enc.open(keyring)
    assert enc.apply("a@example.com").startswith("s1.")
    assert enc.needs_record is False


# -- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, env, expected",
    [
        (None, None, DEFAULT_VAULT),  # nothing set: the embedded default
        (None, "sqlite:/tmp/x.db", "sqlite:/tmp/x.db"),  # the environment
        ("postgresql://u@127.0.0.1:1/db", "sqlite:/tmp/x.db", "postgresql://u@127.0.0.1:1/db"),  # the parameter wins
    ],
)
def test_the_vault_reference_is_the_parameter_then_the_environment_then_the_default(given, env, expected, monkeypatch):
    monkeypatch.delenv("ANON_VAULT", raising=False)
    if env:
        monkeypatch.setenv("ANON_VAULT", env)
    assert resolve_reference(given) == expected


def test_when_the_reference_is_unknown_then_it_is_refused():
    with pytest.raises(VaultError, match="sqlite:PATH or postgresql"):
        resolve_reference("redis://127.0.0.1")


def test_when_postgresql_is_unreachable_then_the_error_hides_the_password(keyring):
    from flink_jobs.devtools.pg_local import free_port

    url = f"postgresql://anon:hunter2secret@127.0.0.1:{free_port()}/vault"
    with pytest.raises(VaultError, match="cannot connect") as info:
        Vault.open(url, keyring)
    assert "hunter2secret" not in str(info.value)


# -- per-subject pseudonyms ---------------------------------------------------------------------


def test_a_per_subject_pseudonym_is_stable_joinable_and_cannot_be_computed_after_forget(tmp_path, keyring):
    vault_ref = f"sqlite:{tmp_path / 'vault.db'}"
    pseudo = per_subject("pseudonymize.hmac_sha256", vault_ref, keyring, domain="customer_id")
    a = pseudo.apply_in_record("A", {"customerId": "A"})
    other_task = per_subject("pseudonymize.hmac_sha256", vault_ref, keyring, domain="customer_id")
    assert other_task.apply_in_record("A", {"customerId": "A"}) == a  # joinable across tasks and topics
    b = other_task.apply_in_record("B", {"customerId": "B"})
    classic = registry.get("pseudonymize.hmac_sha256")({}, domain="customer_id")
    classic.open(keyring)
    assert a != classic.apply("A") and len(a) == len(b) == 32  # not the keyring's pseudonym

    with Vault.open(vault_ref, keyring).closing() as v:
        assert v.forget("A").keys == 1
    fresh = per_subject("pseudonymize.hmac_sha256", vault_ref, keyring, domain="customer_id")
    assert fresh.apply_in_record("B", {"customerId": "B"}) == b  # everyone else keeps theirs
    assert fresh.apply_in_record("A", {"customerId": "A"}) != a  # a new data key: the old one cannot be made again
    for t in (pseudo, other_task, fresh):
        t.close()


@pytest.mark.parametrize(
    "params, param",
    [
        ({"per_subject": "yes"}, "per_subject"),  # not a bool
        ({"subject_field": "customerId"}, "subject_field"),  # only with per_subject
        ({"vault": "sqlite:x.db"}, "vault"),  # only with per_subject
        ({"per_subject": True}, "subject_field"),  # where the subject is, unknown
        ({"per_subject": True, "subject_field": "customerId", "vault": "mysql://x"}, "vault"),  # no such vault
    ],
)
def test_when_a_per_subject_pseudonym_is_misconfigured_then_the_param_is_named(params, param):
    with pytest.raises(ParamError) as info:
        registry.get("pseudonymize.hmac_sha256")(params, domain="customer_id")
    assert info.value.param == param


def test_a_per_subject_pseudonym_without_its_record_is_refused(tmp_path, keyring):
    pseudo = per_subject("pseudonymize.hmac_sha256", f"sqlite:{tmp_path / 'v.db'}", keyring, domain="customer_id")
    with pytest.raises(TransformError, match="needs the whole record"):
        pseudo.apply("A")
    with pytest.raises(TransformError, match="subject field customerId is missing"):
        pseudo.apply_in_record("A", {"other": 1})
    pseudo.close()
