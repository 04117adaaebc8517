"""FF3-1 core: the ACVP vectors, the NIST FF3 samples, and byte-equality with the ``ff3`` package."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from ff3 import FF3Cipher
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs.ff3_1 import FF3_1, max_length
from udfs.fpe_cipher import FPEError

DATA = Path(__file__).parents[1] / "data"
ACVP = json.loads((DATA / "ff3-1-acvp.json").read_text())["vectors"]
FF3_SAMPLES = json.loads((DATA / "ff3-nist-samples.json").read_text())["vectors"]


def _id(vector):
    return f"radix{vector['radix']}-aes{len(vector['key']) * 4}-n{len(vector['plaintext'])}"


@pytest.mark.parametrize("vector", ACVP, ids=[_id(v) for v in ACVP])
def test_acvp_vector_encrypts_to_its_ciphertext(vector):
    # ACVP AES-FF3-1 test groups 1-9: radix 10, 26 and 64, AES-128/192/256, shortest and longest lengths
    cipher = FF3_1(bytes.fromhex(vector["key"]), vector["alphabet"])
    assert cipher.encrypt(vector["plaintext"], bytes.fromhex(vector["tweak"])) == vector["ciphertext"]


@pytest.mark.parametrize("vector", ACVP, ids=[_id(v) for v in ACVP])
def test_acvp_vector_decrypts_to_its_plaintext(vector):
    # the same eighteen vectors, run backwards
    cipher = FF3_1(bytes.fromhex(vector["key"]), vector["alphabet"])
    assert cipher.decrypt(vector["ciphertext"], bytes.fromhex(vector["tweak"])) == vector["plaintext"]


@pytest.mark.parametrize("vector", FF3_SAMPLES, ids=[_id(v) for v in FF3_SAMPLES])
def test_nist_ff3_sample_with_64_bit_tweak_round_trips(vector):
    # the original FF3 samples (64-bit tweaks), kept so old data can still be read
    cipher = FF3_1(bytes.fromhex(vector["key"]), vector["alphabet"])
    tweak = bytes.fromhex(vector["tweak"])
    assert cipher.encrypt(vector["plaintext"], tweak) == vector["ciphertext"]
    assert cipher.decrypt(vector["ciphertext"], tweak) == vector["plaintext"]


def test_all_acvp_vectors_of_the_ff3_package_are_present():
    assert len(ACVP) == 18
    assert {v["radix"] for v in ACVP} == {10, 26, 64}


_ALPHABETS = [
    string.digits,  # decimal
    string.ascii_lowercase,  # radix 26
    string.digits + string.ascii_lowercase + string.ascii_uppercase,  # radix 62
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/",  # radix 64 of the ACVP vectors
    "01",  # binary: the longest values
    "ABC",  # radix 3
    string.digits + string.ascii_lowercase + string.ascii_uppercase + "ÄäÖöÜüẞß",  # radix 70, non-ASCII
]


@settings(max_examples=400, deadline=None)
@given(
    key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    tweak=st.binary(min_size=7, max_size=7),
    alphabet=st.sampled_from(_ALPHABETS),
    data=st.data(),
)
def test_output_is_byte_equal_to_the_ff3_package_on_random_inputs(key, tweak, alphabet, data):
    ours = FF3_1(key, alphabet)
    text = data.draw(st.text(alphabet=alphabet, min_size=ours.min_len, max_size=ours.max_len))
    reference = FF3Cipher.withCustomAlphabet(key.hex(), tweak.hex(), alphabet)
    encrypted = ours.encrypt(text, tweak)
    assert encrypted == reference.encrypt(text)
    assert ours.decrypt(text, tweak) == reference.decrypt(text)
    assert ours.decrypt(encrypted, tweak) == text


@pytest.mark.parametrize(
    ("radix", "shortest", "longest"),
    [
        (10, 6, 56),  # 10**6 = a million; 2 * floor(log10(2**96)) = 56
        (26, 5, 40),  # the ff3 package's "max 40 with radix 26"
        (2, 20, 192),  # binary
        (65536, 2, 12),  # the largest radix the standard allows
    ],
)
def test_length_limits_match_the_standard(radix, shortest, longest):
    alphabet = "".join(chr(0x100 + i) for i in range(radix))
    cipher = FF3_1(bytes(16), alphabet)
    assert (cipher.min_len, cipher.max_len) == (shortest, longest)
    assert max_length(radix) == longest


def test_when_domain_below_a_million_then_refused():
    with pytest.raises(FPEError, match="too short for ff3-1"):
        FF3_1(bytes(16)).encrypt("12345", bytes(7))


def test_when_longer_than_56_digits_then_refused():
    cipher = FF3_1(bytes(16))
    cipher.encrypt("1" * 56, bytes(7))
    with pytest.raises(FPEError, match="too long for ff3-1"):
        cipher.encrypt("1" * 57, bytes(7))


@pytest.mark.parametrize(
    "tweak",
    [
        b"",  # empty
        bytes(6),  # 48 bits
        bytes(9),  # 72 bits
    ],
)
def test_when_tweak_is_not_56_or_64_bits_then_refused(tweak):
    with pytest.raises(FPEError, match="7 bytes"):
        FF3_1(bytes(16)).encrypt("1234567890", tweak)
