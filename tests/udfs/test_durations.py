"""udfs.durations.parse_duration: the one duration parser every policy block uses."""

import subprocess
import sys

import pytest

from udfs.durations import parse_duration
from udfs.registry import ParamError


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        ("500ms", 500),  # milliseconds
        ("30s", 30_000),  # seconds
        ("2m", 120_000),  # minutes
        ("1h", 3_600_000),  # hours
        ("1d", 86_400_000),  # days (shuffle, DP and the policy took them; k-anonymity did not)
        ("1.5s", 1_500),  # a fraction (k-anonymity and the policy took them; shuffle and DP did not)
        ("0.57s", 570),  # exact: float arithmetic would give 569
        (" 30 s ", 30_000),  # spaces around number and unit
        (3, 3_000),  # a plain int is seconds
        (2.5, 2_500),  # so is a plain float (the policy's watermark_delay took them)
        (0, 0),  # zero is allowed by default; callers that cannot use it pass minimum_ms=1
        ("0s", 0),
    ],
)
def test_durations_are_read_in_milliseconds(raw, ms):
    assert parse_duration(raw, "window") == ms


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("soon", "is not a duration"),  # words
        ("5 minutes", "is not a duration"),  # a unit spelled out
        ("30", "is not a duration"),  # a string needs its unit
        ("-5s", "is not a duration"),  # no sign in the text
        ("1e3ms", "is not a duration"),  # no exponent
        ("", "is not a duration"),
        ([30], "is not a duration"),  # not a scalar
        (float("inf"), "is not a duration"),
        (float("nan"), "is not a duration"),
        (True, "must be a duration"),  # a bool is an int to Python, never a duration here
        (None, "is missing"),
        (-5, "must not be negative"),
        (-0.5, "must not be negative"),
    ],
)
def test_when_not_a_duration_then_param_error_names_the_param(raw, problem):
    with pytest.raises(ParamError) as err:
        parse_duration(raw, "timeout")
    assert err.value.param == "timeout"
    assert problem in err.value.problem
    assert err.value.allowed  # says what would do


@pytest.mark.parametrize("raw", ["0s", 0, "0ms", "0.0001s"])
def test_when_minimum_is_one_ms_then_zero_is_refused(raw):
    with pytest.raises(ParamError) as err:
        parse_duration(raw, "window", minimum_ms=1)
    assert err.value.param == "window" and err.value.problem == "must be longer than 0"


def test_a_larger_minimum_is_named_in_the_error():
    assert parse_duration("1s", "x", minimum_ms=1000) == 1000
    with pytest.raises(ParamError, match="at least 1000ms"):
        parse_duration("999ms", "x", minimum_ms=1000)


@pytest.mark.parametrize("raw", [30, 1.5])
def test_when_numbers_are_off_then_a_bare_number_is_refused(raw):
    with pytest.raises(ParamError) as err:
        parse_duration(raw, "max_delay", numbers=False)
    assert err.value.param == "max_delay" and "no unit" in err.value.problem
    assert parse_duration("30s", "max_delay", numbers=False) == 30_000


def test_every_caller_reads_durations_the_same_way():
    from flink_jobs.policy import _duration_ms
    from operators import shuffle
    from operators.dp.params import DpParams
    from operators.k_anonymity import KAnonymityParams

    assert shuffle.parse_duration is parse_duration
    problems: list = []
    assert _duration_ms("1.5d", "source.watermark_delay", problems) == 129_600_000 and problems == []
    # shuffle and DP once refused fractions; k-anonymity once refused days
    assert shuffle.ShuffleParams.from_policy({"columns": ["zip"], "window": "1.5m"}).window_ms == 90_000
    dp = DpParams.from_policy({"window": "1.5m", "group_by": ["region"], "epsilon": 1.0, "metrics": ["count"]})
    assert dp.window_ms == 90_000
    with pytest.raises(ParamError) as err:  # fails later (no quasi-identifiers), after the durations were read
        KAnonymityParams.from_policy({"k": 2, "max_delay": "1d", "state_ttl": "2d"})
    assert not err.value.param.startswith(("max_delay", "state_ttl"))


def test_udfs_durations_imports_neither_operators_nor_flink_jobs():
    code = (
        "import sys, udfs.durations; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('operators', 'flink_jobs', 'pyflink')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
