"""Debezium change events (source.format: debezium-json) through the Protector, without a JVM."""

from __future__ import annotations

import json

import pytest

from flink_jobs.cdc import ChangeError, parse_change, safe_source
from flink_jobs.policy import PolicyError, compile_policy
from flink_jobs.protect import DLQ, Protector
from udfs.keyring import Keyring

SOURCE = {"version": "3.6.1.Final", "connector": "postgresql", "name": "shop", "ts_ms": 1733390000000,
          "snapshot": "false", "db": "shop", "schema": "public", "table": "customers", "lsn": 24023128,
          "txId": 771, "query": "UPDATE customers SET email = 'ada@example.com' WHERE id = 1"}
ADA = {"id": 1, "customer_id": "CUST100001", "name": "Ada Lovelace", "email": "ada@example.com", "ssn": "123-45-6789",
       "notes": "call after 5"}
ADA_NEW = {**ADA, "email": "ada.l@example.org"}


def policy(schema_changes: str | None = None) -> dict:
    source = {"topic": "shop.public.customers", "format": "debezium-json", "timestamp_field": "ts_ms"}
    if schema_changes:
        source["schema_changes"] = schema_changes
    return {
        "version": 1, "id": "customers-cdc", "source": source, "subject_field": "customer_id",
        "views": {
            "masked": {"sink": {"topic": "customers.masked"}, "fields": {
                "id": {"pseudonymize": "hmac_sha256", "prefix": "row_", "domain": "row_id"},
                "customer_id": {"pseudonymize": "hmac_sha256", "prefix": "cus_", "domain": "customer_id"},
                "email": {"mask": "email"}, "ssn": {"mask": "keep_last", "n": 4}, "name": {"substitute": "person_name"}}},
            "analytics": {"sink": {"topic": "customers.analytics"}, "fields": {
                "id": {"pseudonymize": "hmac_sha256", "prefix": "row_", "domain": "row_id"},
                "customer_id": {"pseudonymize": "hmac_sha256", "prefix": "cus_", "domain": "customer_id"}}},
        },
    }


@pytest.fixture
def protector() -> Protector:
    return opened(policy())


def opened(document: dict) -> Protector:
    compiled = compile_policy(document, file="cdc.yaml")
    protector = Protector(compiled.document, compiled.file)
    protector.open(Keyring.generate())
    return protector


def event(op: str, before: dict | None, after: dict | None, wrapped: bool = False) -> str:
    payload = {"before": before, "after": after, "op": op, "ts_ms": 1733390000123, "source": SOURCE}
    return json.dumps({"schema": {"type": "struct"}, "payload": payload} if wrapped else payload)


KEY = json.dumps({"id": 1})


def by_view(routed) -> dict:
    return {r.channel: r.value for r in routed}


@pytest.mark.parametrize("wrapped", [False,   # schemas.enable=false: the envelope itself
                                     True])   # JsonConverter's {"schema", "payload"} wrapper
def test_an_update_protects_before_and_after_with_each_views_rules(protector, wrapped):
    out = by_view(protector.process("shop/0/7", KEY, event("u", ADA, ADA_NEW, wrapped)))
    assert set(out) == {"masked", "analytics"}
    key, headers, value = out["masked"]
    change = json.loads(value)
    assert change["op"] == "u" and change["ts_ms"] == 1733390000123
    assert change["before"]["email"] == "a***@example.com" and change["after"]["email"] == "a***@example.org"
    assert change["before"]["ssn"] == change["after"]["ssn"] == "***-**-6789"
    assert change["before"]["customer_id"] == change["after"]["customer_id"] != "CUST100001"
    assert "notes" not in change["after"]  # deny by default, in before and after
    assert json.loads(out["analytics"][2])["after"] == {"id": change["after"]["id"],
                                                         "customer_id": change["after"]["customer_id"]}
    # the view's own key: the row's key columns under its rules
    assert json.loads(key) == {"id": change["after"]["id"]}
    assert out["analytics"][0] == key  # same domain and rule: the same key in both views
    assert json.loads(headers)["policy_id"] == "customers-cdc"


