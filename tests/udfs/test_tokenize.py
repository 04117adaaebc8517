"""The tokenize.vault transform: policy syntax, token formats, the per-task cache, inversion, errors."""

from __future__ import annotations

import logging
import re

import pytest

import udfs.tokenization  # noqa: F401 - registers tokenize.vault
from flink_jobs.policy import compile_policy
from tests.support.pg_fixture import pg_vault_url, postgres_server  # noqa: F401
from udfs import registry
from udfs.record import apply_view, invert_view
from udfs.registry import ParamError, TransformError
from udfs.vault import Vault


# the PostgreSQL runs start a server: integration tests, so `-m "not integration"` needs none
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def vault_ref(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'vault.db'}"
    return request.getfixturevalue("pg_vault_url")


def make(vault_ref: str, keyring, domain: str = "customer_id", **params):
    transform = registry.get("tokenize.vault")({"subject_field": "customerId", "vault": vault_ref, **params},
                                               domain=domain)
    transform.open(keyring)
    return transform


def rec(subject: str = "CUST1", **fields) -> dict:
    return {"customerId": subject, **fields}


def policy_doc(vault_ref: str, spec: dict) -> dict:
    return {
        "version": 1,
        "source": {"topic": "raw", "timestamp_field": "timestamp"},
        "subject_field": "customerId",
        "views": {"support": {"sink": {"topic": "support"}, "fields": {"customerId": spec, "card": {
            "tokenize": "vault", "format": "digits", "domain": "card_number", "subject_field": "customerId",
            "vault": vault_ref}}}},
    }


def test_the_policy_syntax_compiles_and_protects_a_record(tmp_path, keyring):
    ref = f"sqlite:{tmp_path / 'v.db'}"
    spec = {"tokenize": "vault", "format": "prefixed", "prefix": "cus_", "domain": "customer_id",
            "subject_field": "customerId", "vault": ref}
    policy = compile_policy(policy_doc(ref, spec), keyring=keyring)
    policy.open(keyring)
    tree = policy.views["support"].tree
    out = apply_view(tree, {"customerId": "CUST1", "card": "4111111111111111"}, [])
    assert re.fullmatch(r"cus_[a-z2-7]{26}", out["customerId"])
    assert re.fullmatch(r"\d{16}", out["card"]) and out["card"] != "4111111111111111"
    assert invert_view(tree, out) == {"customerId": "CUST1", "card": "4111111111111111"}


def test_when_the_subject_field_is_not_given_then_it_is_the_policys_subject(keyring):
    doc = policy_doc("sqlite:x.db", {"tokenize": "vault"})
    policy = compile_policy(doc, file="p.yaml")
    transform = policy.views["support"].tree.children["customerId"].transform
    assert transform.options["subject_field"] == doc["subject_field"] == "customerId"


@pytest.mark.parametrize(
    "params, param",
    [
        ({"format": "base64"}, "format"),  # unknown format
        ({"format": "digits", "prefix": "t_"}, "prefix"),  # digits tokens have no prefix
        ({"format": "digits", "length": 20}, "length"),  # nor a length of their own
        ({"length": 8}, "length"),  # too short to be unguessable
        ({"length": 60}, "length"),  # longer than base32 of the random bytes
        ({"prefix": 5}, "prefix"),  # not a string
        ({"vault": "redis://h"}, "vault"),  # unknown backend
        ({"vault": ""}, "vault"),  # empty reference
        ({"cache_size": -1}, "cache_size"),  # negative cache
        ({"colour": "red"}, "colour"),  # unknown parameter
    ],
)
def test_bad_parameters_are_refused_at_policy_time(params, param):
    with pytest.raises(ParamError) as info:
        registry.get("tokenize.vault")({"subject_field": "customerId", **params}, domain="d")
    assert info.value.param == param


def test_prefixed_tokens_are_random_and_stable(vault_ref, keyring):
    t = make(vault_ref, keyring, prefix="tok_", length=20)
    a, b = t.apply_in_record("CUST1", rec()), t.apply_in_record("CUST2", rec("CUST2"))
    assert re.fullmatch(r"tok_[a-z2-7]{20}", a) and a != b
    assert t.apply_in_record("CUST1", rec()) == a
    t.close()


def test_digits_tokens_keep_the_length_and_never_equal_the_value(vault_ref, keyring):
    t = make(vault_ref, keyring, domain="ssn", format="digits")
    values = [f"{n:09d}" for n in range(200)]
    tokens = [t.apply_in_record(v, rec()) for v in values]
    assert all(re.fullmatch(r"\d{9}", tok) for tok in tokens)
    assert all(tok != v for tok, v in zip(tokens, values, strict=True))
    assert len(set(tokens)) == len(tokens)
    t.close()


