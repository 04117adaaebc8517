"""Keyring: ids, active key per purpose, env:/file: references, derive; material never shown."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from udfs.keyring import PURPOSES, Key, Keyring, KeyringError, derive, load_keyring


def _material_texts(ring: Keyring) -> list[str]:
    """Every form in which key material could leak: base64, hex and the bytes repr."""
    out = []
    for key in ring.keys.values():
        out += [base64.b64encode(key.material).decode(), key.material.hex(), repr(key.material)]
    return out


def test_generate_makes_one_active_key_of_the_right_length_per_purpose(keyring):
    assert set(keyring.active) == set(PURPOSES)
    for purpose, length in PURPOSES.items():
        key = keyring.resolve(purpose)
        assert key.purpose == purpose and len(key.material) == length
        assert key.id.startswith(f"{purpose}-")


def test_generate_with_purposes_makes_only_those():
    ring = Keyring.generate(["pseudonym", "siv"])
    assert sorted(ring.active) == ["pseudonym", "siv"]
    assert len(ring.resolve("siv").material) == 64


def test_add_makes_the_new_key_active_and_keeps_the_old(keyring):
    old = keyring.resolve("encrypt")
    new = keyring.add("encrypt")
    assert keyring.resolve("encrypt") == new
    assert keyring.resolve("encrypt", old.id) == old
    assert sorted(keyring.ids("encrypt")) == sorted([old.id, new.id])


def test_add_without_activating_keeps_the_active_key(keyring):
    active = keyring.active["fpe"]
    staged = keyring.add("fpe", activate=False)
    assert keyring.active["fpe"] == active
    assert keyring.resolve("fpe", staged.id) == staged


def test_when_purpose_is_unknown_then_add_refuses(keyring):
    with pytest.raises(KeyringError, match="unknown purpose 'signing'"):
        keyring.add("signing")


@pytest.mark.parametrize(
    ("purposes", "purpose", "key_id", "message"),
    [
        (["encrypt"], "pseudonym", None, "has no active 'pseudonym' key"),  # purpose missing
        (["encrypt"], "encrypt", "encrypt-19700101-000000", "has no key with id 'encrypt-19700101-000000'"),  # id missing
    ],
)
def test_when_a_key_is_missing_then_resolve_says_which(purposes, purpose, key_id, message):
    ring = Keyring.generate(purposes)
    with pytest.raises(KeyringError, match=message):
        ring.resolve(purpose, key_id)


def test_when_a_key_id_belongs_to_another_purpose_then_resolve_refuses(keyring):
    with pytest.raises(KeyringError, match="is for 'encrypt', not 'siv'"):
        keyring.resolve("siv", keyring.active["encrypt"])


def test_json_round_trip_keeps_ids_material_and_active(keyring):
    again = Keyring.from_json(keyring.to_json())
    assert again.active == keyring.active
    assert {k: (v.purpose, v.material) for k, v in again.keys.items()} == {
        k: (v.purpose, v.material) for k, v in keyring.keys.items()
    }


def test_save_writes_mode_0600(tmp_path, keyring):
    path = tmp_path / "sub" / "keyring.json"
    keyring.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_keyring(f"file:{path}").active == keyring.active


def test_save_is_0600_even_when_a_stale_temp_file_is_in_the_way(tmp_path, keyring):
    # a temp file left by someone else (or a crash under another umask) must not lend its mode to the keyring
    path = tmp_path / "keyring.json"
    stale = path.with_suffix(".tmp")
    stale.write_text("")
    os.chmod(stale, 0o644)
    keyring.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_load_from_env(monkeypatch, keyring):
    monkeypatch.setenv("TEST_KEYRING", keyring.to_json())
    ring = load_keyring("env:TEST_KEYRING")
    assert ring.active == keyring.active and ring.source == "env:TEST_KEYRING"


def test_load_from_file_and_from_a_bare_path(tmp_path, keyring):
    path = tmp_path / "k.json"
    keyring.save(path)
    assert load_keyring(f"file:{path}").active == keyring.active
    assert load_keyring(str(path)).active == keyring.active


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("", "no keyring given"),  # nothing
        ("env:TEST_KEYRING_UNSET", r"keyring variable \$TEST_KEYRING_UNSET is not set"),  # unset variable
        ("file:/nonexistent/k.json", "does not exist; create it with: flink-anonymizer keys new"),  # no file
    ],
)
def test_when_the_reference_leads_nowhere_then_a_clear_error(monkeypatch, reference, message):
    monkeypatch.delenv("TEST_KEYRING_UNSET", raising=False)
    with pytest.raises(KeyringError, match=message):
        load_keyring(reference)


def _doc(keyring: Keyring) -> dict:
    return json.loads(keyring.to_json())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: "{not json", "is not valid JSON"),  # broken JSON
        (lambda d: [], "expected an object with a 'keys' list"),  # a list
        (lambda d: {**d, "keys": [5]}, r"keys\[0\]: expected an object"),  # a key that is a number
        (lambda d: {**d, "keys": [{**d["keys"][0], "id": 5}]}, "missing string 'id'"),  # id not a string
        (lambda d: {**d, "keys": [{**d["keys"][0], "purpose": "x"}]}, "unknown purpose 'x'"),  # unknown purpose
        (lambda d: {**d, "keys": [{**d["keys"][0], "material": "!!!"}]}, "material is not base64"),  # not base64
        (lambda d: {**d, "keys": [{**d["keys"][0], "material": "AAAA"}]}, "must be 32 bytes, got 3"),  # too short
        (lambda d: {**d, "active": []}, "'active' must map purpose to key id"),  # active is a list
        (lambda d: {**d, "active": {"encrypt": "nope"}}, "active 'encrypt' key 'nope' is not in 'keys'"),  # dangling
    ],
)
def test_when_the_keyring_is_malformed_then_refused_without_material(mutate, message):
    ring = Keyring.generate(["encrypt"])
    doc = mutate(_doc(ring))
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(KeyringError, match=message) as exc:
        Keyring.from_json(text, source="file:test.json")
    assert "file:test.json" in str(exc.value)
    for secret in _material_texts(ring):
        assert secret not in str(exc.value)


def test_repr_of_keys_and_keyrings_never_shows_material(keyring):
    shown = repr(keyring) + str(keyring) + "".join(repr(k) + str(k) for k in keyring.keys.values())
    for secret in _material_texts(keyring):
        assert secret not in shown
    key = keyring.resolve("encrypt")
    assert repr(key) == f"Key(id={key.id!r}, purpose='encrypt')"


def test_transform_repr_never_shows_material(keyring):
    from udfs import registry

    transform = registry.get("encrypt.aes_gcm")({}, domain="email")
    transform.open(keyring)
    for secret in _material_texts(keyring):
        assert secret not in repr(transform)


def test_errors_from_resolve_never_show_material(keyring):
    for purpose, key_id in (("siv", keyring.active["encrypt"]), ("encrypt", "nope")):
        with pytest.raises(KeyringError) as exc:
            keyring.resolve(purpose, key_id)
        for secret in _material_texts(keyring):
            assert secret not in str(exc.value)


# -- derive -----------------------------------------------------------------------------------------
def test_derive_gives_different_keys_per_label_and_the_same_for_the_same_label():
    material = bytes(32)
    assert derive(material, "pseudonym", "email") == derive(material, "pseudonym", "email")
    assert derive(material, "pseudonym", "email") != derive(material, "pseudonym", "ssn")
    assert derive(material, "pseudonym", "email") != derive(bytes([1]) * 32, "pseudonym", "email")


def test_derive_label_boundaries_are_not_ambiguous():
    # ("ab", "c") and ("a", "bc") must not give the same key
    assert derive(bytes(32), "ab", "c") != derive(bytes(32), "a", "bc")


@pytest.mark.parametrize(
    "length",
    [
        16,  # shorter than a block
        32,  # one block
        64,  # two blocks (the SIV length)
    ],
)
def test_derive_length_and_prefix_stability(length):
    out = derive(bytes(32), "x", length=length)
    assert len(out) == length
    assert derive(bytes(32), "x", length=64)[:length] == out


def test_key_dataclass_never_shows_material_even_when_built_by_hand():
    key = Key("k1", "encrypt", b"\x01" * 32)
    assert "\\x01" not in repr(key) and "AQEB" not in repr(key)
