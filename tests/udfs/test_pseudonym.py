"""HMAC-SHA256 pseudonyms: hex or base32, length, prefix, embedded key id, per-domain keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import registry
from udfs.keyring import Keyring, derive
from udfs.registry import ParamError, Transform, TransformError

MATERIAL = bytes(range(32))
RING = Keyring({}, {})
KEY = RING.add("pseudonym", material=MATERIAL)
RING_B = Keyring.generate(["pseudonym"])


def make(keyring: Keyring = RING, domain: str = "customer_id", **params) -> Transform:
    transform = registry.get("pseudonymize.hmac_sha256")(params, domain=domain)
    transform.open(keyring)
    return transform


def expected_digest(value: str, domain: str = "customer_id") -> bytes:
    return hmac.new(derive(MATERIAL, "pseudonym", domain), value.encode(), hashlib.sha256).digest()


def test_known_answer_hex_is_the_hmac_under_the_domain_key():
    assert make().apply("CUST12345") == expected_digest("CUST12345").hex()[:32]


def test_known_answer_base32_is_lower_case_without_padding():
    want = base64.b32encode(expected_digest("CUST12345")).decode().rstrip("=").lower()[:20]
    assert make(encoding="base32", length=20).apply("CUST12345") == want


def test_derive_is_hkdf_expand_with_sha256():
    # RFC 5869 expand, one block: T(1) = HMAC(PRK, info || 0x01)
    want = hmac.new(MATERIAL, b"pseudonym\x1fcustomer_id\x01", hashlib.sha256).digest()
    assert derive(MATERIAL, "pseudonym", "customer_id") == want


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({}, r"[0-9a-f]{32}"),  # default: 32 hex characters
        ({"length": 8}, r"[0-9a-f]{8}"),  # shortest allowed
        ({"length": 64}, r"[0-9a-f]{64}"),  # the whole hex digest
        ({"encoding": "base32"}, r"[a-z2-7]{32}"),  # base32 alphabet, lower case
        ({"encoding": "base32", "length": 52}, r"[a-z2-7]{52}"),  # the whole base32 digest
        ({"prefix": "cus_", "length": 24}, r"cus_[0-9a-f]{24}"),  # prefix prepended
    ],
)
def test_encoding_length_and_prefix_shape_the_pseudonym(params, pattern):
    assert re.fullmatch(pattern, make(**params).apply("CUST12345"))


def test_embed_key_id_writes_the_key_id_before_the_digest():
    out = make(prefix="cus_", embed_key_id=True, length=16).apply("CUST12345")
    assert out == f"cus_{KEY.id}:" + expected_digest("CUST12345").hex()[:16]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"length": 7}, "length"),  # below 8
        ({"length": 65}, "length"),  # longer than a hex digest
        ({"encoding": "base32", "length": 53}, "length"),  # longer than a base32 digest
        ({"length": "32"}, "length"),  # a string
        ({"encoding": "base64"}, "encoding"),  # unknown encoding
        ({"prefix": 5}, "prefix"),  # not a string
        ({"salt": "x"}, "salt"),  # unknown parameter
    ],
)
def test_when_a_parameter_is_bad_then_refused(params, param):
    with pytest.raises(ParamError) as exc:
        registry.get("pseudonymize.hmac_sha256")(params)
    assert exc.value.param == param


def test_same_identifier_same_pseudonym_across_fields_of_one_domain():
    assert make(domain="customer_id").apply("C1") == make(domain="customer_id").apply("C1")


def test_different_domains_give_different_pseudonyms():
    assert make(domain="customer_id").apply("C1") != make(domain="account_id").apply("C1")


def test_an_integer_and_its_string_give_the_same_pseudonym():
    # ids arrive as numbers from one producer and strings from another; joins must still work
    assert make().apply(12345) == make().apply("12345")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (True, "bool"),  # a bool is not an id
        (1.5, "float"),  # a float
        ({"id": 1}, "dict"),  # an object
    ],
)
def test_when_value_is_not_a_string_or_integer_then_transform_error(value, type_name):
    with pytest.raises(TransformError) as exc:
        make().apply(value)
    assert str(exc.value) == f"pseudonymize.hmac_sha256 expected a string or an integer, got {type_name}"


def test_null_passes_through():
    assert make().apply(None) is None


def test_a_pinned_key_id_is_used_instead_of_the_active_key():
    ring = Keyring({}, {})
    old = ring.add("pseudonym", material=MATERIAL)
    ring.add("pseudonym")  # a newer active key
    pinned = make(keyring=ring, key_id=old.id)
    assert pinned.key_id == old.id
    assert pinned.apply("C1") == expected_digest("C1").hex()[:32]
    assert make(keyring=ring).apply("C1") != pinned.apply("C1")


# -- property tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {},  # hex
        {"encoding": "base32", "length": 40, "prefix": "p_"},  # base32 with a prefix
    ],
)
@settings(max_examples=100, deadline=None)
@given(value=st.text())
def test_no_crash_on_any_string_deterministic_and_shaped(params, value):
    out = make(**params).apply(value)
    assert out == make(**params).apply(value)
    if params:
        assert re.fullmatch(r"p_[a-z2-7]{40}", out)
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", out)


@settings(max_examples=100, deadline=None)
@given(value=st.text())
def test_a_different_key_gives_a_different_pseudonym(value):
    assert make(RING).apply(value) != make(RING_B).apply(value)


@settings(max_examples=100, deadline=None)
@given(a=st.text(), b=st.text())
def test_different_identifiers_give_different_pseudonyms(a, b):
    if a != b:
        assert make().apply(a) != make().apply(b)
