import json
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conf.samples.generate_events import (
    MALFORMED_KINDS,
    N_CUSTOMERS,
    iter_events,
    luhn_ok,
    malformed_plan,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "conf" / "samples" / "generate_events.py"
SAMPLE = ROOT / "conf" / "samples" / "customer-events.jsonl"
ADVERSARIAL = ROOT / "tests" / "data" / "adversarial-events.jsonl"
ADVERSARIAL_SIDECAR = ROOT / "tests" / "data" / "adversarial-events.expected.json"

PII_FIELDS = ("name", "email", "ssn", "card", "phone", "age")
UNKNOWN_FIELDS = {"ipAddress", "deviceId", "notes", "loyaltyTier", "userAgent"}
START = datetime(2024, 3, 15, tzinfo=UTC)


def _parse(line):
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@pytest.fixture(scope="module")
def sample():
    """10k valid events + 40 malformed lines, as the committed sample is made."""
    lines = list(iter_events(10_000, 7, 40))
    plan = dict(malformed_plan(10_000, 7, 40))
    valid = [json.loads(line) for i, line in enumerate(lines, 1) if i not in plan]
    return lines, plan, valid


def test_deterministic_and_seed_sensitive():
    a = list(iter_events(500, 3, 20))
    assert a == list(iter_events(500, 3, 20))
    assert a != list(iter_events(500, 4, 20))


def test_valid_events_do_not_depend_on_malformed_count():
    plain = list(iter_events(300, 5, 0))
    plan = dict(malformed_plan(300, 5, 25))
    mixed = list(iter_events(300, 5, 25))
    assert [line for i, line in enumerate(mixed, 1) if i not in plan] == plain


def test_committed_sample_is_reproducible():
    expected = "".join(line + "\n" for line in iter_events(10_000, 7, 40))
    assert SAMPLE.read_text(encoding="utf-8") == expected


def test_script_output_is_byte_identical(tmp_path):
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        out = tmp_path / name
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--n", "2000", "--seed", "9", "--malformed", "15", "--out", str(out)],
            capture_output=True, text=True, check=True,
        )
        assert proc.stdout == ""
        summary = proc.stderr.strip().splitlines()
        assert len(summary) == 1
        assert "2000 valid" in summary[0] and "15 malformed" in summary[0] and str(out) in summary[0]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0].count(b"\n") == 2015
    assert outs[0] == "".join(line + "\n" for line in iter_events(2000, 9, 15)).encode()


def test_help():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--n", "--seed", "--malformed", "--out"):
        assert flag in proc.stdout