def test_when_a_digits_value_is_short_then_it_is_refused(vault_ref, keyring):
    t = make(vault_ref, keyring, domain="pin", format="digits")
    with pytest.raises(TransformError, match="6 or more characters") as info:
        t.apply_in_record("1234", rec())
    assert "1234" not in str(info.value)
    t.close()


def test_two_tasks_give_one_token_and_other_domains_another(vault_ref, keyring):
    t1, t2 = make(vault_ref, keyring), make(vault_ref, keyring)
    other = make(vault_ref, keyring, domain="order_ref")
    assert t1.apply_in_record("CUST1", rec()) == t2.apply_in_record("CUST1", rec())
    assert other.apply_in_record("CUST1", rec()) != t1.apply_in_record("CUST1", rec())
    for t in (t1, t2, other):
        t.close()


def test_invert_gives_the_original_with_its_type(vault_ref, keyring):
    t = make(vault_ref, keyring, domain="account")
    tok_int, tok_str = t.apply_in_record(123456, rec()), t.apply_in_record("ACC-9", rec())
    reader = make(vault_ref, keyring, domain="account")
    assert reader.invert(tok_int) == 123456
    assert reader.invert(tok_str) == "ACC-9"
    assert reader.invert(None) is None
    for x in (t, reader):
        x.close()


def test_when_the_subject_is_forgotten_then_its_tokens_no_longer_invert(vault_ref, keyring):
    t = make(vault_ref, keyring, domain="email")
    ann = t.apply_in_record("ann@example.com", rec("ANN"))
    bob = t.apply_in_record("bob@example.com", rec("BOB"))
    with Vault.open(vault_ref, keyring).closing() as v:
        v.forget("ANN")
    reader = make(vault_ref, keyring, domain="email")
    with pytest.raises(TransformError, match="subject forgotten"):
        reader.invert(ann)
    assert reader.invert(bob) == "bob@example.com"
    for x in (t, reader):
        x.close()


def test_repeated_values_are_served_by_the_cache(vault_ref, keyring):
    t = make(vault_ref, keyring)
    calls = []
    real = t._vault.backend.one
    t._vault.backend.one = lambda *a: calls.append(a[0]) or real(*a)
    t.apply_in_record("CUST1", rec())
    first = len(calls)
    for _ in range(50):
        t.apply_in_record("CUST1", rec())
    assert first > 0 and len(calls) == first
    t.close()


def test_the_cache_is_bounded(vault_ref, keyring):
    t = make(vault_ref, keyring, cache_size=2)
    for v in ("A1", "A2", "A3", "A4"):
        t.apply_in_record(v, rec(v))
    assert len(t._cache._data) == 2
    t.close()


def test_without_a_cache_the_vault_is_asked_every_time(vault_ref, keyring):
    t = make(vault_ref, keyring, cache_size=0)
    assert t.apply_in_record("CUST1", rec()) == t.apply_in_record("CUST1", rec())
    assert len(t._cache._data) == 0
    t.close()


@pytest.mark.parametrize(
    "value, reason",
    [
        (1.5, "expected a string or an integer, got float"),  # floats are not identifiers
        (True, "expected a string or an integer, got bool"),  # nor booleans
        (["a"], "expected a string or an integer, got list"),  # nor lists
    ],
)
def test_values_of_other_types_are_refused(value, reason, tmp_path, keyring):
    t = make(f"sqlite:{tmp_path / 'v.db'}", keyring)
    with pytest.raises(TransformError, match=reason):
        t.apply_in_record(value, rec())
    t.close()


def test_missing_values_pass_and_a_missing_subject_is_a_reason_without_the_value(tmp_path, keyring, caplog):
    t = make(f"sqlite:{tmp_path / 'v.db'}", keyring)
    assert t.apply_in_record(None, rec()) is None
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransformError, match="subject field customerId is missing") as info:
        t.apply_in_record("secret-id-77", {"name": "x"})
    assert "secret-id-77" not in str(info.value) and "secret-id-77" not in caplog.text
    with pytest.raises(TransformError, match="needs the whole record"):
        t.apply("secret-id-77")
    t.close()


def test_the_transform_pickles_before_open(tmp_path):
    import pickle

    t = registry.get("tokenize.vault")({"subject_field": "customerId", "vault": f"sqlite:{tmp_path / 'v.db'}"},
                                       domain="d")
    clone = pickle.loads(pickle.dumps(t))
    assert clone.subject_path == ("customerId",) and clone.vault_reference == t.vault_reference


def test_the_default_vault_comes_from_the_environment(tmp_path, keyring, monkeypatch):
    path = tmp_path / "env.db"
    monkeypatch.setenv("ANON_VAULT", f"sqlite:{path}")
    t = registry.get("tokenize.vault")({"subject_field": "customerId"}, domain="d")
    t.open(keyring)
    t.apply_in_record("CUST1", rec())
    assert path.exists()
    t.close()