def test_source_keeps_where_and_when_never_the_query(protector):
    change = json.loads(by_view(protector.process("p", KEY, event("c", None, ADA)))["masked"][2])
    assert change["source"]["table"] == "customers" and change["source"]["lsn"] == 24023128
    assert "query" not in change["source"]
    assert safe_source(SOURCE).keys() <= set(SOURCE) - {"query"}


def test_no_raw_identifier_reaches_a_view(protector):
    routed = protector.process("p", KEY, event("u", ADA, ADA_NEW))
    text = json.dumps([r.value for r in routed])
    for raw in ("CUST100001", "ada@example.com", "ada.l@example.org", "123-45-6789", "Ada Lovelace", '"id": 1'):
        assert raw not in text


def test_a_delete_stays_a_delete_under_the_views_key(protector):
    insert = by_view(protector.process("p", KEY, event("c", None, ADA)))
    delete = by_view(protector.process("p", KEY, event("d", ADA, None)))
    for view in ("masked", "analytics"):
        change = json.loads(delete[view][2])
        assert change["op"] == "d" and change["after"] is None and change["before"]["customer_id"].startswith("cus_")
        assert delete[view][0] == insert[view][0]


@pytest.mark.parametrize("value", ["",      # the Kafka source's empty value: a tombstone
                                   None,    # no value at all
                                   "null"])  # a JSON null
def test_a_tombstone_stays_a_tombstone_in_every_view_under_its_key(protector, value):
    insert = by_view(protector.process("p", KEY, event("c", None, ADA)))
    tomb = by_view(protector.process("p", KEY, value))
    assert set(tomb) == {"masked", "analytics"}
    for view, (key, _, body) in tomb.items():
        assert body == "" and key == insert[view][0]


def test_a_tombstone_keeps_its_key_when_connect_wraps_the_key_in_a_schema(protector):
    wrapped = json.dumps({"schema": {"type": "struct"}, "payload": {"id": 1}})
    assert by_view(protector.process("p", wrapped, ""))["masked"][0] == by_view(protector.process("p", KEY, ""))["masked"][0]


DDL = json.dumps({"source": SOURCE, "databaseName": "shop", "ddl": "ALTER TABLE customers ADD COLUMN tier text",
                  "tableChanges": [{"type": "ALTER", "id": "shop.public.customers"}], "ts_ms": 1})


def test_a_schema_change_goes_to_the_dead_letters_by_default(protector):
    [routed] = protector.process("shop/0/9", None, DDL)
    assert routed.channel == DLQ
    assert json.loads(routed.value[1])["reason"].startswith("schema_change")


def test_a_schema_change_passes_on_to_every_view_when_the_policy_says_pass():
    out = by_view(opened(policy("pass")).process("p", None, DDL))
    assert set(out) == {"masked", "analytics"}
    change = json.loads(out["masked"][2])
    assert change["schema_change"]["ddl"].startswith("ALTER TABLE") and "query" not in change["source"]


@pytest.mark.parametrize("raw, reason", [
    ("{not json", "invalid_json"),                                                    # not JSON
    ("[1, 2]", "not_an_object"),                                                      # not an envelope
    (json.dumps({"op": "c", "after": None, "before": None}), "missing_row after"),      # a create without its row
    (json.dumps({"op": "d", "before": None, "after": None}), "missing_row before"),     # a delete without its row
    (json.dumps({"op": "m", "message": {"content": "c2VjcmV0"}}), "unsupported_op"),  # a logical decoding message
    (json.dumps({"op": "u", "before": "123-45-6789", "after": {}}), "not_a_row before"),  # a row that is not an object
])
def test_what_is_not_a_change_event_is_a_dead_letter_without_its_value(protector, raw, reason):
    [routed] = protector.process("p", KEY, raw)
    assert routed.channel == DLQ and routed.value[2] == raw
    assert json.loads(routed.value[1])["reason"].startswith(reason)
    assert "123-45-6789" not in routed.value[1] and "c2VjcmV0" not in routed.value[1]


def test_a_value_its_rule_refuses_is_a_dead_letter_naming_the_row_part_and_column(protector):
    bad = {**ADA_NEW, "ssn": 123456789}
    [routed] = protector.process("p", KEY, event("u", ADA, bad))
    reason = json.loads(routed.value[1])["reason"]
    assert routed.channel == DLQ and reason.startswith("after: ") and "ssn" in reason and "123456789" not in reason


