"""Load, check and compile a protection policy (one YAML file per raw topic).

Checking happens once, before a job is built. Every problem is reported with the
file, the path inside it (``views.masked.fields.card``), what is wrong and what
is allowed. Nothing here runs per record.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flink_jobs.avro_format import AVRO_SOURCES
from flink_jobs.cdc import FORMATS as CHANGE_FORMATS
from udfs import registry
from udfs.durations import parse_duration
from udfs.errors import ParamError
from udfs.keyring import Keyring, KeyringError
from udfs.record import Node, PathError, build_tree, leaves
from udfs.registry import Transform

TOP_LEVEL_KEYS = ("version", "id", "description", "source", "subject_field", "views", "plugins", "delivery")
SOURCE_KEYS = ("topic", "format", "timestamp_field", "required_fields", "key_field", "watermark_delay",
               "schema_changes", "schema")
VIEW_KEYS = ("description", "sink", "fields", "k_anonymity", "differential_privacy", "shuffle")
SINK_KEYS = ("topic", "compacted", "format")
DELIVERY_MODES = ("exactly-once", "at-least-once")


@dataclass(frozen=True)
class Problem:
    path: str
    problem: str
    allowed: str = ""

    def render(self, file: str) -> str:
        text = f"{file}: {self.path or '<top>'}: {self.problem}"
        return text + (f" (allowed: {self.allowed})" if self.allowed else "")


class PolicyError(ValueError):
    """One or more problems in a policy. ``str()`` lists them, one per line."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))

    def summary(self) -> str:
        """What the command line prints: how many problems, then each on its own line."""
        return f"the policy has {len(self.problems)} problem(s):\n{self}"


@dataclass
class View:
    name: str
    topic: str
    fields: dict[str, Any] = field(default_factory=dict)
    tree: Node | None = None
    k_anonymity: dict[str, Any] | None = None
    differential_privacy: dict[str, Any] | None = None
    #: operators.shuffle.ShuffleParams: the view's records are shuffled window by window
    shuffle: Any = None
    compacted: bool = False
    key_ids: tuple[str, ...] = ()

    @property
    def is_record_view(self) -> bool:
        return self.tree is not None


@dataclass
class Policy:
    """A checked policy. ``document`` is the parsed YAML, kept so workers can recompile it."""

    id: str
    hash: str
    file: str
    document: dict[str, Any]
    source_topic: str
    timestamp_field: str
    subject_field: str
    required_fields: tuple[str, ...]
    key_field: str | None
    watermark_delay_ms: int
    delivery: str
    views: dict[str, View]
    plugins: tuple[str, ...] = ()

    @property
    def dlq_topic(self) -> str:
        return f"{self.source_topic}.dlq"

    def transforms(self) -> list[Transform]:
        return [leaf.transform for view in self.views.values() if view.tree for leaf in leaves(view.tree)]

    def open(self, keyring: Keyring | None) -> None:
        """Resolve keys and build ciphers in every transform (once per task)."""
        for transform in self.transforms():
            transform.open(keyring)


