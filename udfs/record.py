"""Apply a view's field transforms to one record: the per-record core of every view.

A view is a tree compiled from dotted paths (``address.zip``, ``items[*].card``).
Only named paths reach the output (deny by default); the names of the others are
reported so the job can count them. A value that does not fit its transform
raises :class:`~udfs.errors.TransformError` with the field's path in the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from udfs.errors import MISSING, TransformError
from udfs.masking import DROP, Keep
from udfs.registry import Transform

#: a record as the job's operators pass it on: (key or None, headers JSON, value JSON)
Record = tuple[str | None, str, str]

# the one grammar of field paths: names joined by dots; a view's paths may add [*] after a name
_NAME = r"[A-Za-z_$][\w$-]*"
_SEGMENT = re.compile(rf"^(?P<name>{_NAME})(?P<array>\[\*\])?$")
_PLAIN_PATH = re.compile(rf"^{_NAME}(\.{_NAME})*$")


class PathError(ValueError):
    """A field path is not ``name(.name)*`` with optional ``[*]`` after a name."""


@dataclass
class Leaf:
    path: str
    transform: Transform


@dataclass
class Node:
    children: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArrayOf:
    item: Any


def parse_path(path: str) -> list[tuple[str, bool]]:
    """``"items[*].card"`` -> ``[("items", True), ("card", False)]``."""
    if not isinstance(path, str) or not path:
        raise PathError("a field path must be a non-empty string")
    segments = []
    for part in path.split("."):
        match = _SEGMENT.match(part)
        if match is None:
            raise PathError(f"segment {part!r} is not a field name, optionally followed by [*]")
        segments.append((match["name"], match["array"] is not None))
    return segments


def is_plain_path(path: Any) -> bool:
    """True for a dotted path of field names without ``[*]`` (``zip``, ``address.zip``)."""
    return isinstance(path, str) and _PLAIN_PATH.match(path) is not None


def lookup(record: Any, path: str | Sequence[str], absent: Any = MISSING) -> Any:
    """The value at a dotted ``path`` (or its names), or ``absent`` when the record has none there.

    A step into something that is not an object is absent too; a null value is returned as None,
    so callers tell "null" from "absent" by their choice of ``absent``.
    """
    if type(record) is dict and type(path) is str and "." not in path:
        return record.get(path, absent)  # a top-level field of a parsed record: the per-record common case
    node = record
    for part in path.split(".") if isinstance(path, str) else path:
        if not isinstance(node, Mapping) or part not in node:
            return absent
        node = node[part]
    return node


def scalar_at(record: Any, path: Sequence[str], role: str) -> Any:
    """The non-null scalar at ``path``, which names the record's ``role`` field (subject, tweak).

    Raises :class:`TransformError` when it is absent, null or an object or list; the reason
    names the field, never the value.
    """
    value = lookup(record, path, None)
    if value is None:
        raise TransformError(f"{role} field {'.'.join(path)} is missing")
    if isinstance(value, Mapping | list):
        raise TransformError(f"{role} field {'.'.join(path)} is not a scalar")
    return value


def build_tree(rules: Iterable[tuple[str, Transform]]) -> Node:
    """Compile ``(path, transform)`` pairs into a tree; raise :class:`PathError` on clashes."""
    root = Node()
    for path, transform in rules:
        segments = parse_path(path)
        node: Any = root
        for index, (name, is_array) in enumerate(segments):
            last = index == len(segments) - 1
            existing = node.children.get(name)
            if last:
                target: Any = Leaf(path, transform)
                if is_array:
                    target = ArrayOf(target)
                if existing is not None:
                    raise PathError(f"{path} overlaps another rule for the same field")
                node.children[name] = target
                continue
            if existing is None:
                existing = ArrayOf(Node()) if is_array else Node()
                node.children[name] = existing
            inner = existing.item if isinstance(existing, ArrayOf) else existing
            if isinstance(existing, Leaf) or isinstance(inner, Leaf) or isinstance(existing, ArrayOf) != is_array:
                raise PathError(f"{path} overlaps another rule for the same field")
            node = inner
    return root


def leaves(node: Any) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, ArrayOf):
        return leaves(node.item)
    return [leaf for child in node.children.values() for leaf in leaves(child)]


def apply_view(root: Node, record: Mapping[str, Any], dropped: list[str]) -> dict[str, Any]:
    """Protect ``record`` with the tree; append the paths of unnamed fields to ``dropped``."""
    return _apply_node(root, record, record, "", dropped)


class FieldError(TransformError):
    """A :class:`TransformError` that already names its field's path."""


def _compiled(node: Node) -> Any:
    # Each node becomes one generated function, made once per task after open(): the per-record
    # work is then straight-line code, with no loop over the rules and no call for kept fields.
    function = getattr(node, "_compiled", None)
    if function is None:
        function = node._compiled = _generate(node)
    return function