def test_dropped_columns_are_counted_once_per_record(protector):
    protector.process("p", KEY, event("u", ADA, ADA_NEW))
    assert protector.dropped["masked:notes"] == 1 and protector.dropped["analytics:email"] == 1


def test_a_truncate_passes_on_with_no_rows(protector):
    out = by_view(protector.process("p", None, json.dumps({"op": "t", "before": None, "after": None, "source": SOURCE})))
    assert json.loads(out["masked"][2])["op"] == "t" and out["masked"][0] == ""


@pytest.mark.parametrize("view, problem", [
    ({"sink": {"topic": "t"}, "k_anonymity": {"k": 5}}, "record views only"),              # k-anonymity
    ({"sink": {"topic": "t"}, "differential_privacy": {"epsilon": 1}}, "record views only"),  # DP
])
def test_a_change_event_source_refuses_stateful_views(view, problem):
    document = policy()
    document["views"]["stateful"] = view
    with pytest.raises(PolicyError, match=problem):
        compile_policy(document, file="cdc.yaml")


def test_an_unknown_schema_change_setting_is_refused():
    with pytest.raises(PolicyError, match="schema_changes"):
        compile_policy(policy("ignore"), file="cdc.yaml")


def test_parse_change_reads_a_snapshot_read_as_a_row():
    change = parse_change(event("r", None, ADA), KEY)
    assert change.kind == "row" and change.op == "r" and change.key == {"id": 1}
    with pytest.raises(ChangeError):
        parse_change("42")


def test_forget_finds_the_subjects_live_rows_in_a_change_view():
    from flink_jobs.cdc import subject_row_keys

    def change(subject_before, subject_after):
        return json.dumps({"op": "u", "before": subject_before and {"customer_id": subject_before},
                           "after": subject_after and {"customer_id": subject_after}})

    records = [
        ('{"id":"row_a"}', change(None, "cus_x")),   # the subject's row
        ('{"id":"row_b"}', change(None, "cus_y")),   # another subject's row
        ('{"id":"row_c"}', change(None, "cus_x")),   # the subject's second row ...
        ('{"id":"row_c"}', None),                    # ... already deleted: its tombstone
        ('{"id":"row_d"}', change("cus_x", "cus_z")),  # a row that moved from the subject to another
        (None, change(None, "cus_x")),               # no key: nothing to tombstone
    ]
    assert subject_row_keys(records, "customer_id", "cus_x") == ['{"id":"row_a"}', '{"id":"row_d"}']


def test_a_debezium_avro_value_is_decoded_and_its_decoding_errors_are_change_errors():
    from flink_jobs.avro_format import AvroError

    event = {"before": None, "after": ADA, "op": "c", "ts_ms": 1, "source": SOURCE}
    change = parse_change("\x00\x00\x00\x00\x07body", '{"id": 1}', decode=lambda raw: event)
    assert (change.kind, change.op, change.after, change.key) == ("row", "c", ADA, {"id": 1})
    assert parse_change("", '{"id": 1}', decode=lambda raw: event).kind == "tombstone"

    def unknown(raw: str) -> dict:
        raise AvroError("unknown_schema_id 42")

    with pytest.raises(ChangeError, match="^unknown_schema_id 42$"):
        parse_change("\x00\x00\x00\x00\x2a", None, decode=unknown)


def test_a_column_json_has_no_form_for_is_a_dead_letter_naming_its_type_never_its_value():
    # an Avro bytes column (a bytea) decoded by debezium-avro: kept by a view, it cannot be written as JSON
    document = policy()
    document["views"]["masked"]["fields"]["photo"] = "keep"
    with_photo = opened(document)
    with_photo.cdc.decode = lambda raw: {"before": None, "after": {**ADA, "photo": b"\x89PNG-secret"}, "op": "c",
                                         "ts_ms": 1, "source": SOURCE}
    [dead] = with_photo.process("p/0/1", KEY, "\x00\x00\x00\x00\x01")
    reason = json.loads(dead.value[1])["reason"]
    assert dead.channel == DLQ and reason.startswith("unsupported_value: ") and "bytes" in reason
    assert "secret" not in reason