def load_policy(path: str | Path, keyring: Keyring | None = None, schema: str | None = None) -> Policy:
    """Read and check a policy file; with a keyring, also check that every key it names exists.

    ``schema`` overrides the policy's ``source.schema``: a registry URL (``--schema-registry``) or
    ``file:PATH.avsc`` (``--schema``).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PolicyError(str(path), [Problem("", "file not found", "a path to a YAML policy")]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise PolicyError(str(path), [Problem("", f"not valid YAML at {where}", "a YAML mapping")]) from None
    if schema and isinstance(document, dict) and isinstance(document.get("source"), dict):
        document["source"]["schema"] = schema
    return compile_policy(document, file=str(path), keyring=keyring)


def compile_policy(document: Any, *, file: str = "<policy>", keyring: Keyring | None = None) -> Policy:
    """Check a parsed policy and compile it; raise :class:`PolicyError` listing every problem."""
    problems: list[Problem] = []
    doc = document if isinstance(document, dict) else {}
    if not isinstance(document, dict):
        raise PolicyError(file, [Problem("", "the policy must be a mapping", "keys: " + ", ".join(TOP_LEVEL_KEYS))])
    _unknown_keys(doc, TOP_LEVEL_KEYS, "", problems)
    if doc.get("version") != 1:
        problems.append(Problem("version", f"unsupported version {doc.get('version')!r}", "1"))

    plugins = doc.get("plugins", []) or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        problems.append(Problem("plugins", "must be a list of module names", "e.g. [my_company.udfs]"))
        plugins = []
    for index, module in enumerate(plugins):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            problems.append(Problem(f"plugins[{index}]", f"cannot import {module!r} ({exc.name} not found)",
                                    "a module on the Python path of the job and its workers"))

    source = doc.get("source")
    if not isinstance(source, dict):
        problems.append(Problem("source", "missing or not a mapping", "{topic: ..., format: json, timestamp_field: ...}"))
        source = {}
    _unknown_keys(source, SOURCE_KEYS, "source", problems)
    topic = source.get("topic")
    if not isinstance(topic, str) or not topic:
        problems.append(Problem("source.topic", "missing", "the raw topic's name"))
    if source.get("format", "json") == "avro":
        pass  # checked with the views below, against its schema (flink_jobs/avro_format.py)
    elif source.get("format", "json") in CHANGE_FORMATS:
        from flink_jobs.cdc import check_source

        # a debezium-avro source's schema and paths are checked below too, with the avro ones
        problems.extend(Problem(*problem) for problem in check_source(source, doc.get("views")))
    elif source.get("format", "json") != "json":
        problems.append(Problem("source.format", f"unsupported format {source.get('format')!r}",
                                "json, debezium-json, avro, debezium-avro"))
    timestamp_field = source.get("timestamp_field")
    if not isinstance(timestamp_field, str) or not timestamp_field:
        problems.append(Problem("source.timestamp_field", "missing", "the field holding the event time (ISO-8601)"))
    required = source.get("required_fields", []) or []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        problems.append(Problem("source.required_fields", "must be a list of field names", "e.g. [customerId]"))
        required = []
    watermark_delay_ms = _duration_ms(source.get("watermark_delay", "5s"), "source.watermark_delay", problems)

    subject = doc.get("subject_field")
    if not isinstance(subject, str) or not subject:
        problems.append(Problem("subject_field", "missing", "the field that says whose data a record is, e.g. customerId"))

    delivery = doc.get("delivery", "exactly-once")
    if delivery not in DELIVERY_MODES:
        problems.append(Problem("delivery", f"unknown mode {delivery!r}", ", ".join(DELIVERY_MODES)))

    views: dict[str, View] = {}
    raw_views = doc.get("views")
    if not isinstance(raw_views, dict) or not raw_views:
        problems.append(Problem("views", "missing or empty",
                                "a mapping of view name to {sink, fields} or {sink, differential_privacy}"))
        raw_views = {}
    for name, raw_view in raw_views.items():
        view = _compile_view(str(name), raw_view, keyring, problems, subject if isinstance(subject, str) else None)
        if view is not None:
            views[str(name)] = view

    if source.get("format") in AVRO_SOURCES or any(isinstance(v, dict) and isinstance(v.get("sink"), dict)
                                             and "format" in v["sink"] for v in raw_views.values()):
        from flink_jobs.avro_format import check_policy

        problems.extend(Problem(*problem) for problem in check_policy(doc, views, file))
    if problems:
        raise PolicyError(file, problems)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return Policy(
        id=str(doc.get("id") or Path(file).stem),
        hash=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        file=file,
        document=doc,
        source_topic=topic,
        timestamp_field=timestamp_field,
        subject_field=subject,
        required_fields=tuple(dict.fromkeys([subject, timestamp_field, *required])),
        key_field=source.get("key_field"),
        watermark_delay_ms=watermark_delay_ms,
        delivery=delivery,
        views=views,
        plugins=tuple(plugins),
    )


def _compile_view(name: str, raw: Any, keyring: Keyring | None, problems: list[Problem],
                  subject_field: str | None = None) -> View | None:
    where = f"views.{name}"
    if not isinstance(raw, dict):
        problems.append(Problem(where, "must be a mapping", "keys: " + ", ".join(VIEW_KEYS)))
        return None
    _unknown_keys(raw, VIEW_KEYS, where, problems)
    sink = raw.get("sink")
    topic = None
    if not isinstance(sink, dict) or not isinstance(sink.get("topic"), str):
        problems.append(Problem(f"{where}.sink", "missing or without a topic", "{topic: masked-customer-events}"))
        sink = {}
    else:
        _unknown_keys(sink, SINK_KEYS, f"{where}.sink", problems)
        topic = sink["topic"]
    fields, dp = raw.get("fields"), raw.get("differential_privacy")
    if (fields is None) == (dp is None):
        problems.append(Problem(where, "needs exactly one of 'fields' and 'differential_privacy'",
                                "fields for a record view, differential_privacy for an aggregate view"))
        return None
    view = View(name=name, topic=topic or "", compacted=bool(sink.get("compacted", False)))
    if dp is not None:
        if not isinstance(dp, dict):
            problems.append(Problem(f"{where}.differential_privacy", "must be a mapping",
                                    "see differential_privacy under 'The policy' in the README"))
            return None
        from operators.dp.params import DpParams  # imported late: only aggregate views need it

        try:
            view.differential_privacy = DpParams.from_policy(dp)
        except ParamError as exc:
            problems.append(Problem(f"{where}.differential_privacy.{exc.param}".rstrip("."), exc.problem, exc.allowed))
        return view
    if not isinstance(fields, dict) or not fields:
        problems.append(Problem(f"{where}.fields", "must be a non-empty mapping of field path to transform",
                                "e.g. {email: {mask: email}, customerId: keep}"))
        return None
    rules = []
    for path, spec in fields.items():
        transform = compile_transform(spec, f"{where}.fields.{path}", str(path), problems, subject_field)
        if transform is not None:
            if keyring is not None:
                _check_key(transform, keyring, f"{where}.fields.{path}", problems)
            rules.append((str(path), transform))
    try:
        view.tree = build_tree(rules)
    except PathError as exc:
        problems.append(Problem(f"{where}.fields", str(exc), "dotted names with optional [*], e.g. items[*].card"))
        return None
    view.fields = fields
    if raw.get("k_anonymity") is not None:
        from operators.k_anonymity import KAnonymityParams  # only anonymized views need it

        try:
            view.k_anonymity = KAnonymityParams.from_policy(raw["k_anonymity"], fields)
        except ParamError as exc:
            problems.append(Problem(f"{where}.k_anonymity.{exc.param}".rstrip("."), exc.problem, exc.allowed))
    if raw.get("shuffle") is not None:
        view.shuffle = _compile_shuffle(raw["shuffle"], fields, subject_field, view, f"{where}.shuffle", problems)
    return view


def _compile_shuffle(block: Any, fields: dict[str, Any], subject_field: str | None, view: View, where: str,
                     problems: list[Problem]) -> Any:
    """A view's ``shuffle:`` block as ShuffleParams, or None with every bad parameter in ``problems``."""
    from operators.shuffle import ShuffleParams  # only shuffled views need it

    if view.k_anonymity is not None:
        problems.append(Problem(where, "a view is k-anonymized or shuffled, not both", "one of k_anonymity, shuffle"))
        return None
    params, block, before = None, dict(block) if isinstance(block, dict) else block, len(problems)
    while params is None:
        try:
            params = ShuffleParams.from_policy(block)
        except ParamError as exc:
            problems.append(Problem(f"{where}.{exc.param}".rstrip("."), exc.problem, exc.allowed))
            # an optional key at fault is left out, and the rest checked again: each bad key is named
            if not isinstance(block, dict) or exc.param in ("", "columns", "window") or exc.param not in block:
                return None
            del block[exc.param]
    published = {str(path).split(".")[0].split("[")[0] for path, spec in fields.items() if spec != "drop"}
    for index, column in enumerate(params.columns):
        if column not in published:
            problems.append(Problem(f"{where}.columns[{index}]", f"{column!r} is not a top-level field of the view",
                                    "a field listed in fields: " + ", ".join(sorted(published))))
        elif column == subject_field:
            # the record key is the view's subject and stays with its record: it would undo the shuffle
            problems.append(Problem(f"{where}.columns[{index}]", f"{column!r} is the policy's subject_field, "
                                    "which also keys each record", "the view's other fields"))
    if params.partition_by is not None and params.partition_by not in published:
        problems.append(Problem(f"{where}.partition_by", f"{params.partition_by!r} is not a top-level field of the "
                                "view", "a field listed in fields"))
    return params if len(problems) == before else None


