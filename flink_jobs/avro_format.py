"""Avro in the Confluent wire format (``source.format: avro``, a view's ``sink.format: avro``), in plain Python.

A record is a magic byte 0, a 4-byte big-endian schema id, then the Avro binary body
(fastavro's schemaless encoding). Schemas come from one seam, a :class:`SchemaStore`:

- ``file:PATH.avsc`` (:class:`FileSchemaStore`): the source's schema from a file (``--schema``),
  and each view's schema derived from it. A schema's id is the first 31 bits of the SHA-256 of its
  parsing canonical form, so a reader holding the ``.avsc`` files finds the same ids
  (``flink-anonymizer avro-schemas`` writes them, one ``<topic>-value.avsc`` per view).
- ``http(s)://...`` (:class:`RegistrySchemaStore`): a Confluent-compatible schema registry
  (``--schema-registry URL``, e.g. ``http://127.0.0.1:8085/apis/ccompat/v6`` from ``make registry-up``).
  The source's schema is the latest under ``<source topic>-value`` (its producer registered it); each
  view registers its own under ``<view topic>-value``, and the registry's id goes in every header, so a
  reader that knows only the registry's URL decodes a view.

A source's record key may be framed too (Kafka Connect's Avro converter for keys): the same codec
decodes it through the same store (:meth:`AvroCodec.decode_key`), and a key that is not framed is text.

A view's schema is the source's with the columns the view drops left out and the types its
transforms change: a kept column keeps its type, any other transform publishes a string (a masked
integer becomes a string, a generalized age the string ``"20-39"``). Every view field is nullable.
"""

from __future__ import annotations

import copy
import decimal
import hashlib
import io
import json
import struct
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import orjson

MAGIC = 0
FORMATS = ("json", "avro")
#: source formats framed in the Confluent wire format: Avro records, and Debezium's change events as Avro
#: (whose views are JSON: flink_jobs/cdc.py)
AVRO_SOURCES = ("avro", "debezium-avro")
#: transforms whose output keeps the column's own type
_KEEPS = ("keep", "keep.integer", "keep.number", "keep.string")
_DROPS = ("drop",)


class AvroError(ValueError):
    """A record that cannot be read or written; the message is a dead-letter reason, never a value."""


class SchemaStore(Protocol):
    """Where schemas live: ids to schemas, and each subject's latest."""

    def by_id(self, schema_id: int) -> dict | None: ...

    def register(self, subject: str, schema: dict) -> int: ...

    def latest(self, subject: str) -> tuple[int, dict] | None: ...


def _parse(schema: dict) -> Any:
    from fastavro import parse_schema

    return parse_schema(copy.deepcopy(schema))


def schema_id(schema: dict) -> int:
    """A stable id for ``schema``: the first 31 bits of the SHA-256 of its parsing canonical form."""
    from fastavro.schema import to_parsing_canonical_form

    canonical = to_parsing_canonical_form(_parse(schema))
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big") & 0x7FFFFFFF


class FileSchemaStore:
    """Schemas from ``.avsc`` files; ids derived from the schemas themselves (see :func:`schema_id`)."""

    def __init__(self, source_schema: Path, source_subject: str) -> None:
        self._by_id: dict[int, dict] = {}
        self._latest: dict[str, int] = {}
        try:
            schema = json.loads(Path(source_schema).read_text())
        except (OSError, ValueError) as exc:
            raise AvroError(f"cannot read the Avro schema {source_schema}: {exc.__class__.__name__}") from None
        self.register(source_subject, schema)

    def by_id(self, schema_id: int) -> dict | None:
        return self._by_id.get(schema_id)

    def register(self, subject: str, schema: dict) -> int:
        sid = schema_id(schema)
        self._by_id[sid] = schema
        self._latest[subject] = sid
        return sid

    def latest(self, subject: str) -> tuple[int, dict] | None:
        sid = self._latest.get(subject)
        return None if sid is None else (sid, self._by_id[sid])