def test_counts_and_malformed_lines(sample):
    lines, plan, valid = sample
    assert len(lines) == 10_040
    assert len(valid) == 10_000 and len(plan) == 40
    assert all(line and "\n" not in line for line in lines)
    bad = {i for i, line in enumerate(lines, 1) if _parse(line) is None}
    assert bad <= set(plan)
    counts = Counter(plan.values())
    assert set(counts) == set(MALFORMED_KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1
    for i, kind in plan.items():
        line = lines[i - 1]
        obj = _parse(line)
        if kind.startswith(("broken_json", "not_object")):
            assert obj is None, (i, kind)
            continue
        assert obj is not None, (i, kind)
        if kind == "wrong_type_age_string":
            assert isinstance(obj["age"], str) and not obj["age"].isdigit()
        elif kind == "wrong_type_card_number":
            assert isinstance(obj["card"], int) and luhn_ok(str(obj["card"]))
        elif kind == "wrong_type_purchase_amount_string":
            assert re.fullmatch(r"\d+,\d\d", obj["purchaseAmount"])
        elif kind == "wrong_type_ssn_list":
            assert isinstance(obj["ssn"], list)
        elif kind == "missing_customerId":
            assert "customerId" not in obj and "ssn" in obj
        elif kind == "missing_timestamp":
            assert "timestamp" not in obj and "customerId" in obj
        elif kind == "too_short_card":
            assert len(obj["card"]) == 4
        elif kind == "too_short_ssn":
            assert re.fullmatch(r"\d\d-\d\d", obj["ssn"])
        elif kind == "too_short_email":
            assert len(obj["email"]) == 1
    # malformed lines still carry realistic PII for leak scanners
    carrying = sum(bool(re.search(r"\d{3}-\d{2}-\d{4}|\d{16}", lines[i - 1])) for i in plan)
    assert carrying >= 35


def test_field_shapes(sample):
    _, _, valid = sample
    for ev in valid:
        assert re.fullmatch(r"CUST\d{5,6}", ev["customerId"])
        assert re.fullmatch(r"[A-Za-z'-]+ [A-Za-z'-]+", ev["name"])
        assert re.fullmatch(r"[a-z0-9._]+@[a-z.]+\.(com|org|net)", ev["email"])
        m = re.fullmatch(r"(\d{3})-(\d{2})-(\d{4})", ev["ssn"])
        assert m and m[1] not in ("000", "666") and not m[1].startswith("9") and m[2] != "00" and m[3] != "0000"
        assert re.fullmatch(r"\+1-\d{3}-555-01\d\d|\(\d{3}\) 555-01\d\d", ev["phone"])
        assert isinstance(ev["age"], int) and 18 <= ev["age"] <= 90
        assert ("zip" in ev) != ("address" in ev)
        zip_code = ev["zip"] if "zip" in ev else ev["address"]["zip"]
        assert re.fullmatch(r"\d{5}", zip_code)
        if "address" in ev:
            assert set(ev["address"]) == {"street", "city", "state", "zip"}
            assert re.fullmatch(r"\d+ .+", ev["address"]["street"]) and len(ev["address"]["state"]) == 2
        assert isinstance(ev["lat"], float) and 24 < ev["lat"] < 49
        assert isinstance(ev["lon"], float) and -125 < ev["lon"] < -70
        assert ev["region"] in {"us-west", "us-east", "us-central", "us-south"}
        amount = ev["purchaseAmount"]
        assert isinstance(amount, float) and 1 <= amount <= 999.99 and round(amount, 2) == amount
        assert set(ev) - {"customerId", "name", "email", "ssn", "card", "phone", "age", "zip", "address", "lat", "lon",
                          "region", "purchaseAmount", "timestamp", "items"} <= UNKNOWN_FIELDS


def test_cards_pass_luhn_and_mix_brands(sample):
    _, _, valid = sample
    cards = [ev["card"] for ev in valid] + [it["card"] for ev in valid for it in ev.get("items", [])]
    assert all(re.fullmatch(r"\d{16}", c) and luhn_ok(c) for c in cards)
    visa = sum(c.startswith("4") for c in cards)
    mastercard = sum(c[:2] in {"51", "52", "53", "54", "55"} for c in cards)
    assert visa + mastercard == len(cards)
    assert 0.4 < visa / len(cards) < 0.8


def test_customers_repeat_with_stable_pii(sample):
    _, _, valid = sample
    seen = {}
    for ev in valid:
        pii = tuple(ev[f] for f in PII_FIELDS) + (ev.get("zip") or ev["address"]["zip"], ev["region"])
        assert seen.setdefault(ev["customerId"], pii) == pii
    assert 0.95 * N_CUSTOMERS <= len(seen) <= N_CUSTOMERS
    assert len({p[1] for p in seen.values()}) == len(seen)  # e-mails are unique per customer
    assert len({p[0] for p in seen.values()}) > 1000  # many distinct names


def test_zip_matches_city_and_region(sample):
    _, _, valid = sample
    by_zip = {}
    for ev in valid:
        if "address" in ev:
            a = ev["address"]
            assert by_zip.setdefault(a["zip"], (a["city"], a["state"], ev["region"])) == (a["city"], a["state"], ev["region"])
    assert len({city for city, _, _ in by_zip.values()}) >= 30
    assert "02134" in by_zip or "02108" in by_zip or "07102" in by_zip  # leading zeros occur


def test_fractions(sample):
    _, _, valid = sample
    n = len(valid)
    nested = sum("address" in ev for ev in valid) / n
    unknown = sum(bool(UNKNOWN_FIELDS & set(ev)) for ev in valid) / n
    with_items = [ev for ev in valid if "items" in ev]
    assert 0.27 < nested < 0.33
    assert 0.08 < unknown < 0.12
    assert 0.035 < len(with_items) / n < 0.065
    for ev in with_items:
        assert 1 <= len(ev["items"]) <= 3
        for item in ev["items"]:
            assert set(item) == {"sku", "qty", "card"} and isinstance(item["qty"], int)


def test_timestamps_parse_and_mostly_increase(sample):
    _, _, valid = sample
    times = [datetime.strptime(ev["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) for ev in valid]
    assert times[0] == START
    span = (times[-1] - times[0]).total_seconds()
    assert 450 <= span <= 550  # about 20 events per second of event time
    high = START
    late = 0
    for t in times:
        if t < high:
            late += 1
            assert high - t <= timedelta(seconds=5)
        high = max(high, t)
    assert 0 < late < 0.02 * len(times)


def test_purchase_amount_is_skewed(sample):
    _, _, valid = sample
    amounts = sorted(ev["purchaseAmount"] for ev in valid)
    median = amounts[len(amounts) // 2]
    mean = sum(amounts) / len(amounts)
    assert median < mean and median < 100 and amounts[-1] > 500


def test_million_lines_is_fast():
    import time

    start = time.perf_counter()
    count = sum(1 for _ in iter_events(100_000, 1))
    assert count == 100_000
    assert time.perf_counter() - start < 5  # ~1s here; 1M lines take ~10x


def test_adversarial_sidecar_describes_every_line():
    lines = ADVERSARIAL.read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    side = json.loads(ADVERSARIAL_SIDECAR.read_text(encoding="utf-8"))
    entries = side["lines"]
    assert [e["line"] for e in entries] == list(range(1, len(lines) + 1))
    assert 50 <= len(lines) <= 100
    for entry, line in zip(entries, lines, strict=True):
        assert line.strip() and entry["note"]
        try:
            value = json.loads(line)
            got = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
        except RecursionError:
            got = "error: RecursionError"
        except ValueError as exc:
            got = "error: " + type(exc).__name__
        assert got == entry["python_json_loads"], entry
        if entry["well_formed_object"]:
            assert got in ("object", "error: RecursionError"), entry
    notes = " ".join(e["note"] for e in entries)
    for word in ("BOM", "2000 nested", "duplicated key", "address is a string", "items is an object", "leading zero",
                 "10k-char", "null", "card with spaces", "age 150"):
        assert word in notes
