"""The ``fpe.ff1`` and ``fpe.ff3_1`` transforms: formats, Luhn, domain refusals, tweaks, cache, CLI."""

from __future__ import annotations

import argparse
import json
import math
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flink_jobs.cli import fpe as cli_fpe
from udfs import registry
from udfs.fpe import luhn_valid
from udfs.keyring import Keyring
from udfs.registry import MISSING, ParamError, TransformError

ALGORITHMS = ["ff1", "ff3_1"]
RING = Keyring.generate(["fpe"])
SAMPLES = json.loads((Path(__file__).parents[1] / "data" / "nist-ff1-samples.json").read_text())["samples"]


def make(spec: dict, domain: str = "card", keyring: Keyring | None = RING):
    """Build a transform the way the policy checker does: family key, variant, then parameters."""
    params = dict(spec)
    name = f"fpe.{params.pop('fpe')}"
    transform = registry.get(name)(params, domain=domain)
    if keyring is not None:
        transform.open(keyring)
    return transform


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str(-total % 10)


def test_the_design_policy_form_validates_and_round_trips():
    card = make({"fpe": "ff1", "alphabet": "digits", "preserve": "luhn"})
    out = card.apply("4511939257737224")
    assert len(out) == 16 and out.isdigit() and out != "4511939257737224"
    assert luhn_valid(out)
    assert card.invert(out) == "4511939257737224"
    assert registry.get("fpe.ff1").reversible and registry.get("fpe.ff1").key_purpose == "fpe"


# -- round trips for every wrapper and alphabet ---------------------------------------------------
_TEXT_CASES = [
    ({"alphabet": "digits"}, string.digits, 6),  # plain digits
    ({"alphabet": "alphanumeric"}, string.digits + string.ascii_letters, 4),  # mixed case, radix 62
    ({"alphabet": "alphanumeric", "case": "upper"}, string.digits + string.ascii_uppercase, 4),  # radix 36
    ({"alphabet": "alphanumeric", "case": "lower"}, string.digits + string.ascii_lowercase, 4),  # radix 36
    ({"alphabet": "hex"}, "0123456789abcdef", 5),  # lower-case hex
    ({"alphabet": "hex", "case": "upper"}, "0123456789ABCDEF", 5),  # upper-case hex
    ({"alphabet": "letters", "case": "lower"}, string.ascii_lowercase, 5),  # radix 26
    ({"alphabet": "0123456789ABCDEFGHJKMNPQRSTVWXYZ"}, "0123456789ABCDEFGHJKMNPQRSTVWXYZ", 4),  # Crockford base 32
    ({"alphabet": "αβγδεζηθικλμνξοπρστυφχψω"}, "αβγδεζηθικλμνξοπρστυφχψω", 5),  # non-ASCII custom
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(("params", "chars", "shortest"), _TEXT_CASES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_text_alphabets_round_trip_and_keep_the_alphabet(algorithm, params, chars, shortest, data):
    transform = make({"fpe": algorithm, **params}, domain="code")
    # FF3-1 takes at most 2 * floor(log_radix(2^96)) symbols: 32 for radix 62
    longest = 40 if algorithm == "ff1" else min(40, 2 * math.floor(96 / math.log2(len(chars))))
    value = data.draw(st.text(alphabet=chars, min_size=shortest, max_size=longest))
    out = transform.apply(value)
    assert len(out) == len(value) and set(out) <= set(chars)
    assert transform.invert(out) == value


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=80, deadline=None)
@given(body=st.text(alphabet=string.digits, min_size=12, max_size=18), separator=st.sampled_from(["", " ", "-"]))
def test_card_output_passes_luhn_keeps_separators_and_decrypts(algorithm, body, separator):
    card = make({"fpe": algorithm, "format": "card"})
    number = _luhn_complete(body)
    value = separator.join(number[i : i + 4] for i in range(0, len(number), 4))
    out = card.apply(value)
    assert luhn_valid(out.replace(separator, "") if separator else out)
    assert [i for i, c in enumerate(out) if not c.isdigit()] == [i for i, c in enumerate(value) if not c.isdigit()]
    assert card.invert(out) == value


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=60, deadline=None)
@given(body=st.text(alphabet=string.digits, min_size=15, max_size=18))
def test_card_keeping_first6_and_last4_still_passes_luhn(algorithm, body):
    card = make({"fpe": algorithm, "format": "card", "keep_first": 6, "keep_last": 4, "min_length": 16})
    number = _luhn_complete(body)
    out = card.apply(number)
    assert out[:6] == number[:6] and out[-4:] == number[-4:]
    assert luhn_valid(out)
    assert card.invert(out) == number