class RegistryUnavailable(RuntimeError):
    """The registry did not answer, or answered an error other than "not found".

    Never a record's fault, so never a dead letter: the job fails and restarts instead.
    """


class RegistrySchemaStore:
    """Schemas in a Confluent-compatible registry (its REST API at ``url``); schemas cached by id.

    ``POST /subjects/{subject}/versions`` registers (the same schema again gets the same id),
    ``GET /schemas/ids/{id}`` fetches, ``GET /subjects/{subject}/versions/latest`` finds a subject's latest.
    """

    _CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._by_id: dict[int, dict] = {}

    def _call(self, path: str, body: dict | None = None) -> dict | None:
        """The answer's JSON, or None when the registry says "not found" (HTTP 404)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST",
                                         headers={"Content-Type": self._CONTENT_TYPE, "Accept": self._CONTENT_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace")[:300]
            raise RegistryUnavailable(f"schema registry {self.url}{path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryUnavailable(f"schema registry {self.url}{path}: {exc}") from None

    def _schema_of(self, answer: dict, seen: frozenset[str] = frozenset()) -> dict:
        """The answer's schema, its references (Confluent's ``references``) defined inline where first named.

        Apicurio's Kafka Connect converter registers a nested record (Debezium's ``source``) as a
        schema of its own and references it by name; a parser needs it defined in place.
        """
        schema = json.loads(answer["schema"])
        named = {}
        for ref in answer.get("references") or []:
            if ref["name"] in seen:
                continue
            found = self._call(f"/subjects/{urllib.parse.quote(ref['subject'], safe='')}/versions/{ref['version']}")
            if found is None:
                raise RegistryUnavailable(f"schema registry {self.url}: the reference {ref['name']} is not registered")
            named[ref["name"]] = self._schema_of(found, seen | {ref["name"]})
        return _inline_named(schema, named) if named else schema

    def by_id(self, schema_id: int) -> dict | None:
        schema = self._by_id.get(schema_id)
        if schema is None:
            answer = self._call(f"/schemas/ids/{schema_id}")
            if answer is None:
                return None
            schema = self._by_id[schema_id] = self._schema_of(answer)
        return schema

    def register(self, subject: str, schema: dict) -> int:
        answer = self._call(f"/subjects/{urllib.parse.quote(subject, safe='')}/versions",
                            {"schema": json.dumps(schema)})
        if answer is None or "id" not in answer:
            raise RegistryUnavailable(f"schema registry {self.url}: registering {subject} returned no id")
        self._by_id[int(answer["id"])] = schema
        return int(answer["id"])

    def latest(self, subject: str) -> tuple[int, dict] | None:
        answer = self._call(f"/subjects/{urllib.parse.quote(subject, safe='')}/versions/latest")
        if answer is None:
            return None
        sid, schema = int(answer["id"]), self._schema_of(answer)
        self._by_id[sid] = schema
        return sid, schema


def _inline_named(schema: Any, named: dict[str, dict]) -> Any:
    """``schema`` with the first use of each name in ``named`` replaced by its definition (later uses name it)."""
    pending = dict(named)

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return pending.pop(node) if node in pending else node
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(value) if key in ("type", "fields", "items", "values") else value
                    for key, value in node.items()}
        return node

    return walk(schema)


def open_store(reference: str, source_subject: str) -> SchemaStore:
    """The seam: ``http(s)://...`` is a registry, ``file:PATH.avsc`` (or a bare path) a :class:`FileSchemaStore`."""
    if reference.startswith(("http://", "https://")):
        return RegistrySchemaStore(reference)
    return FileSchemaStore(Path(reference.removeprefix("file:")), source_subject)


def encode(record: dict, sid: int, parsed: Any) -> bytes:
    """Confluent framing around fastavro's schemaless binary encoding."""
    from fastavro import schemaless_writer

    out = io.BytesIO()
    out.write(struct.pack(">bI", MAGIC, sid))
    try:
        schemaless_writer(out, parsed, record)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # fastavro's message may quote the datum: name the problem's kind only
        raise AvroError(f"schema_mismatch: the record does not match its schema ({exc.__class__.__name__})") from None
    return out.getvalue()