def compile_transform(spec: Any, where: str, path: str, problems: list[Problem],
                      subject_field: str | None = None) -> Transform | None:
    """Turn ``keep`` or ``{mask: keep_last, n: 4}`` into a checked transform instance."""
    try:
        from udfs.record import parse_path

        parse_path(path)
    except PathError as exc:
        problems.append(Problem(where, str(exc), "dotted names with optional [*], e.g. address.zip, items[*].card"))
        return None
    try:
        name, params = registry.split_spec(spec)
    except ParamError as exc:
        problems.append(Problem(where, exc.problem, exc.allowed))
        return None
    try:
        cls = registry.get(name)
    except KeyError:
        problems.append(Problem(where, f"unknown transform {name!r}", _suggest(name)))
        return None
    leaf = path.split(".")[-1].replace("[*]", "")
    per_subject_only = "per_subject" in cls.params and not params.get("per_subject")
    if subject_field and "subject_field" in cls.params and not per_subject_only:
        # transforms keyed per subject (tokens, per-subject keys) default to the policy's subject
        params.setdefault("subject_field", subject_field)
    try:
        return cls(params, domain=leaf)
    except ParamError as exc:
        problems.append(Problem(f"{where}.{exc.param}" if exc.param else where, exc.problem, exc.allowed))
        return None


