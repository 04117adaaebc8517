"""Debezium change events (``source.format: debezium-json`` or ``debezium-avro``), in plain Python.

A change event is an envelope around a table row::

    {"before": {...} | null, "after": {...} | null, "op": "c|u|d|r|t", "ts_ms": ...,
     "source": {"connector": "postgresql", "db": ..., "schema": ..., "table": ..., "lsn": ..., ...}}

with or without Kafka Connect's ``{"schema": ..., "payload": ...}`` wrapper (``schemas.enable``),
or the same envelope as Avro in the Confluent wire format (``debezium-avro``: Connect's Avro
converter registered its schema in a schema registry; the job reads it with
:class:`flink_jobs.avro_format.AvroCodec`, the source's codec, which the Protector passes as ``decode``).
The event's key is JSON (Connect's ``JsonConverter`` for keys) or, on a ``debezium-avro`` source, may
be Avro too (Connect's Avro converter for keys): the Protector decodes an Avro key to its JSON first
(:meth:`~flink_jobs.avro_format.AvroCodec.decode_key`), so this module sees JSON keys only.
The policy's field paths name the row's columns. Each record view protects ``before`` and
``after`` with the same rules and keeps ``op``, ``ts_ms`` and the safe parts of ``source``
(:data:`SAFE_SOURCE`: where the change came from, never a query text). A delete (``after:
null``) stays a delete, and a tombstone (no value) stays a tombstone, in every view: both under
the view's own key, which is the event's key (the row's primary key columns) protected by the
view's rules. A view that does not name a key column has no key (name the key columns, or
compaction cannot find the row).

Schema-change events (Debezium's ``ddl``/``tableChanges`` records) go to the dead letters by
default; with ``source.schema_changes: pass`` every record view gets ``{"schema_change": {...}}``
with the DDL, which the policy author then publishes as it is.

The view's output value is JSON without a Connect schema, whatever the source's format: the
protected types differ from the table's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from udfs.errors import TransformError
from udfs.record import apply_view

#: ``source.format`` values of change-event sources: the envelope as JSON, or as Avro through a registry
FORMATS = ("debezium-json", "debezium-avro")
SCHEMA_CHANGES = ("dead_letter", "pass")
#: the parts of ``source`` a protected view keeps: where and when, never what (no query text)
SAFE_SOURCE = ("version", "connector", "name", "ts_ms", "ts_us", "ts_ns", "snapshot", "db", "schema", "table",
               "sequence", "lsn", "txId", "xmin", "file", "pos", "row", "gtid", "server_id", "collection")
#: row operations: create, update, delete, snapshot read, truncate
ROW_OPS = ("c", "u", "d", "r", "t")


class ChangeError(ValueError):
    """A value that is not a change event this module understands; the message is a dead-letter reason."""


@dataclass(frozen=True)
class Change:
    """One parsed event. ``kind`` is ``row``, ``tombstone`` or ``schema_change``."""

    kind: str
    op: str | None = None
    before: dict | None = None
    after: dict | None = None
    ts_ms: Any = None
    source: dict | None = None
    key: dict | None = None
    ddl: dict | None = None


def check_source(source: dict, views: dict) -> list[tuple[str, str, str]]:
    """Policy problems of a change-event source, as (path, what is wrong, what is allowed).

    A ``debezium-avro`` source's schema and field paths are checked by :mod:`flink_jobs.avro_format`.
    """
    problems = []
    setting = source.get("schema_changes", "dead_letter")
    if setting not in SCHEMA_CHANGES:
        problems.append(("source.schema_changes", f"unknown setting {setting!r}", ", ".join(SCHEMA_CHANGES)))
    for name, view in (views or {}).items():
        if isinstance(view, dict) and (view.get("k_anonymity") or view.get("differential_privacy")):
            problems.append((f"views.{name}", "a change-event source takes record views only: k-anonymity and "
                             "differential privacy need one record per subject, not a row's before and after",
                             "a view with fields: (read the rows from a view's topic for k-anonymity or DP)"))
    return problems


def _unwrap(document: Any) -> Any:
    # Kafka Connect's JsonConverter with schemas.enable=true: {"schema": ..., "payload": ...}
    if isinstance(document, dict) and set(document) == {"schema", "payload"}:
        return document["payload"]
    return document


def parse_key(raw_key: str | None) -> dict | None:
    """The event's key (the row's primary key columns), or None when it has none or is not JSON."""
    if not raw_key:
        return None
    try:
        key = _unwrap(orjson.loads(raw_key))
    except orjson.JSONDecodeError:
        return None
    return key if isinstance(key, dict) else None


def parse_change(raw_value: str | None, raw_key: str | None = None,
                 decode: Callable[[str], dict] | None = None) -> Change:
    """Parse one Kafka record of a Debezium topic; :class:`ChangeError` for anything else.

    ``decode`` turns a value that is not JSON into the envelope (the source's ``AvroCodec.decode``); binary
    values arrive as Latin-1 text, one character per byte.
    """
    from flink_jobs.avro_format import AvroError

    key = parse_key(raw_key)
    if raw_value is None or raw_value == "":
        return Change("tombstone", key=key)
    try:
        event = _unwrap(orjson.loads(raw_value)) if decode is None else decode(raw_value)
    except orjson.JSONDecodeError:
        raise ChangeError("invalid_json") from None
    except AvroError as exc:  # not_avro, unknown_schema_id N, schema_mismatch: a reason, never a value
        raise ChangeError(str(exc)) from None
    if event is None:
        return Change("tombstone", key=key)
    if not isinstance(event, dict):
        raise ChangeError("not_an_object")
    source = event.get("source") if isinstance(event.get("source"), dict) else {}
    if "op" not in event and ("ddl" in event or "tableChanges" in event):
        ddl = {name: event[name] for name in ("databaseName", "schemaName", "ddl", "tableChanges") if name in event}
        return Change("schema_change", ts_ms=event.get("ts_ms"), source=source, key=key, ddl=ddl)
    op = event.get("op")
    if op not in ROW_OPS:
        raise ChangeError(f"unsupported_op {op!r}" if isinstance(op, str) and len(op) <= 2 else "unsupported_op")
    before, after = event.get("before"), event.get("after")
    for part, row in (("before", before), ("after", after)):
        if row is not None and not isinstance(row, dict):
            raise ChangeError(f"not_a_row {part}")
    if op in ("c", "r", "u") and after is None:
        raise ChangeError(f"missing_row after (op {op})")
    if op == "d" and before is None:
        raise ChangeError("missing_row before (op d)")
    return Change("row", op=op, before=before, after=after, ts_ms=event.get("ts_ms"), source=source, key=key)


def safe_source(source: dict | None) -> dict:
    return {name: source[name] for name in SAFE_SOURCE if source and name in source}


class ChangeProtector:
    """Protect change events for the record views of a policy (the Protector's hook for CDC).

    Parameters
    ----------
    views : list of (name, tree, headers JSON)
        The record views, each with its compiled field tree and its record headers.
    schema_changes : {"dead_letter", "pass"}
        What happens to a schema-change event.
    decode : callable, optional
        Raw value to envelope for a ``debezium-avro`` source (its ``AvroCodec.decode``); JSON without it.
    """

    def __init__(self, views: list[tuple[str, Any, str]], schema_changes: str = "dead_letter",
                 decode: Callable[[str], dict] | None = None) -> None:
        self.views = views
        self.schema_changes = schema_changes
        self.decode = decode

    def protect(self, raw_key: str | None, raw_value: str | None,
                count_dropped: Callable[[str, list[str]], None] | None = None) -> list[tuple[str, tuple]]:
        """``[(view, (key, headers, value JSON or "" for a tombstone))]`` for every record view.

        Raises :class:`ChangeError` (not a change event, or a schema change to dead-letter) or
        :class:`~udfs.errors.TransformError` (a value its rule refuses): the caller dead-letters
        the raw record with the message as its reason. A record is protected for every view or none.
        """
        change = parse_change(raw_value, raw_key, self.decode)
        out: list[tuple[str, tuple]] = []
        drops: list[tuple[str, list[str]]] = []
        for name, tree, headers in self.views:
            dropped: list[str] = []
            key = self._view_key(tree, change.key)
            if change.kind == "tombstone":
                out.append((name, (key, headers, "")))
                continue
            if change.kind == "schema_change":
                if self.schema_changes != "pass":
                    raise ChangeError("schema_change (source.schema_changes: dead_letter)")
                value = {"schema_change": change.ddl, "ts_ms": change.ts_ms, "source": safe_source(change.source)}
                out.append((name, (key, headers, _dumps(value))))
                continue
            value = {
                "before": None if change.before is None else _protect_row(tree, change.before, "before", dropped),
                "after": None if change.after is None else _protect_row(tree, change.after, "after", dropped),
                "op": change.op,
                "ts_ms": change.ts_ms,
                "source": safe_source(change.source),
            }
            out.append((name, (key, headers, _dumps(value))))
            drops.append((name, sorted(set(dropped))))
        if count_dropped is not None:
            for name, dropped in drops:
                if dropped:
                    count_dropped(name, dropped)
        return out

    @staticmethod
    def _view_key(tree: Any, key: dict | None) -> str:
        # the row's key columns, each under the view's own rule; "" (no key) when the view names none
        if not key:
            return ""
        protected = apply_view(tree, key, [])
        return json.dumps(protected, sort_keys=True, separators=(",", ":"), ensure_ascii=False) if protected else ""


def _dumps(value: dict) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        # an Avro column JSON has no form for (bytes): orjson's message names the type, not the value
        raise ChangeError(f"unsupported_value: {exc}") from None


def _protect_row(tree: Any, row: dict, part: str, dropped: list[str]) -> dict:
    try:
        return apply_view(tree, row, dropped)
    except TransformError as exc:
        # the reason names the row part and the column, never the value
        raise TransformError(f"{part}: {exc}") from None


def subject_row_keys(records: list[tuple[str | None, str | None]], subject_field: str, protected: str) -> list[str]:
    """The keys of a change-event view's rows whose ``before`` or ``after`` holds ``protected`` as the subject.

    ``records`` are a view topic's (key, value) pairs in offset order; a row whose last record is
    already a tombstone is gone and not listed. This is how ``forget`` finds what to tombstone in a
    compacted CDC view, which is keyed by the row's key columns, not by the subject.
    """
    state: dict[str, bool] = {}  # key -> the row is the subject's and still there
    for key, value in records:
        if not key:
            continue
        if value is None:
            state[key] = False
            continue
        try:
            change = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        rows = [change.get(part) for part in ("before", "after")] if isinstance(change, dict) else []
        if any(isinstance(row, dict) and row.get(subject_field) == protected for row in rows):
            state[key] = True
    return [key for key, live in state.items() if live]