def split_frame(data: bytes) -> tuple[int, bytes]:
    """(schema id, Avro body) of a Confluent-framed record."""
    if len(data) < 5 or data[0] != MAGIC:
        raise AvroError("not_avro: no Confluent magic byte and schema id")
    return struct.unpack(">I", data[1:5])[0], data[5:]


class AvroCodec:
    """Decode source records and encode view records, with schemas from a :class:`SchemaStore`.

    Kafka hands binary values over as Latin-1 text (one character per byte, lossless), the
    shape every channel of the job carries; :meth:`decode` and :meth:`encode_view` speak that.
    """

    def __init__(self, store: SchemaStore, source_subject: str) -> None:
        self.store = store
        latest = store.latest(source_subject)
        if latest is None:
            raise AvroError(f"no schema registered under {source_subject}")
        self.source_schema = latest[1]
        self._readers: dict[int, Any] = {}
        self._views: dict[str, tuple[int, Any]] = {}

    def add_view(self, view: str, subject: str, schema: dict) -> int:
        sid = self.store.register(subject, schema)
        self._views[view] = (sid, _parse(schema))
        return sid

    def decode(self, raw: str) -> dict:
        record = self._read(raw.encode("latin-1"))
        if not isinstance(record, dict):
            raise AvroError("not_an_object: the schema is not a record")
        return record

    def decode_key(self, raw_key: str) -> str:
        """A record key as the job reads a JSON key: Avro in the wire format decoded, any other key as its text.

        ``raw_key`` is the key's bytes as Latin-1 text. A key framed in the wire format (Kafka
        Connect's Avro converter for keys) is read through the same store as the values: a record
        becomes its compact JSON, a string itself. A key that is not framed is UTF-8 text (a JSON
        key), read as a text key column reads it. :class:`AvroError` (the reason, never the key)
        for a framed key that cannot be read.
        """
        data = raw_key.encode("latin-1")
        if not data.startswith(b"\x00"):
            return data.decode("utf-8", "replace")
        key = self._read(data)
        if isinstance(key, str):
            return key
        try:
            return orjson.dumps(key, default=_key_json).decode()
        except orjson.JSONEncodeError:
            raise AvroError("unsupported_value: a key column JSON has no form for (bytes)") from None

    def _read(self, data: bytes) -> Any:
        """The datum in a Confluent-framed record, read with its writer schema (fetched by id, then cached)."""
        from fastavro import schemaless_reader

        sid, body = split_frame(data)
        parsed = self._readers.get(sid)
        if parsed is None:
            schema = self.store.by_id(sid)
            if schema is None:
                raise AvroError(f"unknown_schema_id {sid}")
            parsed = self._readers[sid] = _parse(schema)
        try:
            stream = io.BytesIO(body)
            record = schemaless_reader(stream, parsed, None)
            if stream.tell() != len(body):
                raise ValueError("trailing bytes")
        except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds on bad bytes
            raise AvroError(f"schema_mismatch: the body does not match schema {sid} ({exc.__class__.__name__})") from None
        return record

    def encode_view(self, view: str, record: dict) -> str:
        sid, parsed = self._views[view]
        return encode(record, sid, parsed).decode("latin-1")


def _key_json(value: Any) -> Any:
    # Avro's decimal (Debezium's NUMERIC key columns) as its exact digits; bytes have no JSON form
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError


# -- view schemas ---------------------------------------------------------------------------------

def _nullable(avro_type: Any) -> list:
    types = avro_type if isinstance(avro_type, list) else [avro_type]
    return ["null", *[t for t in types if t != "null"]]


def _record_of(avro_type: Any) -> dict | None:
    types = avro_type if isinstance(avro_type, list) else [avro_type]
    return next((t for t in types if isinstance(t, dict) and t.get("type") == "record"), None)