def test_when_card_fails_luhn_then_refused_by_default_and_reversible_with_allow():
    bad = "4511939257737225"  # last digit off by one
    with pytest.raises(TransformError, match="luhn"):
        make({"fpe": "ff1", "format": "card"}).apply(bad)
    lenient = make({"fpe": "ff1", "format": "card", "invalid_check": "allow"})
    out = lenient.apply(bad)
    assert not luhn_valid(out)
    assert lenient.invert(out) == bad


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=60, deadline=None)
@given(digits=st.text(alphabet=string.digits, min_size=9, max_size=9), dashed=st.booleans())
def test_ssn_keeps_dashes_and_round_trips(algorithm, digits, dashed):
    ssn = make({"fpe": algorithm, "format": "ssn"}, domain="ssn")
    value = f"{digits[:3]}-{digits[3:5]}-{digits[5:]}" if dashed else digits
    out = ssn.apply(value)
    assert len(out) == len(value)
    assert (out[3], out[6]) == ("-", "-") if dashed else out.isdigit()
    assert ssn.invert(out) == value


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=60, deadline=None)
@given(
    country=st.sampled_from(["1", "44", "49", "353", "7"]),
    rest=st.text(alphabet=string.digits, min_size=7, max_size=11),
    style=st.sampled_from(["+{c}-{a}-{b}", "+{c} ({a}) {b}", "{a}.{b}"]),
)
def test_phone_keeps_separators_and_country_code_and_round_trips(algorithm, country, rest, style):
    phone = make({"fpe": algorithm, "format": "phone"}, domain="phone")
    value = style.format(c=country, a=rest[:3], b=rest[3:])
    out = phone.apply(value)
    assert [c for c in out if not c.isdigit()] == [c for c in value if not c.isdigit()]
    if value.startswith("+"):
        assert out.startswith("+" + country)
    assert phone.invert(out) == value


def _iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=60, deadline=None)
@given(
    country=st.sampled_from(["DE", "FR", "GB", "NL"]),
    digits=st.text(alphabet=string.digits, min_size=14, max_size=20),
    spaced=st.booleans(),
)
def test_iban_keeps_country_and_letters_recomputes_check_digits_and_round_trips(algorithm, country, digits, spaced):
    iban_fpe = make({"fpe": algorithm, "format": "iban"}, domain="iban")
    bban = ("NWBK" + digits) if country in ("GB", "NL") else digits
    value = _iban(country, bban)
    if spaced:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    out = iban_fpe.apply(value)
    compact = out.replace(" ", "")
    assert compact[:2] == country and int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1
    if country in ("GB", "NL"):
        assert compact[4:8] == "NWBK"
    assert iban_fpe.invert(out) == value


@pytest.mark.parametrize(
    "value",
    [
        "DE89370400440532013001",  # wrong check digits
        "DE8937040044053201300",  # a digit dropped, so the check digits no longer match
        "de89370400440532013000",  # lower case
    ],
)
def test_when_iban_is_malformed_then_refused(value):
    with pytest.raises(TransformError):
        make({"fpe": "ff1", "format": "iban"}, domain="iban").apply(value)


