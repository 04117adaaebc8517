"""FF1 core: the NIST samples, round trips, a literal reference, and the domain rules."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs.ff1 import FF1, FF1_MAX_LEN
from udfs.fpe_cipher import Alphabet, FPEError, min_length

SAMPLES = json.loads((Path(__file__).parents[1] / "data" / "nist-ff1-samples.json").read_text())["samples"]
SAMPLE_IDS = [f"sample{s['sample']}" for s in SAMPLES]


@pytest.mark.parametrize("sample", SAMPLES, ids=SAMPLE_IDS)
def test_nist_sample_encrypts_to_its_ciphertext(sample):
    # samples 1-3 AES-128, 4-6 AES-192, 7-9 AES-256; 3, 6 and 9 are radix 36 with an 11-byte tweak
    cipher = FF1(bytes.fromhex(sample["key"]), sample["alphabet"])
    assert cipher.encrypt(sample["plaintext"], bytes.fromhex(sample["tweak"])) == sample["ciphertext"]


@pytest.mark.parametrize("sample", SAMPLES, ids=SAMPLE_IDS)
def test_nist_sample_decrypts_to_its_plaintext(sample):
    # the same nine samples, run backwards
    cipher = FF1(bytes.fromhex(sample["key"]), sample["alphabet"])
    assert cipher.decrypt(sample["ciphertext"], bytes.fromhex(sample["tweak"])) == sample["plaintext"]


def test_all_nine_samples_are_present_including_radix_36():
    assert [s["sample"] for s in SAMPLES] == list(range(1, 10))
    assert sum(len(s["alphabet"]) == 36 for s in SAMPLES) == 3


def _reference_ff1(key: bytes, radix: int, tweak: bytes, x: list[int], decrypt: bool = False) -> list[int]:
    """SP 800-38G Algorithms 7 and 8, written step by step with no shortcut, over numeral lists."""
    n, t = len(x), len(tweak)
    u, v = n // 2, n - n // 2
    a, b = x[:u], x[u:]

    def num(xs):
        out = 0
        for d in xs:
            out = out * radix + d
        return out

    def strm(value, m):
        out = []
        for _ in range(m):
            value, d = divmod(value, radix)
            out.append(d)
        return out[::-1]

    import math

    # b = ceil(ceil(v * log2(radix)) / 8); exact integers instead of a float logarithm
    bb = ((radix**v - 1).bit_length() + 7) // 8
    d = 4 * math.ceil(bb / 4) + 4
    p = bytes([1, 2, 1]) + radix.to_bytes(3, "big") + bytes([10, u % 256]) + n.to_bytes(4, "big") + t.to_bytes(4, "big")

    def prf(data):
        enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
        return (enc.update(data) + enc.finalize())[-16:]

    def ciph(block):
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return enc.update(block) + enc.finalize()

    rounds = range(9, -1, -1) if decrypt else range(10)
    for i in rounds:
        side = a if decrypt else b
        q = tweak + bytes((-t - bb - 1) % 16) + bytes([i]) + num(side).to_bytes(bb, "big")
        r = prf(p + q)
        s = r
        j = 1
        while len(s) < d:
            s += ciph(bytes(x ^ y for x, y in zip(r, j.to_bytes(16, "big"), strict=True)))
            j += 1
        y = int.from_bytes(s[:d], "big")
        m = u if i % 2 == 0 else v
        if decrypt:
            c = (num(b) - y) % radix**m
            a, b = strm(c, m), a
        else:
            c = (num(a) + y) % radix**m
            a, b = b, strm(c, m)
    return a + b


@settings(max_examples=150, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16) | st.binary(min_size=32, max_size=32),
    radix=st.sampled_from([2, 3, 10, 26, 36, 62, 64, 255, 1000, 65536]),
    tweak=st.binary(max_size=40),
    data=st.data(),
)
def test_ff1_equals_a_literal_reading_of_the_standard(key, radix, tweak, data):
    # long values reach the multi-block MAC and the d > 16 paths the NIST samples never touch
    n = data.draw(st.integers(min_length(radix), min_length(radix) + 70))
    numerals = data.draw(st.lists(st.integers(0, radix - 1), min_size=n, max_size=n))
    alphabet = Alphabet("".join(chr(0x100 + i) for i in range(radix))) if radix > 62 else Alphabet(
        (string.digits + string.ascii_lowercase + string.ascii_uppercase + "+/")[:radix]
    )
    text = "".join(alphabet.chars[d] for d in numerals)
    expected = "".join(alphabet.chars[d] for d in _reference_ff1(key, radix, tweak, numerals))
    cipher = FF1(key, alphabet)
    assert cipher.encrypt(text, tweak) == expected
    assert "".join(alphabet.chars[d] for d in _reference_ff1(key, radix, tweak, numerals, decrypt=True)) == cipher.decrypt(
        text, tweak
    )


@settings(max_examples=200, deadline=None)
@given(
    alphabet=st.sampled_from(["digits", "hex", "alphanumeric", "lower", "01", "⁰¹²³⁴⁵⁶⁷⁸⁹", "ABC"]),
    tweak=st.binary(max_size=24),
    data=st.data(),
)
def test_decrypt_reverses_encrypt_for_every_alphabet(alphabet, tweak, data):
    cipher = FF1(bytes(range(32)), alphabet)
    chars = cipher.alphabet.chars
    text = data.draw(st.text(alphabet=chars, min_size=cipher.min_len, max_size=cipher.min_len + 60))
    out = cipher.encrypt(text, tweak)
    assert len(out) == len(text) and set(out) <= set(chars)
    assert cipher.decrypt(out, tweak) == text


def test_different_tweaks_give_different_outputs():
    cipher = FF1(bytes(16))
    assert cipher.encrypt("4111111111111111", b"card") != cipher.encrypt("4111111111111111", b"pan")


@pytest.mark.parametrize(
    ("alphabet", "shortest"),
    [
        ("digits", 6),  # 10**6 is exactly a million
        ("alphanumeric", 4),  # 62**3 < 10**6 <= 62**4
        ("01", 20),  # 2**20 = 1,048,576
        ("".join(chr(0x100 + i) for i in range(1000)), 2),  # 1000**2 = 10**6, and never under 2 symbols
    ],
)
def test_when_domain_below_a_million_then_refused(alphabet, shortest):
    cipher = FF1(bytes(16), alphabet)
    assert cipher.min_len == shortest
    chars = cipher.alphabet.chars
    cipher.encrypt(chars[1] * shortest)
    with pytest.raises(FPEError, match="too short for ff1"):
        cipher.encrypt(chars[1] * (shortest - 1))


def test_when_longer_than_the_maximum_then_refused():
    cipher = FF1(bytes(16))
    cipher.encrypt("7" * FF1_MAX_LEN)
    with pytest.raises(FPEError, match="too long for ff1"):
        cipher.encrypt("7" * (FF1_MAX_LEN + 1))


@pytest.mark.parametrize(
    "value",
    [
        "12345678x0",  # a letter in a digit string
        "１２３４５６７８",  # full-width digits pass str.isdigit
        " 12345678",  # int() would strip the space
        "1234_5678",  # int() would accept the underscore
        "+12345678",  # int() would accept the sign
    ],
)
def test_when_a_symbol_is_outside_the_alphabet_then_refused_without_quoting_it(value):
    with pytest.raises(FPEError) as info:
        FF1(bytes(16)).encrypt(value)
    assert value not in str(info.value) and "x0" not in str(info.value)


def test_when_key_length_is_wrong_then_refused():
    with pytest.raises(FPEError, match="16, 24 or 32 bytes"):
        FF1(bytes(15))


def test_a_cipher_cannot_be_pickled_with_its_key():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(FF1(bytes(16)))
    assert "key" not in repr(FF1(bytes(16)))