def _array_of(avro_type: Any) -> dict | None:
    types = avro_type if isinstance(avro_type, list) else [avro_type]
    return next((t for t in types if isinstance(t, dict) and t.get("type") == "array"), None)


def view_schema(source: dict, tree: Any, name: str, namespace: str = "flink_anonymizer") -> dict:
    """The schema of a view's records: only the columns the view names, each typed by its transform."""
    return {"type": "record", "name": name, "namespace": namespace,
            "fields": _fields(source, tree, name)}


def _fields(record: dict, node: Any, prefix: str) -> list[dict]:
    from udfs.record import ArrayOf, Leaf

    by_name = {f["name"]: f for f in record.get("fields", [])}
    fields = []
    for child_name, child in node.children.items():
        source_field = by_name.get(child_name)
        if source_field is None:
            continue  # check_paths reports it
        out_type = _child_type(source_field["type"], child, f"{prefix}_{child_name}", Leaf, ArrayOf)
        if out_type is not None:
            fields.append({"name": child_name, "type": _nullable(out_type), "default": None})
    return fields


def _child_type(avro_type: Any, child: Any, name: str, leaf_cls: Any, array_cls: Any) -> Any:
    if isinstance(child, leaf_cls):
        transform = child.transform.name
        if transform in _DROPS:
            return None
        if transform in _KEEPS:
            return avro_type
        if transform == "null":
            return "null"
        return "string"
    if isinstance(child, array_cls):
        array = _array_of(avro_type)
        item = _child_type(array["items"], child.item, name, leaf_cls, array_cls) if array else "string"
        return {"type": "array", "items": item if item is not None else "null"}
    record = _record_of(avro_type)
    return {"type": "record", "name": name, "fields": _fields(record or {}, child, name)}