# -- domain refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"fpe": "ff1", "alphabet": "digits", "min_length": 5}, "min_length"),  # 10**5 digits
        ({"fpe": "ff3_1", "alphabet": "digits", "min_length": 5}, "min_length"),  # same for ff3-1
        ({"fpe": "ff1", "alphabet": "alphanumeric", "min_length": 3}, "min_length"),  # 62**3 = 238,328
        ({"fpe": "ff1", "format": "card", "keep_first": 6, "keep_last": 4}, "format"),  # 12-digit cards leave 2
        ({"fpe": "ff1", "format": "ssn", "keep_last": 4}, "format"),  # 5 digits left of 9
    ],
)
def test_when_domain_below_a_million_then_refused(spec, param):
    with pytest.raises(ParamError) as info:
        make(spec, keyring=None)
    assert info.value.param == param
    assert "1,000,000" in info.value.problem and "card" in info.value.problem  # names the field's domain
    assert "at least" in info.value.allowed  # and the smallest length allowed


@pytest.mark.parametrize(
    "spec",
    [
        {"fpe": "ff3_1", "alphabet": "digits", "max_length": 57},  # ff3-1 takes 56 digits at most
        {"fpe": "ff3_1", "alphabet": "letters", "case": "lower", "max_length": 41},  # 40 at radix 26
        {"fpe": "ff1", "alphabet": "digits", "max_length": 5000},  # over this FF1's 4096
    ],
)
def test_when_longer_than_the_algorithm_maximum_then_refused(spec):
    with pytest.raises(ParamError, match="above"):
        make(spec, keyring=None)


def test_a_sixteen_digit_card_keeping_first6_and_last4_is_accepted_with_min_length():
    make({"fpe": "ff1", "format": "card", "keep_first": 6, "keep_last": 4, "min_length": 16}, keyring=None)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_when_value_too_short_at_run_time_then_transform_error_without_the_value(algorithm):
    transform = make({"fpe": algorithm, "alphabet": "digits"})
    with pytest.raises(TransformError, match="too short for ff") as info:
        transform.apply("98765")
    assert "98765" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ({"fpe": "ff1", "alphabet": "digits"}, "12345a7890"),  # a letter among digits
        ({"fpe": "ff1", "format": "ssn"}, "123-45-678"),  # eight digits
        ({"fpe": "ff1", "format": "card"}, "41111111111"),  # eleven digits
        ({"fpe": "ff1", "alphabet": "hex"}, "DEADBEEF"),  # upper case for lower-case hex
        ({"fpe": "ff1", "alphabet": "digits"}, 4111111111111111),  # a number, not a string
    ],
)
def test_when_value_does_not_fit_then_transform_error_never_quotes_it(spec, value):
    with pytest.raises(TransformError) as info:
        make(spec).apply(value)
    assert str(value) not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"fpe": "ff1", "format": "bitcoin"}, "format"),  # unknown format
        ({"fpe": "ff1", "alphabet": "aa"}, "alphabet"),  # repeated symbol
        ({"fpe": "ff1", "alphabet": "hex", "case": "mixed"}, "case"),  # hex has no mixed case
        ({"fpe": "ff1", "alphabet": "hex", "preserve": "luhn"}, "preserve"),  # Luhn needs digits
        ({"fpe": "ff3_1", "tweak": "00ff"}, "tweak"),  # ff3-1 tweaks are 7 bytes
        ({"fpe": "ff1", "passthrough": "5"}, "passthrough"),  # a digit cannot be a separator
        ({"fpe": "ff1", "cache": 10}, "cache"),  # unknown parameter
    ],
)
def test_when_a_parameter_is_wrong_then_param_error_names_it(spec, param):
    with pytest.raises(ParamError) as info:
        make(spec, keyring=None)
    assert info.value.param == param


# -- tweaks, keys, cache ---------------------------------------------------------------------------
def test_same_domain_gives_the_same_output_in_any_topic_and_other_domains_differ():
    first = make({"fpe": "ff1", "alphabet": "digits"}, domain="customer_id")
    second = make({"fpe": "ff1", "alphabet": "digits"}, domain="customer_id")
    other = make({"fpe": "ff1", "alphabet": "digits"}, domain="order_id")
    assert first.apply("1234567890") == second.apply("1234567890") != other.apply("1234567890")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_context_tweak_from_another_field_changes_output_and_decrypts(algorithm):
    transform = make({"fpe": algorithm, "alphabet": "digits", "tweak_field": "order.id"})
    assert transform.needs_record
    a = transform.apply_in_record("1234567890", {"order": {"id": "A1"}})
    b = transform.apply_in_record("1234567890", {"order": {"id": "B2"}})
    assert a != b
    assert transform.invert_in_record(a, {"order": {"id": "A1"}}) == "1234567890"
    with pytest.raises(TransformError, match="tweak field order.id is missing"):
        transform.apply_in_record("1234567890", {"order": {}})


