"""The per-record core of protect_stream: routing, dead-letter reasons, all-or-nothing, drops, no leaks."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flink_jobs.protect import DLQ, Protector
from udfs.keyring import Keyring

RING = Keyring.generate()
DOCUMENT = {
    "version": 1,
    "id": "customer-events",
    "source": {"topic": "raw-customer-events", "timestamp_field": "timestamp"},
    "subject_field": "customerId",
    "views": {
        "masked": {
            "sink": {"topic": "masked"},
            "fields": {
                "customerId": "keep",
                "name": {"substitute": "person_name"},
                "email": {"mask": "email"},
                "ssn": {"mask": "keep_last", "n": 4},
                "card": {"fpe": "ff1", "format": "card", "domain": "card_number"},
                "address.zip": {"keep": "string"},
                "items[*].sku": "keep",
                "timestamp": "keep",
            },
        },
        "support": {
            "sink": {"topic": "support"},
            "fields": {
                "customerId": {"pseudonymize": "hmac_sha256"},
                "phone": {"mask": "phone"},
                "email": {"encrypt": "aes_gcm"},
            },
        },
    },
}
GOOD = {
    "customerId": "CUST12345",
    "name": "Jane Roe",
    "email": "jane.roe@example.com",
    "ssn": "123-45-6789",
    "card": "4111111111111111",
    "phone": "+1-415-555-0134",
    "address": {"zip": "94102", "street": "1 Main St"},
    "items": [{"sku": "A-1", "price": 9.5}],
    "timestamp": "2024-03-05T14:23:11Z",
    "favouriteColour": "teal",
}
RAW_VALUES = ["CUST12345", "Jane Roe", "jane.roe@example.com", "123-45-6789", "4111111111111111", "+1-415-555-0134",
              "1 Main St", "teal"]


def make_protector(document: dict = DOCUMENT) -> Protector:
    protector = Protector(document, "customer-events.yaml")
    protector.open(RING)
    return protector


PROTECTOR = make_protector()


def raw(**changes) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


def dead_reason(routed) -> str:
    assert len(routed) == 1 and routed[0].channel == DLQ, routed
    return json.loads(routed[0].value[1])["reason"]


# -- a good record -----------------------------------------------------------------------------------
def test_a_good_record_goes_to_every_view_protected():
    routed = make_protector().process("p0:7", "k1", raw())
    assert [r.channel for r in routed] == ["masked", "support"]
    key, headers, body = routed[0].value
    masked = json.loads(body)
    # the output key is the view's own protected subject, never the raw input key
    assert key == masked["customerId"] != "k1"
    assert masked["email"] == "j***@example.com" and masked["ssn"] == "***-**-6789"
    assert masked["address"] == {"zip": "94102"} and masked["items"] == [{"sku": "A-1"}]
    assert masked["card"] != GOOD["card"] and len(masked["card"]) == 16
    assert masked["name"] != GOOD["name"]
    support = json.loads(routed[1].value[2])
    assert routed[1].value[0] == support["customerId"]
    assert support["phone"] == "+*-***-***-0134" and support["email"].startswith("g1.")
    assert set(support) == {"customerId", "phone", "email"}


def test_view_headers_carry_policy_id_hash_and_key_ids():
    protector = make_protector()
    routed = protector.process("p0:7", None, raw())
    headers = json.loads(routed[0].value[1])
    assert headers == {
        "policy_id": "customer-events",
        "policy_hash": protector.policy.hash,
        "key_ids": ",".join(sorted([RING.active["substitute"], RING.active["fpe"]])),
    }
    support = json.loads(routed[1].value[1])
    assert support["key_ids"] == ",".join(sorted([RING.active["pseudonym"], RING.active["encrypt"]]))


# -- dead-letter reasons ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"customerId": "C1", ', "invalid_json"),  # cut off
        ("not json at all", "invalid_json"),  # text
        ("[1, 2, 3]", "not_an_object"),  # a list
        ('"CUST12345"', "not_an_object"),  # a bare string
        ("null", "not_an_object"),  # null
        (raw(customerId=...), "missing_field customerId"),  # subject absent
        (raw(customerId=None), "missing_field customerId"),  # subject null
        (raw(timestamp=...), "missing_field timestamp"),  # event time absent
        (raw(timestamp="yesterday"), "field timestamp: expected an ISO-8601 timestamp"),  # not a date
        (raw(timestamp=1709648591), "field timestamp: expected an ISO-8601 timestamp"),  # epoch seconds
        (raw(ssn="6789"), "field ssn: mask.keep_last: value has 4 characters, needs at least 5"),  # too short
        (raw(email="jane.roe"), "field email: mask.email: not an email address"),  # not an email
        (raw(address={"zip": 94102}), "field address.zip: keep.string: expected a string, got int"),  # nested type
        (raw(address="1 Main St"), "field address: expected an object, got a string"),  # nested shape
        (raw(items=[{"sku": "A"}, 5]), "field items[*]: expected an object, got int"),  # array item
        (raw(phone="555"), "field phone: mask.phone: expected 7 to 15 digits, got 3"),  # second view's field
    ],
)
def test_a_bad_record_goes_to_the_dead_letters_with_its_reason(line, reason):
    assert dead_reason(PROTECTOR.process("p0:1", "k", line)) == reason


@pytest.mark.parametrize(
    "line",
    [
        "",  # empty
        "  \t ",  # white space only
    ],
)
def test_a_blank_line_is_not_a_record_and_gives_nothing(line):
    assert PROTECTOR.process("p0:1", None, line) == []


def test_a_dead_letter_keeps_the_raw_line_key_and_position():
    line = raw(ssn="6789")
    (routed,) = make_protector().process("p3:42", "the-key", line)
    key, headers, body = routed.value
    assert (key, body) == ("the-key", line)
    assert json.loads(headers)["position"] == "p3:42"
    assert json.loads(headers)["policy_id"] == "customer-events"


def test_dead_letters_are_counted_by_reason():
    protector = make_protector()
    for line in ("{", "{", "[1]", raw(ssn="1")):
        protector.process("p", None, line)
    assert protector.counts == {"dlq:invalid_json": 2, "dlq:not_an_object": 1, "dlq:field ssn": 1}


def test_a_record_is_protected_for_every_view_or_for_none():
    # good for the masked view, bad for the support view: nothing may reach the masked view
    routed = make_protector().process("p", None, raw(phone="call me"))
    assert [r.channel for r in routed] == [DLQ]


# -- deny by default ---------------------------------------------------------------------------------------------
def test_dropped_field_names_are_counted_per_view():
    protector = make_protector()
    for _ in range(3):
        protector.process("p", None, raw())
    assert protector.dropped["masked:favouriteColour"] == 3
    assert protector.dropped["masked:address.street"] == 3
    assert protector.dropped["masked:items[*].price"] == 3
    assert protector.dropped["support:ssn"] == 3
    assert "masked:email" not in protector.dropped


def test_a_dropped_field_is_logged_once_by_name_never_by_value(caplog):
    protector = make_protector()
    with caplog.at_level(logging.WARNING, logger="flink_jobs.protect"):
        protector.process("p", None, raw())
        protector.process("p", None, raw())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("'favouriteColour'" in m for m in messages) == 1
    for message in messages:
        for value in RAW_VALUES:
            assert value not in message


# -- no leaks --------------------------------------------------------------------------------------------------
SECRET = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=10, max_size=16)
CORRUPT = st.sampled_from(["keep", "short", "number", "list", "object", "null", "drop"])


def _corrupt(value: str, how: str):
    return {"keep": value, "short": value[:3], "number": 12345, "list": [value], "object": {"v": value},
            "null": None, "drop": ...}[how]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=SECRET, data=st.data())
def test_no_raw_value_appears_in_any_reason_or_header(secret, data):
    # every field holds the same unmistakable secret, some of them bent out of shape
    fields = ["name", "email", "ssn", "card", "phone", "customerId"]
    changes = {f: _corrupt(secret, data.draw(CORRUPT, label=f)) for f in fields}
    changes["email"] = changes["email"] if not isinstance(changes["email"], str) else f"{changes['email']}@example.com"
    changes["address"] = data.draw(st.sampled_from([{"zip": secret}, secret, [secret], {"zip": 1}]), label="address")
    changes["items"] = data.draw(st.sampled_from([[{"sku": secret}], [secret], secret]), label="items")
    changes["timestamp"] = data.draw(st.sampled_from([GOOD["timestamp"], secret, ...]), label="timestamp")
    routed = PROTECTOR.process("p0:1", None, raw(**changes))
    for r in routed:
        headers = r.value[1]
        assert secret not in headers and secret[:3] not in headers
        if r.channel == DLQ:
            reason = json.loads(headers)["reason"]
            assert reason == "missing_field customerId" or reason.startswith(("field ", "missing_field "))