def _check_key(transform: Transform, keyring: Keyring, where: str, problems: list[Problem]) -> None:
    if transform.key_purpose is None:
        return
    try:
        keyring.resolve(transform.key_purpose, transform.key_id)
    except KeyringError as exc:
        problems.append(Problem(f"{where}.key_id" if transform.key_id else where, str(exc),
                                ", ".join(keyring.ids(transform.key_purpose)) or f"add a '{transform.key_purpose}' key"))


def view_key_ids(view: View, keyring: Keyring) -> tuple[str, ...]:
    """The key ids a view's transforms use (written into every output record's headers)."""
    ids = []
    for leaf in leaves(view.tree) if view.tree else []:
        if leaf.transform.key_purpose:
            ids.append(keyring.resolve(leaf.transform.key_purpose, leaf.transform.key_id).id)
    return tuple(sorted(set(ids)))


def _suggest(name: str) -> str:
    known = registry.names()
    close = difflib.get_close_matches(name, known, n=3)
    return ("did you mean " + " or ".join(close) + "? " if close else "") + "known: " + ", ".join(known)


def _unknown_keys(mapping: Mapping[str, Any], allowed: tuple[str, ...], where: str, problems: list[Problem]) -> None:
    for key in mapping:
        if key not in allowed:
            problems.append(Problem(f"{where}.{key}" if where else str(key), "unknown key", ", ".join(allowed)))


def _duration_ms(raw: Any, where: str, problems: list[Problem]) -> int:
    try:
        return parse_duration(raw, where)
    except ParamError as exc:
        problems.append(Problem(where, exc.problem, "a duration such as 500ms, 30s, 5m, 1h"))
        return 0

