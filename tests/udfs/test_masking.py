"""keep, drop, null, redact and the partial masks (keep_last, keep_first, email, phone)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import registry
from udfs.masking import DROP
from udfs.registry import MISSING, ParamError, Transform, TransformError, transform

SEPARATORS = set(" -().+/_")


def make(name: str, **params) -> Transform:
    # the lifecycle every engine follows: build (policy check), then open (per task), then apply
    transform = registry.get(name)(params, domain="field")
    transform.open(None)
    return transform


# -- keep, drop, null, redact ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        "123-45-6789",  # a string
        42,  # an integer
        {"nested": [1, 2]},  # an object
        None,  # null
    ],
)
def test_keep_passes_any_value_through_unchanged(value):
    assert make("keep").apply(value) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("keep.string", "94102"),  # a string kept as a string
        ("keep.integer", 34),  # an integer
        ("keep.number", 12.5),  # a float
        ("keep.number", 7),  # an integer is a number too
        ("keep.integer", None),  # null passes every typed keep
    ],
)
def test_typed_keep_passes_values_of_its_type(name, value):
    assert make(name).apply(value) == value


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("keep.string", 94102, "keep.string: expected a string, got int"),  # a zip code that lost its zeros
        ("keep.integer", "34", "keep.integer: expected an integer, got str"),  # a number in quotes
        ("keep.integer", True, "keep.integer: expected an integer, got bool"),  # bool is not an int in JSON
        ("keep.integer", 3.5, "keep.integer: expected an integer, got float"),  # a float
        ("keep.number", "12.5", "keep.number: expected a number, got str"),  # a number in quotes
        ("keep.number", False, "keep.number: expected a number, got bool"),  # bool is not a number
        ("keep.number", math.inf, "keep.number: expected a finite number"),  # infinity
        ("keep.number", -math.inf, "keep.number: expected a finite number"),  # minus infinity
        ("keep.number", math.nan, "keep.number: expected a finite number"),  # not a number
    ],
)
def test_typed_keep_refuses_values_of_another_type(name, value, reason):
    with pytest.raises(TransformError) as exc:
        make(name).apply(value)
    assert str(exc.value) == reason


def test_drop_removes_the_field_and_null_keeps_it_as_null():
    assert make("drop").apply("secret") is DROP
    assert make("null").apply("secret") is None


def test_redact_replaces_the_value_with_the_default_mask():
    assert make("redact").apply("123-45-6789") == "[REDACTED]"
    assert make("redact").apply(None) is None


def test_redact_fixed_uses_the_given_mask():
    assert make("redact.fixed", mask="[CARD]").apply("4111111111111111") == "[CARD]"
    assert make("redact.fixed", mask="[CARD]").apply(4111) == "[CARD]"


def test_when_redact_mask_is_not_a_string_then_refused():
    with pytest.raises(ParamError) as exc:
        make("redact", mask=5)
    assert exc.value.param == "mask"


# -- keep_last / keep_first: known answers ------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "value", "expected"),
    [
        ({"n": 4}, "123-45-6789", "***-**-6789"),  # SSN: dashes kept
        ({"n": 4}, "4111 1111 1111 1234", "**** **** **** 1234"),  # card with spaces
        ({"n": 2}, "abcdef", "****ef"),  # no separators
        ({"n": 4, "char": "#"}, "123-45-6789", "###-##-6789"),  # another mask character
        ({"n": 0}, "12-34", "**-**"),  # n 0 masks every significant character
        ({"n": 4}, "12345", "*2345"),  # shortest value allowed by the default min_length n+1
        ({"n": 1, "min_length": 3}, "(1)-2.3", "(*)-*.3"),  # separators only: ( ) - . kept
    ],
)
def test_keep_last_masks_all_but_the_last_n_significant_characters(params, value, expected):
    assert make("mask.keep_last", **params).apply(value) == expected


@pytest.mark.parametrize(
    ("params", "value", "expected"),
    [
        ({"n": 4}, "4111-1111-1111-1234", "4111-****-****-****"),  # card: first four kept
        ({"n": 1}, "john", "j***"),  # a name
        ({"n": 3, "char": "x"}, "94102", "941xx"),  # another mask character
        ({"n": 2}, "+1 415", "+1 4**"),  # the + is a separator, not significant
    ],
)
def test_keep_first_masks_all_but_the_first_n_significant_characters(params, value, expected):
    assert make("mask.keep_first", **params).apply(value) == expected


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"n": 4, "min_length": 4}, "keep_last 4 would reveal whole values of length 4"),  # equal
        ({"n": 6, "min_length": 5}, "keep_last 6 would reveal whole values of length 5"),  # larger
        ({"n": 1, "min_length": 0}, "keep_last 1 would reveal whole values of length 0"),  # zero length
    ],
)
def test_when_keep_last_reaches_min_length_then_refused(params, problem):
    with pytest.raises(ParamError) as exc:
        make("mask.keep_last", **params)
    assert exc.value.param == "n"
    assert exc.value.problem == problem
    assert exc.value.allowed == f"n smaller than min_length ({params['min_length']})"


def test_when_keep_first_reaches_min_length_then_refused():
    with pytest.raises(ParamError) as exc:
        make("mask.keep_first", n=4, min_length=3)
    assert exc.value.param == "n"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": -1}, "n"),  # negative
        ({"n": "4"}, "n"),  # a string
        ({"n": True}, "n"),  # a bool is not an integer
        ({"n": 2.0}, "n"),  # a float
        ({"char": "**"}, "char"),  # two characters
        ({"char": ""}, "char"),  # empty
        ({"char": 1}, "char"),  # not a string
        ({"colour": "red"}, "colour"),  # unknown parameter
    ],
)
def test_when_keep_last_parameter_is_bad_then_refused(params, param):
    with pytest.raises(ParamError) as exc:
        make("mask.keep_last", **params)
    assert exc.value.param == param


def test_unknown_parameter_error_lists_the_allowed_ones():
    with pytest.raises(ParamError) as exc:
        make("mask.keep_last", colour="red")
    assert exc.value.problem == "unknown parameter for mask.keep_last"
    assert exc.value.allowed == "n, char, min_length, domain, key_id"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("mask.keep_last", "6789", "mask.keep_last: value has 4 characters, needs at least 5"),  # would reveal all
        ("mask.keep_last", "1-2-3-4", "mask.keep_last: value has 4 characters, needs at least 5"),  # separators don't count
        ("mask.keep_first", "", "mask.keep_first: value has 0 characters, needs at least 5"),  # empty
        ("mask.keep_last", 123456789, "mask.keep_last expected a string, got int"),  # a number
        ("mask.keep_first", ["1234567"], "mask.keep_first expected a string, got list"),  # a list
    ],
)
def test_when_value_is_too_short_or_not_a_string_then_transform_error(name, value, reason):
    with pytest.raises(TransformError) as exc:
        make(name, n=4).apply(value)
    assert str(exc.value) == reason


def test_partial_masks_pass_null_through():
    for name in ("mask.keep_last", "mask.keep_first", "mask.email", "mask.phone"):
        assert make(name).apply(None) is None


# -- email -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "value", "expected"),
    [
        ({}, "john.doe@example.com", "j***@example.com"),  # the source text's example
        ({}, "a@b.co", "a***@b.co"),  # one-letter local part
        ({}, "we@ird@mail.example.org", "w***@mail.example.org"),  # the last @ splits
        ({"char": "#"}, "john@example.com", "j###@example.com"),  # another mask character
        ({"keep_domain": False}, "john@mail.example.com", "j***@***.com"),  # domain hidden but the TLD
    ],
)
def test_email_mask_keeps_the_first_letter_and_the_domain(params, value, expected):
    assert make("mask.email", **params).apply(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "john.doe",  # no @
        "@example.com",  # no local part
        "john@",  # no domain
        "john@localhost",  # no dot in the domain
        "",  # empty
    ],
)
def test_when_value_is_not_an_email_then_transform_error(value):
    with pytest.raises(TransformError) as exc:
        make("mask.email").apply(value)
    assert str(exc.value) == "mask.email: not an email address"


# -- phone -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "value", "expected"),
    [
        ({}, "+1-415-555-0134", "+*-***-***-0134"),  # the docstring's example
        ({}, "(415) 555-0134", "(***) ***-0134"),  # parentheses and a space kept
        ({"n": 2}, "5550134", "*****34"),  # the shortest number, 7 digits
        ({"n": 0}, "+44 20 7946 0958", "+** ** **** ****"),  # n 0 masks every digit
    ],
)
def test_phone_mask_keeps_the_format_and_the_last_digits(params, value, expected):
    assert make("mask.phone", **params).apply(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("555-013", "mask.phone: expected 7 to 15 digits, got 6"),  # too few digits
        ("1234567890123456", "mask.phone: expected 7 to 15 digits, got 16"),  # too many digits
        ("555-0134 ext 12", "mask.phone: unexpected characters in a phone number"),  # letters
        (4155550134, "mask.phone expected a string, got int"),  # a number
    ],
)
def test_when_value_is_not_a_phone_number_then_transform_error(value, reason):
    with pytest.raises(TransformError) as exc:
        make("mask.phone").apply(value)
    assert str(exc.value) == reason


@pytest.mark.parametrize(
    "n",
    [
        7,  # the shortest accepted phone number (7 digits) would come out whole
        15,  # the longest accepted one would come out whole
    ],
)
def test_when_phone_n_reaches_the_shortest_number_then_refused(n):
    # the same rule as keep_last: a policy must not be able to publish whole values
    with pytest.raises(ParamError) as exc:
        make("mask.phone", n=n)
    assert exc.value.param == "n"


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=0, max_value=20), digits=st.text(alphabet="0123456789", min_size=7, max_size=15))
def test_phone_mask_never_reveals_a_whole_number(n, digits):
    try:
        transform = make("mask.phone", n=n)
    except ParamError:
        return  # refused at policy time: fine
    out = transform.apply(digits)
    assert out != digits
    # never more digits shown than asked for
    assert sum(c.isdigit() for c in out) <= n


# -- property tests -----------------------------------------------------------------------------------------
STRING_MASKS = [
    ("mask.keep_last", {"n": 4}),
    ("mask.keep_first", {"n": 4}),
    ("mask.email", {}),
    ("mask.phone", {}),
    ("redact", {}),
]

# text that reaches the interesting branches: separators, digits, @ and dots, plus anything at all
ANY_TEXT = st.one_of(
    st.text(),
    st.text(alphabet="0123456789-() +./_", max_size=25),
    st.text(alphabet="abc.@-", max_size=25),
)


@pytest.mark.parametrize(("name", "params"), STRING_MASKS)
@settings(max_examples=150, deadline=None)
@given(value=ANY_TEXT)
def test_string_masks_never_crash_on_any_string(name, params, value):
    transform = make(name, **params)
    try:
        out = transform.apply(value)
    except TransformError:
        return
    assert isinstance(out, str)


@pytest.mark.parametrize(("name", "params"), [m for m in STRING_MASKS if m[0] != "redact"])
@settings(max_examples=150, deadline=None)
@given(
    value=st.one_of(
        # any text carrying a sentinel no message has of its own: if it shows up, the value was echoed
        st.text(max_size=12).map(lambda s: s + "\u2603"),
        # digits and separators of 8 or more: no message holds such a run, so finding it means an echo
        st.text(alphabet="0123456789-() +", min_size=8, max_size=25),
    )
)
def test_no_transform_error_message_contains_the_value(name, params, value):
    try:
        make(name, **params).apply(value)
    except TransformError as exc:
        assert value not in str(exc)
        assert "\u2603" not in str(exc)


@pytest.mark.parametrize(
    "name",
    [
        "mask.keep_last",  # the last n are kept
        "mask.keep_first",  # the first n are kept
    ],
)
@settings(max_examples=150, deadline=None)
@given(value=ANY_TEXT, n=st.integers(min_value=0, max_value=6))
def test_keep_masks_keep_length_and_separators(name, value, n):
    transform = make(name, n=n)
    try:
        out = transform.apply(value)
    except TransformError as exc:
        assert str(exc).startswith(f"{name}: value has ")
        return
    assert len(out) == len(value)
    significant = [i for i, c in enumerate(value) if c not in SEPARATORS]
    kept = set(significant[-n:] if n else []) if name == "mask.keep_last" else set(significant[:n])
    for i, (before, after) in enumerate(zip(value, out, strict=True)):
        if before in SEPARATORS or i in kept:
            assert after == before
        else:
            assert after == "*"
    # same input, same output
    assert transform.apply(value) == out


@settings(max_examples=150, deadline=None)
@given(value=st.text(alphabet="0123456789-() +./_", max_size=25))
def test_phone_mask_keeps_length_separators_and_last_four_digits(value):
    try:
        out = make("mask.phone").apply(value)
    except TransformError:
        return
    assert len(out) == len(value)
    digits = [i for i, c in enumerate(value) if c.isdigit()]
    for i, (before, after) in enumerate(zip(value, out, strict=True)):
        assert after == (before if (not before.isdigit() or i in digits[-4:]) else "*")


EMAIL_SHAPE = re.compile(r"^.\*\*\*@(?P<domain>.+)$", re.DOTALL)


@settings(max_examples=150, deadline=None)
@given(
    local=st.text(min_size=1, max_size=20),
    domain=st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z]{2,6}){1,2}", fullmatch=True),
)
def test_email_mask_keeps_email_shape(local, domain):
    value = f"{local}@{domain}"
    out = make("mask.email").apply(value)
    match = EMAIL_SHAPE.match(out)
    assert match is not None
    assert out[0] == local[0]
    assert match["domain"] == domain
    assert make("mask.email").apply(value) == out


# -- the registry: plain functions and classes ---------------------------------------------------------
def test_a_decorated_function_becomes_a_transform_with_its_keyword_parameters():
    @transform("test_masking.initials")
    def initials(value: str, sep: str = ".") -> str:
        return sep.join(part[0] for part in value.split()) + sep

    cls = registry.get("test_masking.initials")
    assert cls.params == ("sep",)
    assert cls({"sep": "-"}).apply("John Ronald Tolkien") == "J-R-T-"
    assert cls().apply(None) is None
    assert cls().apply(MISSING) is MISSING
    assert "test_masking.initials" in registry.names()


def test_a_function_error_becomes_a_transform_error_without_the_value():
    @transform("test_masking.strict")
    def strict(value: str) -> str:
        raise ValueError(f"bad value {value}")

    with pytest.raises(TransformError) as exc:
        registry.get("test_masking.strict")().apply("SECRET-123")
    assert str(exc.value) == "test_masking.strict refused the value (ValueError)"


def test_a_function_transform_refuses_parameters_it_does_not_take():
    @transform("test_masking.upper")
    def upper(value: str) -> str:
        return value.upper()

    with pytest.raises(ParamError) as exc:
        registry.get("test_masking.upper")({"n": 3})
    assert exc.value.param == "n"
    assert exc.value.allowed == "domain, key_id"


def test_a_decorated_class_is_registered_under_its_name():
    @transform("test_masking.reverse")
    class Reverse(Transform):
        def apply(self, value):
            return value[::-1]

    assert registry.get("test_masking.reverse") is Reverse
    assert Reverse.name == "test_masking.reverse"
    assert Reverse().apply("abc") == "cba"


def test_when_a_name_is_taken_by_another_class_then_registering_is_refused():
    with pytest.raises(ValueError, match="already registered"):

        @transform("mask.email")
        class Impostor(Transform):
            def apply(self, value):
                return value


def test_non_deterministic_function_transforms_say_so():
    @transform("test_masking.noise", deterministic=False)
    def noise(value):
        return value

    assert registry.get("test_masking.noise").deterministic is False
    assert registry.get("mask.email").deterministic is True


def test_unknown_transform_name_raises_key_error():
    with pytest.raises(KeyError):
        registry.get("mask.nope")


def test_missing_marker_has_a_readable_repr():
    assert repr(MISSING) == "MISSING"