def _generate(node: Node) -> Any:
    scope: dict[str, Any] = {"MISSING": MISSING, "DROP": DROP, "Mapping": Mapping, "FieldError": FieldError,
                             "TransformError": TransformError, "NAMES": frozenset(node.children), "UNNAMED": {},
                             "_unnamed": _unnamed, "_kind": _kind, "_apply_array": _apply_array, "_compiled": _compiled}
    body = [
        "def apply_node(value, record, prefix, dropped):",
        # the records of a stream have a few shapes: their unnamed fields are found once per shape
        "    shape = (prefix, *value)",
        "    extra = UNNAMED.get(shape)",
        "    if extra is None:",
        "        extra = _unnamed(UNNAMED, shape, value, NAMES, prefix)",
        "    if extra:",
        "        dropped.extend(extra)",
        "    out = {}",
        "    get = value.get",
    ]
    for index, (name, child) in enumerate(node.children.items()):
        literal = repr(name)
        body.append(f"    v = get({literal}, MISSING)")
        if isinstance(child, Leaf):
            transform = child.transform
            if type(transform) is Keep:
                body += ["    if v is not MISSING:", f"        out[{literal}] = v"]
                continue
            scope[f"f{index}"] = transform.apply_in_record if transform.needs_record else transform.cached_apply()
            call = f"f{index}(v, record)" if transform.needs_record else f"f{index}(v)"
            guard = "    if True:" if transform.needs_record else "    if v is not MISSING:"
            body += [
                guard,
                "        try:",
                f"            r = {call}",
                "        except FieldError:",
                "            raise",
                "        except TransformError as exc:",
                f"            raise FieldError(f'field {{prefix}}{name}: {{exc}}') from None",
                "        if r is not DROP and r is not MISSING:",
                f"            out[{literal}] = r",
            ]
        elif isinstance(child, Node):
            scope[f"n{index}"] = child
            body += [
                "    if v is None:",
                f"        out[{literal}] = None",
                "    elif v is not MISSING:",
                "        if not isinstance(v, Mapping):",
                f"            raise FieldError(f'field {{prefix}}{name}: expected an object, got {{_kind(v)}}')",
                f"        out[{literal}] = _compiled(n{index})(v, record, prefix + {repr(name + '.')}, dropped)",
            ]
        else:
            scope[f"a{index}"] = child
            body += [
                "    if v is None:",
                f"        out[{literal}] = None",
                "    elif v is not MISSING:",
                f"        out[{literal}] = _apply_array(a{index}, v, record, prefix + {literal}, dropped)",
            ]
    body.append("    return out")
    exec(compile("\n".join(body), f"<view node {sorted(node.children)[:3]}>", "exec"), scope)  # noqa: S102
    return scope["apply_node"]


def _unnamed(known: dict[tuple, tuple[str, ...]], shape: tuple, value: Mapping[str, Any], names: frozenset,
             prefix: str) -> tuple[str, ...]:
    """The paths of the fields of ``value`` a node does not name, sorted, remembered by the record's shape."""
    if len(known) >= 1024:  # a stream of ever new shapes costs a sort each, and no more memory
        known.clear()
    extra = known[shape] = tuple(prefix + name for name in sorted(value.keys() - names))
    return extra


def _apply_node(node: Node, value: Mapping[str, Any], record: Mapping[str, Any], prefix: str, dropped: list[str]) -> dict:
    return _compiled(node)(value, record, prefix, dropped)


def _apply_array(child: ArrayOf, items: Any, record: Mapping[str, Any], path: str, dropped: list[str]) -> list:
    if not isinstance(items, list):
        raise FieldError(f"field {path}: expected a list, got {_kind(items)}")
    inner = child.item
    out = []
    for element in items:
        if isinstance(inner, Leaf):
            result = _apply_leaf(inner, element, record)
            if result is DROP:
                continue
        elif element is None:
            result = None
        elif isinstance(inner, Node):
            if not isinstance(element, Mapping):
                raise FieldError(f"field {path}[*]: expected an object, got {_kind(element)}")
            result = _apply_node(inner, element, record, f"{path}[*].", dropped)
        else:
            result = _apply_array(inner, element, record, f"{path}[*]", dropped)
        out.append(result)
    return out


def _apply_leaf(leaf: Leaf, value: Any, record: Mapping[str, Any]) -> Any:
    transform = leaf.transform
    try:
        if transform.needs_record:
            return transform.apply_in_record(value, record)
        if value is MISSING:
            return MISSING
        return transform.apply(value)
    except FieldError:
        raise
    except TransformError as exc:
        raise FieldError(f"field {leaf.path}: {exc}") from None


def invert_view(root: Node, protected: Mapping[str, Any]) -> dict[str, Any]:
    """Decrypt the reversible fields of a protected record; other fields are left as they are."""
    out = dict(protected)
    for name, child in root.children.items():
        if name not in out:
            continue
        value = out[name]
        if isinstance(child, Leaf):
            if child.transform.reversible:
                try:
                    out[name] = child.transform.invert_in_record(value, protected)
                except TransformError as exc:
                    raise TransformError(f"field {child.path}: {exc}") from None
        elif isinstance(child, Node) and isinstance(value, Mapping):
            out[name] = invert_view(child, value)
        elif isinstance(child, ArrayOf) and isinstance(value, list):
            item = child.item
            if isinstance(item, Leaf) and item.transform.reversible:
                try:
                    out[name] = [item.transform.invert_in_record(v, protected) for v in value]
                except TransformError as exc:
                    raise FieldError(f"field {item.path}: {exc}") from None
            elif isinstance(item, Node):
                out[name] = [invert_view(item, v) if isinstance(v, Mapping) else v for v in value]
    return out


def _kind(value: Any) -> str:
    return "null" if value is None else {"str": "a string", "list": "a list", "dict": "an object"}.get(
        type(value).__name__, type(value).__name__
    )


def envelope_line(key: str | None, headers: str, value: str, value_is_json: bool) -> str:
    """A protected record as one JSON Lines line: ``{"key":..,"headers":{..},"value":..}``.

    ``headers`` and (with ``value_is_json``) ``value`` are JSON text, spliced as they are;
    "" or None as a key is no key.
    """
    body = (value or "null") if value_is_json else json.dumps(value, ensure_ascii=False)  # "": a tombstone
    return f'{{"key":{_json_string(key) if key else "null"},"headers":{headers},"value":{body}}}'


def _json_string(text: str) -> str:
    # orjson is several times faster per line; it refuses a lone surrogate, which json escapes
    try:
        return orjson.dumps(text).decode()
    except orjson.JSONEncodeError:
        return json.dumps(text)
