"""Avro in the Confluent wire format: framing, schemas derived per view, policy checks, the Protector."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from flink_jobs.avro_format import (
    AvroError,
    FileSchemaStore,
    _inline_named,
    change_row_schema,
    encode,
    schema_id,
    split_frame,
)
from flink_jobs.policy import PolicyError, compile_policy
from flink_jobs.protect import DLQ, Protector
from udfs.keyring import Keyring

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "conf/policies/customer-events-avro.yaml"
SCHEMA = ROOT / "conf/schemas/customer-event.avsc"
EVENT = {"customerId": "CUST303148", "name": "Seo-yeon Wright", "email": "seoyeon.wright1992@example.net",
         "ssn": "703-40-3708", "card": "4511939257737224", "phone": "+1-412-555-0133", "age": 37, "zip": "15222",
         "lat": 40.438295, "lon": -80.022002, "region": "us-east", "purchaseAmount": 24.79,
         "timestamp": "2024-03-15T00:00:00Z", "address": {"street": "12 Elm St", "city": "Pittsburgh", "zip": "15222"},
         "notes": "VIP"}


def source_frame(record: dict = EVENT) -> str:
    from fastavro import parse_schema

    schema = json.loads(SCHEMA.read_text())
    return encode(record, schema_id(schema), parse_schema(schema)).decode("latin-1")


@pytest.fixture(scope="module")
def protector() -> Protector:
    policy = compile_policy(yaml.safe_load(POLICY.read_text()), file=str(POLICY))
    opened = Protector(policy.document, policy.file)
    opened.open(Keyring.generate())
    return opened


def read_view(protector: Protector, view: str, raw: str) -> dict:
    import io

    from fastavro import parse_schema, schemaless_reader

    sid, body = split_frame(raw.encode("latin-1"))
    schema = protector.avro.store.by_id(sid)
    return schemaless_reader(io.BytesIO(body), parse_schema(schema), None)


def test_an_avro_record_is_protected_into_each_views_own_format(protector):
    out = {r.channel: r.value for r in protector.process("raw/0/1", None, source_frame())}
    masked = read_view(protector, "masked", out["masked"][2])
    assert masked["customerId"].startswith("cus_") and masked["email"] == "s***@example.net"
    assert masked["age"] == "20-39"                     # an int column, published as a string range
    assert masked["address"]["zip"] == "152**" and masked["address"]["street"] != "12 Elm St"
    assert "notes" not in masked and "lat" not in masked  # columns the view does not name
    support = json.loads(out["support"][2])             # a JSON view beside it
    assert support == {"customerId": masked["customerId"], "email": "s***@example.net", "region": "us-east",
                       "timestamp": "2024-03-15T00:00:00Z"}


def test_each_views_schema_drops_its_columns_and_changes_its_types(protector):
    sid, _ = split_frame(protector.process("p", None, source_frame())[0].value[2].encode("latin-1"))
    schema = protector.avro.store.by_id(sid)
    fields = {f["name"]: f["type"] for f in schema["fields"]}
    assert fields["age"] == ["null", "string"] and fields["purchaseAmount"] == ["null", "double"]
    assert "notes" not in fields and "lat" not in fields
    address = next(t for t in fields["address"] if isinstance(t, dict))
    assert [f["name"] for f in address["fields"]] == ["street", "zip"]


@pytest.mark.parametrize("raw, reason", [
    ("{\"customerId\": 1}", "not_avro"),                                    # JSON, not the wire format
    ("\x00\x00\x00\x00\x2a" + "\x02", "unknown_schema_id 42"),              # a schema id nobody registered
    (source_frame()[:5] + "\x07\x01", "schema_mismatch"),                   # a body that is not the schema's
    (source_frame() + "\x00", "schema_mismatch"),                           # trailing bytes after the record
])
def test_bad_bytes_are_dead_letters_with_a_reason_and_their_bytes_kept(protector, raw, reason):
    [routed] = protector.process("raw/0/9", None, raw)
    assert routed.channel == DLQ and routed.value[2] == raw
    assert json.loads(routed.value[1])["reason"].startswith(reason)


def test_a_record_its_schema_refuses_is_an_error_that_never_quotes_the_value():
    from fastavro import parse_schema

    schema = parse_schema({"type": "record", "name": "R", "fields": [{"name": "age", "type": "int"}]})
    with pytest.raises(AvroError) as caught:
        encode({"age": "703-40-3708"}, 7, schema)
    assert str(caught.value).startswith("schema_mismatch") and "703-40-3708" not in str(caught.value)


def test_a_path_the_schema_does_not_have_is_refused_naming_both():
    document = yaml.safe_load(POLICY.read_text())
    document["views"]["masked"]["fields"]["loyaltyTier"] = "keep"
    document["views"]["masked"]["fields"]["address.country"] = "keep"
    with pytest.raises(PolicyError) as caught:
        compile_policy(document, file=str(POLICY))
    text = str(caught.value)
    assert "views.masked.fields.loyaltyTier: not in the source schema CustomerEvent" in text
    assert "views.masked.fields.address.country: not in the source schema CustomerEvent" in text


@pytest.mark.parametrize("change, problem", [
    ({"source": {"format": "avro", "schema": None}}, "source.schema: missing"),             # no schema
    ({"source": {"format": "avro", "schema": "nope.avsc"}}, "cannot read the Avro schema"),  # no such file
    ({"source": {"format": "json"}}, "derives its schema from an avro source"),            # avro view, JSON source
    ({"sink_format": "xml"}, "unknown format 'xml'"),                                       # no such format
])
def test_avro_settings_are_checked(change, problem):
    document = yaml.safe_load(POLICY.read_text())
    document["source"].update(change.get("source", {}))
    if "sink_format" in change:
        document["views"]["support"]["sink"]["format"] = change["sink_format"]
    with pytest.raises(PolicyError, match=problem):
        compile_policy(document, file=str(POLICY))


def test_schema_ids_are_stable_and_a_store_finds_them():
    schema = json.loads(SCHEMA.read_text())
    store = FileSchemaStore(SCHEMA, "raw-value")
    assert store.latest("raw-value") == (schema_id(schema), schema) and store.by_id(schema_id(schema)) == schema
    with pytest.raises(AvroError, match="not_avro"):
        split_frame(b"\x01abcd")


def test_avro_schemas_writes_each_avro_views_schema(tmp_path, capsys):
    from flink_jobs.cli import main

    assert main(["avro-schemas", "--policy", str(POLICY), "--schema", str(SCHEMA), "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "masked-customer-events-avro-value.avsc").read_text())
    assert f"schema id {schema_id(written)}" in capsys.readouterr().out
    assert not (tmp_path / "support-customer-events-value.avsc").exists()  # a JSON view has none


def test_a_registry_that_does_not_answer_is_a_policy_problem_not_a_dead_letter():
    from flink_jobs.cli.avro import load_policy_with_schema
    from flink_jobs.devtools.processes import free_port

    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v6"  # nothing listens there
    with pytest.raises(PolicyError, match=r"source\.schema: schema registry http://127\.0\.0\.1:\d+/apis/ccompat/v6/"):
        load_policy_with_schema(str(POLICY), None, registry=url)


def test_run_takes_a_schema_file_or_a_registry_not_both(capsys):
    from flink_jobs.cli import main

    assert main(["run", "--policy", str(POLICY), "--schema", str(SCHEMA), "--schema-registry", "http://127.0.0.1:1",
                 "--bootstrap-servers", "127.0.0.1:1", "--keyring", "env:FLINK_ANONYMIZER_TEST_UNSET"]) != 0
    assert "--schema FILE.avsc and --schema-registry URL are alternatives" in capsys.readouterr().err


#: a Debezium envelope as Apicurio's converter registers it: the row defined in `before`, named in
#: `after`, and `source` a reference to a schema registered on its own
SOURCE_RECORD = {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
                 "fields": [{"name": "table", "type": "string"}]}
ENVELOPE = {"type": "record", "name": "Envelope", "namespace": "shop.public.customers", "fields": [
    {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
        {"name": "id", "type": "int"}, {"name": "email", "type": ["null", "string"]}]}], "default": None},
    {"name": "after", "type": ["null", "Value"], "default": None},
    {"name": "source", "type": "io.debezium.connector.postgresql.Source"},
    {"name": "op", "type": "string"}]}


def test_a_referenced_schema_is_defined_where_it_is_first_named_and_the_envelope_then_parses():
    from fastavro import parse_schema

    inlined = _inline_named(ENVELOPE, {"io.debezium.connector.postgresql.Source": SOURCE_RECORD})
    assert inlined["fields"][2]["type"] == SOURCE_RECORD
    assert inlined["fields"][1]["type"] == ["null", "Value"]  # a name the schema defines itself stays a name
    parse_schema(inlined)
    record = {"before": None, "after": {"id": 1, "email": None}, "source": {"table": "customers"}, "op": "c"}
    sid = schema_id(inlined)
    assert split_frame(encode(record, sid, parse_schema(inlined)))[0] == sid


def test_the_row_schema_of_an_envelope_is_the_record_of_before_and_after():
    assert [f["name"] for f in change_row_schema(ENVELOPE)["fields"]] == ["id", "email"]
    assert change_row_schema({"type": "record", "name": "Plain", "fields": [{"name": "id", "type": "int"}]}) is None


# -- Avro keys (Kafka Connect's Avro converter for keys too) ------------------------------------------

KEY_SCHEMA = {"type": "record", "name": "Key", "namespace": "shop.public.customers",
              "fields": [{"name": "id", "type": "int"}]}


def framed(datum: object, schema: object, store) -> str:
    """``datum`` in the wire format under ``schema``, registered in ``store`` as a producer would, as Latin-1 text."""
    from fastavro import parse_schema

    return encode(datum, store.register("keys-key", schema), parse_schema(schema)).decode("latin-1")


@pytest.mark.parametrize("key, schema, expected", [
    ({"id": 7}, KEY_SCHEMA, '{"id":7}'),                          # Debezium's key struct: its compact JSON
    ("CUST303148", "string", "CUST303148"),                       # a string key: the string itself
    ({"amount": Decimal("12.34")}, {"type": "record", "name": "Money", "fields": [{"name": "amount", "type": {
        "type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}}]}, '{"amount":"12.34"}'),  # NUMERIC
])
def test_an_avro_key_decodes_to_what_the_same_key_as_json_reads(protector, key, schema, expected):
    assert protector.avro.decode_key(framed(key, schema, protector.avro.store)) == expected


@pytest.mark.parametrize("raw_key", [
    '{"id": 7}',                              # Connect's JsonConverter key: unchanged
    "CUST303148",                             # a plain text key
    "Zoë".encode().decode("latin-1"),          # UTF-8 bytes, as a binary source hands them over
])
def test_a_key_not_in_the_wire_format_is_read_as_text_as_before(protector, raw_key):
    assert protector.avro.decode_key(raw_key) == raw_key.encode("latin-1").decode("utf-8")


@pytest.mark.parametrize("raw_key, reason", [
    ("\x00\x77\x35\x94\x00" + "\x0e", "unknown_schema_id 2000000000"),  # an id nobody registered
    ("\x00\x00\x07", "not_avro"),                                       # the frame cut inside the schema id
    (None, "schema_mismatch"),                                          # the body cut short
])
def test_a_framed_key_that_cannot_be_read_is_an_avro_error_naming_the_problem(protector, raw_key, reason):
    if raw_key is None:
        raw_key = framed({"id": 300000}, KEY_SCHEMA, protector.avro.store)[:-1]
    with pytest.raises(AvroError) as caught:
        protector.avro.decode_key(raw_key)
    assert str(caught.value).startswith(reason)


def test_an_avro_source_with_avro_keys_is_protected_as_with_text_keys_and_a_bad_key_is_a_dead_letter(protector):
    avro_key = framed("CUST303148", "string", protector.avro.store)
    with_avro_key = [r.value for r in protector.process("raw/0/1", avro_key, source_frame())]
    with_text_key = [r.value for r in protector.process("raw/0/2", "CUST303148", source_frame())]
    assert with_avro_key == with_text_key and len(with_avro_key) == 2
    assert all(key.startswith("cus_") for key, _, _ in with_avro_key)  # each view's own subject, never the raw key

    bad_key = "\x00\x77\x35\x94\x00" + "\x14CUST303148"  # an unknown id before a readable id
    [dead] = protector.process("raw/0/3", bad_key, source_frame())
    assert dead.channel == DLQ and dead.value[0] == bad_key and dead.value[2] == source_frame()  # bytes kept
    reason = json.loads(dead.value[1])["reason"]
    assert reason == "bad_key unknown_schema_id 2000000000" and "CUST" not in dead.value[1]


#: a Debezium envelope defined in one piece, as a file store holds it
CDC_ROW = {"type": "record", "name": "Value", "fields": [
    {"name": "id", "type": "int"}, {"name": "customer_id", "type": "string"},
    {"name": "email", "type": ["null", "string"], "default": None}]}
CDC_ENVELOPE = {"type": "record", "name": "Envelope", "namespace": "shop.public.customers", "fields": [
    {"name": "before", "type": ["null", CDC_ROW], "default": None},
    {"name": "after", "type": ["null", "Value"], "default": None},
    {"name": "source", "type": {"type": "record", "name": "Source", "fields": [{"name": "table", "type": "string"}]}},
    {"name": "op", "type": "string"}, {"name": "ts_ms", "type": ["null", "long"], "default": None}]}


@pytest.fixture
def change_protector(tmp_path) -> Protector:
    schema = tmp_path / "envelope.avsc"
    schema.write_text(json.dumps(CDC_ENVELOPE))
    document = {"version": 1, "id": "customers-cdc-avro", "subject_field": "customer_id",
                "source": {"topic": "shop.public.customers", "format": "debezium-avro", "schema": f"file:{schema}",
                           "timestamp_field": "ts_ms"},
                "views": {"masked": {"sink": {"topic": "customers.masked"}, "fields": {
                    "id": {"pseudonymize": "hmac_sha256", "prefix": "row_", "domain": "row_id"},
                    "customer_id": {"pseudonymize": "hmac_sha256", "prefix": "cus_", "domain": "customer_id"},
                    "email": {"mask": "email"}}}}}
    compiled = compile_policy(document, file=str(tmp_path / "cdc.yaml"))
    opened = Protector(compiled.document, compiled.file)
    opened.open(Keyring.generate())
    return opened


def change_frame(store, op: str, before: dict | None, after: dict | None) -> str:
    from fastavro import parse_schema

    event = {"before": before, "after": after, "source": {"table": "customers"}, "op": op, "ts_ms": 1}
    sid = store.latest("shop.public.customers-value")[0]
    return encode(event, sid, parse_schema(CDC_ENVELOPE)).decode("latin-1")


def test_a_debezium_avro_change_with_an_avro_key_is_keyed_as_with_a_json_key_and_so_is_its_tombstone(
        change_protector):
    store = change_protector._source_codec.store
    row = {"id": 1, "customer_id": "CUST100001", "email": "ada@example.com"}
    avro_key = framed({"id": 1}, KEY_SCHEMA, store)
    [update_avro_key] = change_protector.process("p/0/1", avro_key, change_frame(store, "u", row, row))
    [update_json_key] = change_protector.process("p/0/2", '{"id": 1}', change_frame(store, "u", row, row))
    [delete] = change_protector.process("p/0/3", avro_key, change_frame(store, "d", row, None))
    [tombstone] = change_protector.process("p/0/4", avro_key, "")
    assert update_avro_key.value == update_json_key.value
    view_key = update_avro_key.value[0]
    assert json.loads(view_key)["id"].startswith("row_")
    assert delete.value[0] == tombstone.value[0] == view_key and tombstone.value[2] == ""

    truncated = avro_key[:3]  # the magic byte, then the frame cut short: even a tombstone cannot be keyed
    [dead] = change_protector.process("p/0/5", truncated, "")
    assert dead.channel == DLQ and dead.value[0] == truncated
    assert json.loads(dead.value[1])["reason"].startswith("bad_key not_avro")