def test_missing_and_null_values_pass_through():
    transform = make({"fpe": "ff1", "alphabet": "digits", "tweak_field": "orderId"})
    assert transform.apply_in_record(MISSING, {}) is MISSING
    assert transform.apply(None) is None


def test_key_id_selects_an_older_key_after_rotation():
    ring = Keyring.generate(["fpe"])
    old_id = ring.active["fpe"]
    old = make({"fpe": "ff1", "alphabet": "digits", "key_id": old_id}, keyring=ring)
    ring.add("fpe")
    new = make({"fpe": "ff1", "alphabet": "digits"}, keyring=ring)
    pinned = make({"fpe": "ff1", "alphabet": "digits", "key_id": old_id}, keyring=ring)
    assert pinned.apply("1234567890") == old.apply("1234567890") != new.apply("1234567890")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_lru_cache_gives_the_same_results_as_no_cache(algorithm):
    plain = make({"fpe": algorithm, "format": "card"})
    cached = make({"fpe": algorithm, "format": "card", "cache_size": 4})
    values = [_luhn_complete(f"{i:015d}") for i in range(10)] * 3
    assert [cached.apply(v) for v in values] == [plain.apply(v) for v in values]
    assert [cached.invert(plain.apply(v)) for v in values] == values


def test_fixed_tweak_and_raw_key_reproduce_the_nist_sample():
    sample = SAMPLES[1]
    transform = make({"fpe": "ff1", "alphabet": "digits", "tweak": sample["tweak"]}, keyring=None)
    transform.open_with_key(bytes.fromhex(sample["key"]))
    assert transform.apply(sample["plaintext"]) == sample["ciphertext"]


# -- CLI ---------------------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="flink-anonymizer")
    cli_fpe.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"sample{s['sample']}" for s in SAMPLES])
def test_cli_encrypts_and_decrypts_the_nist_samples(sample, capsys):
    common = ["--algorithm", "ff1", "--key", sample["key"], "--alphabet", sample["alphabet"]]
    if sample["tweak"]:
        common += ["--tweak", sample["tweak"]]
    assert _cli("fpe", "encrypt", *common, sample["plaintext"]) == 0
    assert _cli("fpe", "decrypt", *common, sample["ciphertext"]) == 0
    assert capsys.readouterr().out.splitlines() == [sample["ciphertext"], sample["plaintext"]]


def test_cli_runs_ff3_1_and_prints_one_line_per_value(capsys):
    args = ["--algorithm", "ff3-1", "--key", "2DE79D232DF5585D68CE47882AE256D6", "--tweak", "CBD09280979564"]
    assert _cli("fpe", "encrypt", *args, "3992520240", "3992520240") == 0
    assert capsys.readouterr().out.splitlines() == ["8901801106", "8901801106"]


def test_cli_decrypts_a_view_value_with_the_keyring_key_id(tmp_path, capsys):
    ring = Keyring.generate(["fpe"])
    path = tmp_path / "keys.json"
    ring.save(path)
    key_id = ring.active["fpe"]
    protected = make({"fpe": "ff1", "format": "card", "key_id": key_id}, domain="card", keyring=ring).apply("4511939257737224")
    where = ["--keyring", f"file:{path}", "--key-id", key_id, "--domain", "card"]
    code = _cli("fpe", "decrypt", *where, "--format", "card", protected)
    assert code == 0
    assert capsys.readouterr().out.strip() == "4511939257737224"


def test_cli_reports_a_bad_value_by_position_never_by_content(capsys):
    code = _cli("fpe", "encrypt", "--key", "00" * 16, "1234567890", "98x76")
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.out.splitlines()) == 1
    assert "value 2" in captured.err and "98x76" not in captured.err
