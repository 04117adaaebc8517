"""The per-record core of the protect_stream job, in plain Python.

One raw record in; out come one protected record per view, or one dead-letter
entry. A record is protected for every view or for none, so for each record view
``records in = view records + dead-letter entries``. The Flink wrapper in
``protect_stream.py`` only routes what this returns.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, NamedTuple

import orjson

from flink_jobs.avro_format import AvroError, avro_views, codec_for, source_codec
from flink_jobs.cdc import FORMATS as CHANGE_FORMATS
from flink_jobs.policy import Policy, compile_policy, view_key_ids
from udfs.errors import TransformError
from udfs.keyring import Keyring
from udfs.record import apply_view
from udfs.timestamps import epoch_ms

log = logging.getLogger(__name__)

DLQ = "dlq"
#: ASCII whitespace only, so the CLI's line count (on bytes) and the job agree on blank lines
BLANK = " \t\r\n\x0b\x0c"


class Routed(NamedTuple):
    """What the core emits: ``channel`` is a view name or ``"dlq"``; ``value`` is channel-shaped.

    A named tuple, not a frozen dataclass: one per view and record, and a frozen dataclass
    takes several times as long to make.
    """

    channel: str
    value: tuple


class Protector:
    """Apply a policy to raw records.

    ``__init__`` keeps only the policy document (picklable, shipped to workers);
    :meth:`open` compiles it and builds the ciphers, once per task.
    """

    def __init__(self, policy_document: dict[str, Any], policy_file: str) -> None:
        self.policy_document = policy_document
        self.policy_file = policy_file
        # (view, dropped names) -> records: one count per record, expanded by name on demand
        self._drop_sets: Counter[tuple[str, tuple[str, ...]]] = Counter()
        self.counts: Counter[str] = Counter()

    def open(self, keyring: Keyring | None) -> None:
        self.policy: Policy = compile_policy(self.policy_document, file=self.policy_file, keyring=keyring)
        self.policy.open(keyring)
        policy = self.policy
        base = {"policy_id": policy.id, "policy_hash": policy.hash}
        self._view_headers = {
            name: json.dumps({**base, "key_ids": ",".join(view_key_ids(view, keyring)) if keyring else ""})
            for name, view in policy.views.items()
        }
        self._dlq_base = base
        self._record_views = [(n, v.tree) for n, v in policy.views.items() if v.is_record_view and not v.k_anonymity]
        self._kanon_views = [(n, v) for n, v in policy.views.items() if v.k_anonymity]
        # fields a k-anonymity view reads as quasi-identifiers are published generalized: not "dropped"
        self._consumed = {
            name: {path.split(".")[0].split("[")[0] for qi in v.k_anonymity.quasi_identifiers
                   for path in (*qi.paths, *qi.lat_paths, *qi.lon_paths)}
            for name, v in self._kanon_views
        }
        self._unconsumed_cache: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self._dp_views = [(n, v) for n, v in policy.views.items() if v.differential_privacy]
        # a worker imports only the operators its views use (see operators/dp/mechanisms.py for why)
        if self._kanon_views:
            from operators.k_anonymity import Stager, extract_quasi_identifiers

            self._extract_quasi_identifiers = extract_quasi_identifiers
            self._stagers = {name: Stager(view.k_anonymity) for name, view in self._kanon_views}
        if self._dp_views:
            from operators.dp.core import encode_contribution, extract_contribution

            self._extract_contribution = extract_contribution
            self._encode_contribution = encode_contribution
        self._required = policy.required_fields
        self._timestamp_field = policy.timestamp_field
        self._subject_field = policy.subject_field
        self._logged_drops: set[str] = set()
        # Avro in the Confluent wire format (flink_jobs/avro_format.py): an avro source's records and its
        # avro views, or a debezium-avro source's change events; one codec, which reads Avro keys too
        self.avro = codec_for(policy.document, policy.views)
        self._avro_views = set(avro_views(policy.document))
        self._source_codec = self.avro or source_codec(policy.document)
        # change events (debezium-json, debezium-avro): flink_jobs/cdc.py protects them for the record views
        self.cdc = None
        if (policy.document.get("source") or {}).get("format") in CHANGE_FORMATS:
            from flink_jobs.cdc import ChangeProtector

            self.cdc = ChangeProtector([(n, tree, self._view_headers[n]) for n, tree in self._record_views],
                                       policy.document["source"].get("schema_changes", "dead_letter"),
                                       self._source_codec.decode if self._source_codec else None)

    def view_headers(self, view: str) -> str:
        return self._view_headers[view]

    def process(self, position: str, key: str | None, raw: str) -> list[Routed]:
        """Protect one raw record. Never raises for bad input: it routes it to the dead-letter channel.

        A blank line is not a record (JSON Lines readers skip it) and gives nothing. On an avro or
        debezium-avro source ``key`` is the key's bytes as Latin-1 text: an Avro key is decoded to its
        JSON, a dead letter keeps the bytes.
        """
        if self.cdc is None and not raw.strip(BLANK):
            return []
        json_key = key
        if self._source_codec is not None and key:
            try:
                json_key = self._source_codec.decode_key(key)
            except AvroError as exc:  # the reason names the key's problem, never its value
                return [self._dead(position, key, raw, f"bad_key {exc}")]
        if self.cdc is not None:
            return self._process_change(position, key, json_key, raw)
        try:
            record = orjson.loads(raw) if self.avro is None else self.avro.decode(raw)
        except orjson.JSONDecodeError:
            return [self._dead(position, key, raw, "invalid_json")]
        except AvroError as exc:  # its message is the reason, never a value
            return [self._dead(position, key, raw, str(exc))]
        if not isinstance(record, dict):
            return [self._dead(position, key, raw, "not_an_object")]
        for name in self._required:
            if record.get(name) is None:
                return [self._dead(position, key, raw, f"missing_field {name}")]
        event_ms = epoch_ms(record.get(self._timestamp_field))
        if event_ms is None:
            return [self._dead(position, key, raw, f"field {self._timestamp_field}: expected an ISO-8601 timestamp")]
        out: list[Routed] = []
        # drops are counted only once the record is protected for every view
        drops: list[tuple[str, list[str]]] = []
        try:
            for name, tree in self._record_views:
                dropped: list[str] = []
                protected = apply_view(tree, record, dropped)
                value = (self.avro.encode_view(name, protected) if self.avro and name in self._avro_views
                         else orjson.dumps(protected).decode())
                out.append(Routed(name, (self._view_key(protected), self._view_headers[name], value)))
                drops.append((name, dropped))
            for name, view in self._kanon_views:
                dropped = []
                out.append(Routed(name, self._kanon_input(name, view, key, record, event_ms, dropped)))
                drops.append((name, self._unconsumed(name, dropped)))
            for name, view in self._dp_views:
                out.append(Routed(name, self._dp_input(view, record, event_ms)))
        except (TransformError, AvroError) as exc:  # AvroError: a view's record its schema refuses
            return [self._dead(position, key, raw, str(exc))]
        for name, dropped in drops:
            if dropped:
                self._count_dropped(name, dropped)
        return out

    def _process_change(self, position: str, key: str | None, json_key: str | None, raw: str) -> list[Routed]:
        # a change event: every record view, or the dead letters (an empty value is a tombstone)
        from flink_jobs.cdc import ChangeError

        try:
            return [Routed(name, value) for name, value in self.cdc.protect(json_key, raw, self._count_dropped)]
        except (ChangeError, TransformError) as exc:
            return [self._dead(position, key, raw, str(exc))]

    def _kanon_input(self, name: str, view: Any, key: str | None, record: dict, event_ms: int, dropped: list) -> tuple:
        """``(staged record, its class keys in stage 0, event ms)``: what the cascade's first stage takes.

        The wrapper encodes it as one payload for the stage (:func:`~operators.k_anonymity.core.encode_staged`),
        unless the stage has released its class and it is published at once.
        """
        quasi = self._extract_quasi_identifiers(view.k_anonymity, record)
        protected = apply_view(view.tree, record, dropped)
        # the raw subject only lives in keyed state (as sensitive as the raw topic); it is never published
        subject = str(record[self._subject_field])
        return (*self._stagers[name].staged(self._view_key(protected), self._view_headers[name],
                                            orjson.dumps(protected).decode(), subject, quasi, event_ms,
                                            int(time.time() * 1000)), event_ms)

    def _unconsumed(self, view: str, dropped: list[str]) -> list[str]:
        """The dropped fields a k-anonymity view does not publish generalized, remembered per set of names."""
        names = tuple(dropped)
        kept = self._unconsumed_cache.get((view, names))
        if kept is None:
            if len(self._unconsumed_cache) >= 4096:  # records drop a few sets of names; a flood is bounded
                self._unconsumed_cache.clear()
            consumed = self._consumed[view]
            kept = self._unconsumed_cache[view, names] = [d for d in dropped if d.split(".")[0] not in consumed]
        return kept

    def _dp_input(self, view: Any, record: dict, event_ms: int) -> tuple:
        """``(subject bucket, contribution payload, event ms)``: the record as DP stage 1 takes it."""
        group_json, values_json = self._extract_contribution(view.differential_privacy, record)
        return (*self._encode_contribution(str(record[self._subject_field]), group_json, values_json, event_ms),
                event_ms)

    def _view_key(self, protected: dict) -> str:
        # a view's key is its own protected subject, never the raw input key ("" when it has none:
        # PyFlink workaround [no None] in operators.flink_compat)
        subject = protected.get(self._subject_field)
        return "" if subject is None else str(subject)

    @property
    def dropped(self) -> Counter[str]:
        """Records per ``view:field`` that had a field the view does not name."""
        counts: Counter[str] = Counter()
        for (view, names), records in self._drop_sets.items():
            for name in names:
                counts[f"{view}:{name}"] += records
        return counts

    def _count_dropped(self, view: str, names: list[str]) -> None:
        key = (view, tuple(names))
        if key not in self._drop_sets:
            for name in names:
                if name not in self._logged_drops:
                    self._logged_drops.add(name)
                    # the name only: values never reach a log
                    log.warning("field %r is not in the policy and is dropped from the views (deny by default)", name)
        self._drop_sets[key] += 1

    def _dead(self, position: str, key: str | None, raw: str, reason: str) -> Routed:
        self.counts["dlq:" + reason.split(":")[0]] += 1
        headers = json.dumps({**self._dlq_base, "reason": reason, "position": position})
        return Routed(DLQ, (key or "", headers, raw))
