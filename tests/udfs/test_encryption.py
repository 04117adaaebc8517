"""AES-GCM (randomized) and AES-SIV (deterministic) field encryption: round trips, key ids, rotation, tampering."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import registry
from udfs.keyring import PURPOSES, Key, Keyring, KeyringError
from udfs.registry import Transform, TransformError

RING = Keyring.generate(["encrypt", "siv"])
SCHEMES = [
    ("encrypt.aes_gcm", "g1", "encrypt"),  # randomized
    ("encrypt.aes_siv", "s1", "siv"),  # deterministic
]
NAMES = [name for name, _, _ in SCHEMES]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def make(name: str, keyring: Keyring = RING, domain: str = "email", **params) -> Transform:
    transform = registry.get(name)(params, domain=domain)
    transform.open(keyring)
    return transform


def _flip_last_byte(token: str) -> str:
    scheme, key_id, body = token.split(".", 2)
    blob = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    blob[-1] ^= 0x01
    return f"{scheme}.{key_id}." + base64.urlsafe_b64encode(bytes(blob)).decode().rstrip("=")


@pytest.mark.parametrize(("name", "scheme", "purpose"), SCHEMES)
def test_ciphertext_names_the_scheme_and_the_active_key(name, scheme, purpose):
    token = make(name).apply("jane@example.com")
    head, key_id, body = token.split(".", 2)
    assert head == scheme
    assert key_id == RING.active[purpose]
    assert "jane" not in token and body


@pytest.mark.parametrize(
    "value",
    [
        "jane@example.com",  # a string
        1234.5,  # a number decrypts back to a number
        42,  # an integer stays an integer
        True,  # a bool
        {"street": "1 Main St", "zip": "94102"},  # an object
        ["a", 1],  # a list
        "",  # empty string
        "ünïcödé ✓",  # non-ASCII
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_invert_gives_back_the_value_with_its_json_type(name, value):
    transform = make(name)
    out = transform.invert(transform.apply(value))
    assert out == value and type(out) is type(value)


@pytest.mark.parametrize("name", NAMES)
def test_null_stays_null_both_ways(name):
    assert make(name).apply(None) is None
    assert make(name).invert(None) is None


def test_aes_gcm_is_randomized():
    transform = make("encrypt.aes_gcm")
    assert transform.apply("jane@example.com") != transform.apply("jane@example.com")
    assert registry.get("encrypt.aes_gcm").deterministic is False


def test_aes_siv_is_deterministic_and_joinable_across_instances():
    assert make("encrypt.aes_siv").apply("jane@example.com") == make("encrypt.aes_siv").apply("jane@example.com")
    assert make("encrypt.aes_siv").apply("jane@example.com") != make("encrypt.aes_siv").apply("john@example.com")
    assert registry.get("encrypt.aes_siv").deterministic is True


@pytest.mark.parametrize("name", NAMES)
def test_both_are_reversible(name):
    assert registry.get(name).reversible is True


@pytest.mark.parametrize(("name", "scheme", "purpose"), SCHEMES)
def test_after_rotation_old_ciphertexts_still_decrypt_and_new_ones_use_the_new_key(name, scheme, purpose):
    ring = Keyring.generate([purpose])
    old_id = ring.active[purpose]
    old_token = make(name, ring).apply("4111111111111111")
    new_key = ring.add(purpose)
    after = make(name, ring)
    new_token = after.apply("4111111111111111")
    assert new_token.split(".")[1] == new_key.id != old_id
    assert after.invert(old_token) == "4111111111111111"
    assert after.invert(new_token) == "4111111111111111"


def test_aes_siv_changes_after_rotation():
    ring = Keyring.generate(["siv"])
    before = make("encrypt.aes_siv", ring).apply("C1")
    ring.add("siv")
    assert make("encrypt.aes_siv", ring).apply("C1") != before


@pytest.mark.parametrize("name", NAMES)
def test_a_different_key_gives_a_different_ciphertext_and_cannot_decrypt_it(name):
    purpose = registry.get(name).key_purpose
    key_id = RING.active[purpose]
    # the same key id with other material: the tag must not verify
    other = Keyring({key_id: Key(key_id, purpose, bytes(PURPOSES[purpose]))}, {purpose: key_id})
    token = make(name).apply("jane@example.com")
    assert make(name, other).apply("jane@example.com") != token
    with pytest.raises(TransformError) as exc:
        make(name, other).invert(token)
    assert str(exc.value) == f"{name}: ciphertext does not authenticate under key {RING.active[purpose]}"


@pytest.mark.parametrize("name", NAMES)
def test_when_ciphertext_is_tampered_then_refused(name):
    transform = make(name)
    with pytest.raises(TransformError, match="does not authenticate"):
        transform.invert(_flip_last_byte(transform.apply("jane@example.com")))


@pytest.mark.parametrize("name", NAMES)
def test_when_ciphertext_is_moved_to_another_domain_then_refused(name):
    token = make(name, domain="email").apply("jane@example.com")
    with pytest.raises(TransformError, match="does not authenticate"):
        make(name, domain="ssn").invert(token)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("plain text", "not a {scheme} ciphertext"),  # not a token at all
        ("{other}.{key}.AAAA", "not a {scheme} ciphertext"),  # the other scheme
        ("{scheme}.{key}.", "not a {scheme} ciphertext"),  # no body
        ("{scheme}..AAAA", "not a {scheme} ciphertext"),  # no key id
        ("{scheme}.{key}.ü", "ciphertext is not base64url"),  # not base64
        ("{scheme}.{key}.AAAA", "does not authenticate"),  # too short to hold a nonce and a tag
        ("{scheme}.{key}." + "A" * 40, "does not authenticate"),  # right size, garbage
    ],
)
@pytest.mark.parametrize(("name", "scheme", "purpose"), SCHEMES)
def test_when_ciphertext_is_malformed_then_transform_error(name, scheme, purpose, token, reason):
    other = "s1" if scheme == "g1" else "g1"
    token = token.format(scheme=scheme, other=other, key=RING.active[purpose])
    with pytest.raises(TransformError) as exc:
        make(name).invert(token)
    assert reason.format(scheme=scheme) in str(exc.value)


@pytest.mark.parametrize(("name", "scheme", "purpose"), SCHEMES)
def test_when_ciphertext_names_an_unknown_key_then_transform_error(name, scheme, purpose):
    # a forged or foreign key id must be refused like any other bad ciphertext, not crash the reader
    body = make(name).apply("x").split(".", 2)[2]
    with pytest.raises(TransformError):
        make(name).invert(f"{scheme}.{purpose}-19700101-000000.{body}")


@pytest.mark.parametrize("name", NAMES)
def test_invert_of_a_non_string_is_refused(name):
    with pytest.raises(TransformError) as exc:
        make(name).invert(12345)
    assert str(exc.value) == f"{name}: ciphertext must be a string"


@pytest.mark.parametrize(("name", "scheme", "purpose"), SCHEMES)
def test_when_the_keyring_lacks_the_purpose_then_open_refuses(name, scheme, purpose):
    transform = registry.get(name)({}, domain="email")
    with pytest.raises(KeyringError) as exc:
        transform.open(Keyring.generate(["pseudonym"]))
    assert f"no active '{purpose}' key" in str(exc.value)


# -- property tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(value=JSON_VALUES)
def test_any_json_value_round_trips(name, value):
    transform = make(name)
    token = transform.invert(transform.apply(value))
    assert json.dumps(token, sort_keys=True) == json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=12))
def test_ciphertext_never_contains_the_plain_string(name, value):
    assert value not in make(name).apply(value)


@settings(max_examples=100, deadline=None)
@given(value=st.text())
def test_aes_siv_is_deterministic_for_any_string_and_differs_under_another_key(value):
    other = Keyring.generate(["siv"])
    assert make("encrypt.aes_siv").apply(value) == make("encrypt.aes_siv").apply(value)
    assert make("encrypt.aes_siv").apply(value).split(".")[2] != make("encrypt.aes_siv", other).apply(value).split(".")[2]


@pytest.mark.parametrize(("name", "scheme", "purpose"), SCHEMES)
@settings(max_examples=100, deadline=None)
@given(body=st.text(), data=st.data())
def test_invert_of_any_string_is_a_value_or_a_transform_error(name, scheme, purpose, body, data):
    # a whole arbitrary string, or a well-formed head with an arbitrary body
    token = data.draw(st.sampled_from([body, f"{scheme}.{RING.active[purpose]}.{body}"]))
    try:
        make(name).invert(token)
    except TransformError:
        pass  # refused as a bad ciphertext: fine; any other exception fails the test