def check_paths(source: dict, views: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every view field path that the source schema does not have, as (path, problem, allowed)."""
    from udfs.record import ArrayOf, Leaf

    problems = []

    def walk(record: dict | None, node: Any, where: str, path: str) -> None:
        by_name = {f["name"]: f for f in (record or {}).get("fields", [])}
        for child_name, child in node.children.items():
            here = f"{path}.{child_name}" if path else child_name
            field = by_name.get(child_name)
            if field is None:
                problems.append((f"{where}.{here}", f"not in the source schema {source.get('name', '?')}",
                                 "one of its fields: " + ", ".join(by_name) if by_name else "a record field"))
                continue
            inner = child.item if isinstance(child, ArrayOf) else child
            if isinstance(inner, Leaf):
                continue
            target = field["type"]
            if isinstance(child, ArrayOf):
                array = _array_of(target)
                target = array["items"] if array else None
            walk(_record_of(target), inner, where, here + ("[*]" if isinstance(child, ArrayOf) else ""))

    for view_name, view in views.items():
        if view.tree is not None:
            walk(source, view.tree, f"views.{view_name}.fields", "")
    return problems


def binary_source(doc: dict) -> bool:
    """Whether the policy's source topic holds bytes (Avro), read and dead-lettered as Latin-1 text."""
    return (doc.get("source") or {}).get("format") in AVRO_SOURCES


def change_row_schema(envelope: dict) -> dict | None:
    """The row's record schema in a Debezium envelope's schema (the type of ``before`` and ``after``), or None.

    Avro defines the record once, in ``before``; ``after`` names it.
    """
    types = [f["type"] for f in envelope.get("fields", []) if f.get("name") in ("before", "after")]
    return next((record for record in map(_record_of, types) if record is not None), None)


def source_subject(doc: dict) -> str:
    return f"{(doc.get('source') or {}).get('topic')}-value"


def view_subject(doc: dict, view: str) -> str:
    return f"{doc['views'][view]['sink'].get('topic')}-value"


def avro_views(doc: dict) -> list[str]:
    """The views whose sink format is avro."""
    return [name for name, view in (doc.get("views") or {}).items()
            if isinstance(view, dict) and (view.get("sink") or {}).get("format") == "avro"]


def check_policy(doc: dict, views: dict[str, Any], file: str) -> list[tuple[str, str, str]]:
    """Problems of an Avro source or Avro sinks: formats, the schema reference, and every field path.

    A relative ``source.schema`` path is resolved against the policy's folder, in ``doc`` itself,
    so the workers read the same file.
    """
    problems = []
    source = doc.get("source") or {}
    for name, raw in (doc.get("views") or {}).items():
        fmt = ((raw or {}).get("sink") or {}).get("format", "json") if isinstance(raw, dict) else "json"
        if fmt not in FORMATS:
            problems.append((f"views.{name}.sink.format", f"unknown format {fmt!r}", ", ".join(FORMATS)))
        elif fmt == "avro":
            view = views.get(name)
            if view is not None and not view.is_record_view or (view is not None and view.k_anonymity):
                problems.append((f"views.{name}.sink.format", "avro is for record views (fields) only",
                                 "json for k-anonymity and differential privacy views"))
            if source.get("format") != "avro":
                problems.append((f"views.{name}.sink.format", "an avro view derives its schema from an avro source",
                                 "source.format: avro with source.schema, or json (the views of a "
                                 "change-event source are JSON)"))
    if source.get("format") not in AVRO_SOURCES:
        return problems
    reference = source.get("schema")
    if not isinstance(reference, str) or not reference:
        problems.append(("source.schema", "missing: an avro source needs its schema",
                         "file:PATH.avsc (relative to the policy), --schema FILE.avsc or --schema-registry URL"))
        return problems
    if not reference.startswith(("http://", "https://")):
        path = Path(reference.removeprefix("file:"))
        if not path.is_absolute() and file and not file.startswith("<"):
            path = Path(file).resolve().parent / path
        source["schema"] = reference = f"file:{path.resolve()}"
    try:
        store = open_store(reference, source_subject(doc))
        latest = store.latest(source_subject(doc))
    except AvroError as exc:
        problems.append(("source.schema", str(exc), "a readable .avsc file"))
        return problems
    except RegistryUnavailable as exc:
        problems.append(("source.schema", str(exc), "a Confluent-compatible registry that answers"))
        return problems
    if latest is None:
        problems.append(("source.schema", f"no schema registered under {source_subject(doc)} in {reference}",
                         "the source topic's producer registers its schema under <topic>-value (Connect's "
                         "Avro converter does so with the connector's first change)"))
        return problems
    schema = latest[1]
    if source.get("format") == "debezium-avro":
        # field paths name the table's columns: the record type of the envelope's `after`
        schema = change_row_schema(schema) if isinstance(schema, dict) else None
        if schema is None:
            problems.append(("source.schema", f"the schema under {source_subject(doc)} is not a Debezium change "
                             "event (no record field before or after)", "the envelope Debezium's connector registers"))
            return problems
    if not isinstance(schema, dict) or schema.get("type") != "record":
        problems.append(("source.schema", "the schema is not a record", "an Avro record schema"))
        return problems
    try:
        _parse(schema)
    except Exception as exc:  # noqa: BLE001 - fastavro's SchemaParseError and friends
        problems.append(("source.schema", f"not a valid Avro schema ({exc})", "an Avro record schema"))
        return problems
    problems.extend(check_paths(schema, views))
    return problems


def source_codec(doc: dict) -> AvroCodec | None:
    """The codec of an ``avro`` or ``debezium-avro`` source (None for any other): its values, and its Avro keys."""
    source = doc.get("source") or {}
    if source.get("format") not in AVRO_SOURCES:
        return None
    subject = source_subject(doc)
    return AvroCodec(open_store(source["schema"], subject), subject)


def codec_for(doc: dict, views: dict[str, Any]) -> AvroCodec | None:
    """The job's codec (None without Avro): the source schema, and each avro view's schema registered."""
    if (doc.get("source") or {}).get("format") != "avro":
        return None
    codec = source_codec(doc)
    for name in avro_views(doc):
        codec.add_view(name, view_subject(doc, name), view_schema(codec.source_schema, views[name].tree, name))
    return codec
