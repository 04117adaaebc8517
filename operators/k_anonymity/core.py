"""The cascade in plain Python: class keys, the release rules of a stage, and :class:`LocalCascade`.

Per record: extraction of the quasi-identifiers and their class keys; per partition: the release
rules of a stage; and :class:`LocalCascade`, the whole cascade with an explicit clock.

The Flink stages in :mod:`operators.k_anonymity.flink` run these same rules over keyed state and
timers; tests and benchmarks run them without a JVM.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from operators.k_anonymity.params import (
    MICRO,
    STAR,
    KAnonymityParams,
    Level,
    QuasiIdentifier,
    qi_ncp,
)
from udfs.errors import TransformError
from udfs.generalize import cut_datetime, numeric_range, truncate
from udfs.record import lookup
from udfs.timestamps import epoch_seconds

#: past this many cached partitions, or cached published fields and class NCPs, the idle ones are dropped
CACHE_LIMIT = 100_000


# -- per record: extract and generalize -------------------------------------------------


_ABSENT = object()


def _first(record: Mapping[str, Any], paths: Sequence[str]) -> Any:
    for path in paths:
        value = lookup(record, path, None)
        if value is not None:
            return value
    return _ABSENT


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is float:  # the common case, without the isinstance checks
        return math.isfinite(value)
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def extract_quasi_identifiers(params: KAnonymityParams, record: Mapping[str, Any]) -> dict[str, Any]:
    """Raw QI values of one input record, ``{qi_name: value}``, checked against their hierarchies.

    A ``geo`` QI gives ``{"lat": .., "lon": ..}``. Raises
    :class:`~udfs.errors.TransformError` (``"field age: missing"``) when a value is
    missing or of the wrong type, so the record goes to the dead-letter output; the
    reason never holds the value.
    """
    out: dict[str, Any] = {}
    for qi in params.quasi_identifiers:
        if qi.lat_paths:
            lat, lon = _first(record, qi.lat_paths), _first(record, qi.lon_paths)
            if lat is _ABSENT or lon is _ABSENT:
                raise TransformError(f"field {qi.name}: missing")
            value: Any = {"lat": lat, "lon": lon}
        else:
            value = _first(record, qi.paths)
            if value is _ABSENT:
                raise TransformError(f"field {qi.name}: missing")
        out[qi.name] = _checked(qi, value)
    return out


def _checked(qi: QuasiIdentifier, value: Any) -> Any:
    name = qi.name
    if qi.kind == "number":
        if not _is_number(value):
            raise TransformError(f"field {name}: expected a number, got {type(value).__name__}")
    elif qi.kind == "string":
        if not isinstance(value, str):
            # a zip code as a number has already lost its leading zeros
            raise TransformError(f"field {name}: expected a string, got {type(value).__name__}")
    elif qi.kind == "geo":
        if (not (type(value) is dict or isinstance(value, Mapping)) or not _is_number(value.get("lat"))
                or not _is_number(value.get("lon"))):
            raise TransformError(f"field {name}: expected a coordinate {{lat, lon}}")
        if not (-90 <= value["lat"] <= 90 and -180 <= value["lon"] <= 180):
            raise TransformError(f"field {name}: coordinate out of range")
        value = {"lat": value["lat"], "lon": value["lon"]}
    elif qi.kind == "date":
        try:
            epoch_seconds(value)
        except (TypeError, ValueError):
            raise TransformError(f"field {name}: expected an ISO-8601 date or timestamp") from None
    elif qi.kind == "category":
        if not isinstance(value, str) or value not in qi.groups:
            raise TransformError(f"field {name}: not a value of its hierarchy")
    return value


def generalize(qi: QuasiIdentifier, level: Level, value: Any) -> Any:
    """The published form of one raw QI value at one hierarchy level (``34`` at ``range 10`` -> ``"30-39"``)."""
    kind = level.kind
    if kind == "star":
        return STAR
    if kind == "exact":
        return value
    if kind == "range":
        return numeric_range(value, level.arg)
    if kind == "truncate":
        return truncate(value, level.arg)
    if kind == "geohash":
        return fast_geohash(value["lat"], value["lon"], level.arg)
    if kind == "grid":
        size = round(level.arg * MICRO)
        return grid_cell(_micro(value["lat"]) // size, _micro(value["lon"]) // size, size)
    if kind == "date":
        return cut_datetime(value, level.arg)
    return qi.groups[value][level.arg - 1]


_GEOHASH_ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"
#: every two-character geohash step, by its 10 bits
_GEOHASH_PAIRS = [first + second for first in _GEOHASH_ALPHABET for second in _GEOHASH_ALPHABET]
# _SPREAD[n] has the bits of the 16-bit n at the even positions of a 32-bit word
_SPREAD = [0] * 65536
for _n in range(1, 65536):
    _SPREAD[_n] = _SPREAD[_n >> 1] << 2 | (_n & 1)


def fast_geohash(lat: float, lon: float, precision: int) -> str:
    """:func:`udfs.generalize.geohash` by quantizing and interleaving, not bisecting: 5-10x faster.

    The cascade computes a geohash per record per level, so this is on the hot path. It
    agrees with the bisecting version except, possibly, within a float rounding of a cell edge.
    """
    bits = 5 * precision
    lon_bits, lat_bits = (bits + 1) // 2, bits // 2
    lon_i = int((lon + 180.0) / 360.0 * (1 << lon_bits))
    if lon_i >> lon_bits:  # longitude 180 itself: the last cell
        lon_i = (1 << lon_bits) - 1
    lat_i = int((lat + 90.0) / 180.0 * (1 << lat_bits))
    if lat_i >> lat_bits:
        lat_i = (1 << lat_bits) - 1
    lon_s = _SPREAD[lon_i & 0xFFFF] | _SPREAD[lon_i >> 16] << 32
    lat_s = _SPREAD[lat_i & 0xFFFF] | _SPREAD[lat_i >> 16] << 32
    # longitude takes the first bit: the even positions when the bit count is odd
    word = lon_s | lat_s << 1 if bits % 2 else lon_s << 1 | lat_s
    # two characters per step, from the top: the common precisions (2 to 6) take one to three steps
    text = ""
    shift = bits - 10
    while shift >= 0:
        text += _GEOHASH_PAIRS[(word >> shift) & 1023]
        shift -= 10
    return text + _GEOHASH_ALPHABET[word & 31] if shift == -5 else text




def _micro(degrees: float) -> int:
    """A coordinate in whole millionths of a degree, rounded down: the one quantization every grid level shares."""
    return math.floor(degrees * MICRO)


def _degrees(micro: int) -> str:
    text = f"{abs(micro) // MICRO}.{abs(micro) % MICRO:06d}".rstrip("0").rstrip(".")
    return "-" + text if micro < 0 else text


def grid_cell(row: int, column: int, size: int) -> str:
    """The published form of grid cell (``row``, ``column``) of ``size`` millionths of a degree.

    ``"[37.75, 37.8) x [-122.45, -122.4)"``: latitude, then longitude, each half-open.
    """
    lat, lon = row * size, column * size
    return f"[{_degrees(lat)}, {_degrees(lat + size)}) x [{_degrees(lon)}, {_degrees(lon + size)})"


def class_key(params: KAnonymityParams, level: int, qis: Mapping[str, Any]) -> str:
    """The equivalence class of a record at a cascade level: a JSON array of its generalized QIs."""
    steps = params.steps(level)
    return orjson.dumps([generalize(qi, step, qis[qi.name])
                         for qi, step in zip(params.quasi_identifiers, steps, strict=True)]).decode()


def ncp(params: KAnonymityParams, level: int | None, qis: Mapping[str, Any],
        spans: Mapping[str, tuple[float, float]] | None = None) -> float:
    """Normalized certainty penalty of one record published at ``level`` (None: suppressed, 1.0).

    The mean over QIs of the share of its domain the published value covers [2]_. A
    ``number``/``date`` QI is normalized by its policy ``domain`` or else by ``spans[name]``
    (``spans[name + ".lat"]``/``".lon"`` for ``geo``; the globe without one); a truncated
    string by the strings its mask stands for; a category by the leaves under its group.
    """
    if level is None:
        return 1.0
    spans = spans or {}
    total = 0.0
    for qi, step in zip(params.quasi_identifiers, params.steps(level), strict=True):
        total += qi_ncp(qi, step, qis[qi.name], spans)
    return total / len(params.quasi_identifiers)


class SpanTracker:
    """Running min/max of the numeric QIs one operator instance has seen: NCP's default normalizer."""

    def __init__(self, params: KAnonymityParams) -> None:
        self._dims: list[tuple[str, str, Callable[[Any], float]]] = []
        for qi in params.quasi_identifiers:
            if qi.domain is not None:
                continue
            if qi.kind == "number":
                self._dims.append((qi.name, qi.name, float))
            elif qi.kind == "date":
                self._dims.append((qi.name, qi.name, epoch_seconds))
            elif qi.kind == "geo":
                self._dims.append((qi.name, qi.name + ".lat", lambda v: float(v["lat"])))
                self._dims.append((qi.name, qi.name + ".lon", lambda v: float(v["lon"])))
        self.spans: dict[str, tuple[float, float]] = {}

    def see(self, qis: Mapping[str, Any]) -> bool:
        """Widen the spans to hold ``qis``; True when any span changed."""
        changed = False
        for name, dim, read in self._dims:
            value = read(qis[name])
            low, high = self.spans.get(dim, (value, value))
            if value < low or value > high:
                self.spans[dim] = (min(low, value), max(high, value))
                changed = True
            elif dim not in self.spans:
                self.spans[dim] = (value, value)
                changed = True
        return changed


# -- per partition: the release rules, shared by the plain cascade and the Flink operator ----

# A staged record, between stages and in the buffers:
# (kafka key | None, headers JSON, protected value JSON, subject, raw QIs JSON, event time ms, entered ms)
KEY, HEADERS, VALUE, SUBJECT, QIS, EVENT_TIME, ENTERED = range(7)
Staged = tuple
#: one published record: (staged record, cascade level, class key at that level)
Release = tuple
#: between Flink operators and in keyed state a staged record is one string: its fields and its class
#: keys in the stage it is in, joined by these separators (JSON text never holds a raw control character;
#: the key and the subject travel JSON-encoded for that reason)
_FIELD, _KEYS = "\x1f", "\x1e"


def encode_staged(record: Staged, keys: Sequence[str]) -> str:
    """One string for a staged record and its class keys: a single STRING crosses Java and Python.

    A tuple of seven fields costs several times one string at every crossing, and in keyed state.
    """
    key, headers, value, subject, qis, event_ms, entered = record
    return _FIELD.join((orjson.dumps(key).decode(), headers or "", value, orjson.dumps(subject).decode(), qis,
                        str(event_ms), str(entered), _KEYS.join(keys)))


def decode_staged(payload: str) -> tuple[Staged, tuple[str, ...]]:
    """The inverse of :func:`encode_staged`: ``(staged record, class keys finest first)``."""
    key, headers, value, subject, qis, event_ms, entered, keys = payload.split(_FIELD)
    return ((orjson.loads(key), headers, value, orjson.loads(subject), qis, int(event_ms), int(entered)),
            tuple(keys.split(_KEYS)))


class Stager:
    """Turns a protected record into what the cascade's first stage takes: its partition key and payload.

    The job's protect operator calls it, so a record crosses into the cascade once, as a keyed
    ``(partition key, payload)`` pair, with its class keys at every level of the first stage
    already computed.

    ``entered`` anchors every deadline: the wall clock, or the event time with ``timing: event``.
    """

    def __init__(self, params: KAnonymityParams) -> None:
        self.stage = Stage(params, *params.stages[0])
        self.event = params.timing == "event"

    def staged(self, key: str | None, headers: str, value: str, subject: str, qis: Mapping[str, Any],
               event_ms: int, now_ms: int) -> tuple[Staged, tuple[str, ...]]:
        """The staged record and its class keys at the stage's finest and last level (the partition key).

        Not yet one string: a record whose finest class is released is published from these as they
        are (:func:`operators.k_anonymity.flink.released_shortcut`), and only the others are encoded.
        """
        record = (key, headers, value, subject, orjson.dumps(qis).decode(), event_ms, event_ms if self.event else now_ms)
        return record, self.stage.end_keys(qis)


def class_keys(params: KAnonymityParams, first: int, last: int, qis: Mapping[str, Any]) -> tuple[str, ...]:
    """:func:`class_key` at every level from ``first`` to ``last``."""
    return _KeyPlan(params, range(first, last + 1)).keys(qis)


def _finest_fixes_coarser(params: KAnonymityParams, first: int, last: int) -> bool:
    """Whether a record's class at level ``first`` fixes its class at every level up to ``last``.

    Ranges, grids, truncations, geohashes and dates nest by construction (the policy check
    refuses a level that does not hold whole finer buckets). A category table need not: a value's
    group in one column may not follow from its group in an earlier one.
    """
    for q, qi in enumerate(params.quasi_identifiers):
        columns = sorted({params.path[level][q] for level in range(first, last + 1)})
        groups = [qi.levels[i].arg for i in columns if qi.levels[i].kind == "group"]
        for finer, coarser in zip(groups, groups[1:], strict=False):
            seen: dict[str, str] = {}
            for row in qi.groups.values():
                if seen.setdefault(row[finer - 1], row[coarser - 1]) != row[coarser - 1]:
                    return False
    return True


class _KeyPlan:
    """Builds a record's class keys at a run of levels, generalizing each value once per hierarchy step.

    A record is keyed at every level of its stage, so this is the hot path: each QI's
    steps are generalized once and spliced as JSON text, and a geohash QI is hashed once,
    at its finest step, the coarser ones being its prefixes. The steps of a plain value
    (a number, a string) are remembered, up to ``CACHE_LIMIT`` values per QI: a subject's
    age and zip come back with each of its records; so are a coordinate's, by its finest
    geohash cell, when every step is a geohash.
    """

    def __init__(self, params: KAnonymityParams, levels: Sequence[int]) -> None:
        self.qis = params.quasi_identifiers
        self.rows = [params.path[level] for level in levels]
        self.used = [sorted({row[q] for row in self.rows}) for q in range(len(self.qis))]
        self.geo_top = [max((qi.levels[i].arg for i in used if qi.levels[i].kind == "geohash"), default=0)
                        for qi, used in zip(self.qis, self.used, strict=True)]
        # grid levels: cell sizes in millionths of a degree; each is a whole multiple of the finest used
        self.grid = [{i: round(qi.levels[i].arg * MICRO) for i in used if qi.levels[i].kind == "grid"}
                     for qi, used in zip(self.qis, self.used, strict=True)]
        self.memo: list[dict[Any, dict[int, str]] | None] = [
            None if qi.kind == "geo" else {} for qi in self.qis]  # raw value -> its row of JSON steps
        # a coordinate whose steps are all geohash prefixes (or "*"): its row follows from its finest cell,
        # which many coordinates share, so the row is remembered by cell
        self.cells: list[dict[str, dict[int, str]] | None] = [
            {} if top and all(qi.levels[i].kind in ("geohash", "star") for i in used) else None
            for qi, used, top in zip(self.qis, self.used, self.geo_top, strict=True)]
        self.specs = list(zip(self.qis, self.used, self.geo_top, self.grid, self.memo, self.cells, strict=True))

    def keys(self, qis: Mapping[str, Any]) -> tuple[str, ...]:
        pieces = self.pieces(qis)
        if len(pieces) == 3:
            a, b, c = pieces
            return tuple(f"[{a[x]},{b[y]},{c[z]}]" for x, y, z in self.rows)
        return tuple("[" + ",".join(piece[i] for piece, i in zip(pieces, row, strict=True)) + "]" for row in self.rows)

    def key(self, pieces: list[dict[int, str]], index: int) -> str:
        """The class key at the plan's ``index``-th level, from :meth:`pieces`."""
        row = self.rows[index]
        if len(pieces) == 3:
            return f"[{pieces[0][row[0]]},{pieces[1][row[1]]},{pieces[2][row[2]]}]"
        return "[" + ",".join(piece[i] for piece, i in zip(pieces, row, strict=True)) + "]"

    def pieces(self, qis: Mapping[str, Any]) -> list[dict[int, str]]:
        """Each QI's published JSON text at each hierarchy step the plan uses: ``[{step: text}]``, one per QI."""
        pieces: list[dict[int, str]] = []
        for qi, used, top, grid, memo, cells in self.specs:
            value = qis[qi.name]
            if memo is not None:
                # bool is an int to a dict: 1 and True would share a row, so the type is in the key
                known = memo.get((type(value), value))
                if known is not None:
                    pieces.append(known)
                    continue
            full = fast_geohash(value["lat"], value["lon"], top) if top else ""
            if cells is not None:
                known = cells.get(full)
                if known is not None:
                    pieces.append(known)
                    continue
            if grid:
                lat, lon = _micro(value["lat"]), _micro(value["lon"])
            row = {}
            for i in used:
                level = qi.levels[i]
                if level.kind == "geohash":
                    row[i] = '"' + full[:level.arg] + '"'
                elif level.kind == "grid":
                    size = grid[i]
                    row[i] = '"' + grid_cell(lat // size, lon // size, size) + '"'
                elif level.kind == "star":
                    row[i] = '"*"'
                else:
                    row[i] = orjson.dumps(generalize(qi, level, value)).decode()
            pieces.append(row)
            if memo is not None:
                if len(memo) >= CACHE_LIMIT:
                    memo.clear()
                memo[type(value), value] = row
            elif cells is not None:
                if len(cells) >= CACHE_LIMIT:
                    cells.clear()
                cells[full] = row
        return pieces


def _count(counts: dict[str, int], item: str, step: int) -> bool:
    """Add ``step`` to ``item``'s count, dropping it at zero; True when that makes the item appear or disappear."""
    before = counts.get(item, 0)
    left = before + step
    if left > 0:
        counts[item] = left
    else:
        counts.pop(item, None)
    return not before or left <= 0


def _join(classes: dict, key: str, rid: int, subject: str, value: str | None) -> None:
    """Count a record in its class at one level."""
    entry = classes.get(key)
    if entry is None:
        classes[key] = ({rid: None}, {subject: 1}, {} if value is None else {value: 1})
        return
    entry[0][rid] = None
    _count(entry[1], subject, 1)
    if value is not None:
        _count(entry[2], value, 1)


def _leave(classes: dict, key: str, rid: int, subject: str, value: str | None) -> None:
    """Uncount a record from its class at one level; a class left empty is dropped."""
    members, subjects, values = classes[key]
    del members[rid]
    if not members:
        del classes[key]
        return
    _count(subjects, subject, -1)
    if value is not None:
        _count(values, value, -1)


#: a coarser class of up to this many buffered records is sorted whole for its oldest; a larger one is merged lazily
SORT_UP_TO = 512

#: a coarser class of a nested stage not yet complete after this many of its finest classes keeps its subjects and
#: values tallied from then on, so that asking again no longer walks them all (a few subjects with many records)
TALLY_FROM = 32


class Partition:
    """The buffered records of one partition of a stage, indexed by their class at every level of the stage.

    Only ``records`` and ``released`` are facts; everything else is an index that
    :meth:`Stage.rebuild` recomputes from them, which is how the Flink operator comes
    back from keyed state. ``added``, ``removed``, ``marked`` and ``armed`` journal the
    changes since the caller last cleared them, so that it can write them through.

    When the stage's hierarchies nest, records are counted in their finest class only
    (``classes[0]``), and the classes that hold them form a tree: each class points to
    its class one level up (``up``), which lists the classes under it one level down
    (``kids``). A new finest class joins the tree up to the first class already in it,
    and an emptied one leaves it up to the first class that keeps other classes, so a
    record pays for the levels whose classes it creates or empties, not for every
    level. A coarser class whose finest classes were found to share few subjects keeps
    its subjects tallied (``tallies``). Otherwise ``classes`` counts records at every
    level, and the tree stays empty.
    """

    __slots__ = ("records", "keys", "classes", "up", "kids", "tallies", "tallied", "released", "due", "ticks",
                 "next_rid", "next_sweep", "added", "removed", "marked", "unmarked", "armed", "flush_armed")

    def __init__(self, depth: int) -> None:
        self.records: dict[int, Staged] = {}  # record id -> staged record
        # record id -> its class keys: at each level of the stage, or (nested) the finest first, the rest read from the tree
        self.keys: dict[int, tuple[str, ...]] = {}
        # per level: class -> (its record ids, oldest first; {subject: records}; {sensitive value: records})
        self.classes: list[dict[str, tuple[dict[int, None], dict[str, int], dict[str, int]]]] = [
            {} for _ in range(depth)]
        # nested: per level, a class that holds buffered records -> its class one level up (the last level unused)
        self.up: list[dict[str, str]] = [{} for _ in range(depth)]
        # nested: per level, a class -> its classes one level down that hold buffered records (level 0 unused)
        self.kids: list[dict[str, dict[str, None]]] = [{} for _ in range(depth)]
        # nested: per level, a class whose first TALLY_FROM finest classes held fewer than k subjects (or l values)
        # -> ({subject: its finest classes holding the subject}, the same for values), kept up to date while it lasts
        self.tallies: list[dict[str, tuple[dict[str, int], dict[str, int]]]] = [{} for _ in range(depth)]
        self.tallied = 0  # how many classes are tallied: none, and a record's subject changes no tally
        self.released: list[dict[str, int]] = [{} for _ in range(depth)]  # class -> released at (ms)
        self.due: list[tuple[int, int]] = []  # heap of (timer, record id); ids already gone are skipped
        self.ticks: set[int] = set()  # timers armed for this partition
        self.next_rid = 0
        self.next_sweep = 0  # when expired released classes are next dropped (ms)
        self.added: list[int] = []
        self.removed: list[int] = []
        self.marked: list[tuple[int, str, int]] = []  # (level in the stage, class, released at)
        self.unmarked: list[tuple[int, str]] = []  # released classes whose TTL ran out
        self.armed: list[int] = []
        self.flush_armed = False

    def empty(self) -> bool:
        return not self.records

    def writes(self) -> tuple[list[tuple[int, Staged]], list[int], list[tuple[str, int]], list[str]]:
        """The journal as state writes: records to put and ids to remove; released classes to put and to remove.

        A record both added and removed since the last clear (released on arrival) is in
        neither; a class dropped and released again is only put.
        """
        if not self.removed and not self.marked and not self.unmarked:  # a record buffered, and nothing else
            return [(rid, self.records[rid]) for rid in self.added], [], [], []
        added, removed = set(self.added), set(self.removed)
        puts = [(rid, self.records[rid]) for rid in self.added if rid not in removed]
        removes = [rid for rid in self.removed if rid not in added]
        marks = [(f"{index}|{key}", at) for index, key, at in self.marked]
        again = {name for name, _ in marks}
        unmarks = [name for name in (f"{index}|{key}" for index, key in self.unmarked) if name not in again]
        return puts, removes, marks, unmarks

    def clear_journal(self) -> None:
        self.added, self.removed, self.marked, self.unmarked, self.armed = [], [], [], [], []


class Stage:
    """The release rules of one keyed stage of the cascade: levels ``first`` to ``last`` of the path.

    A record entering the stage is in its class at every level of the stage at once,
    so every level sees all the records buffered in the stage, not a slice. (Where the
    hierarchies nest it is counted in its finest class only, and a coarser class is the
    union of the finest classes under it: see :class:`Partition`.)

    - **Arrival.** The record passes straight through if its class at the stage's first
      (finest) level is released. Otherwise it is buffered; when that class reaches ``k``
      distinct subjects (and ``l`` values), the class is released with all its records.
    - **Deadline** (``max_delay * (last + 1) / levels`` after entry). The record is
      published at the finest level of the stage where its class is already released
      (it joins a k-anonymous class), or where its class holds ``k`` subjects (and ``l``
      values) among the buffered records: then it is released with the fewest of them,
      oldest first, that make the class k-anonymous, and the class stays released for
      the others. Failing both, it leaves the stage: it is promoted, or suppressed past
      the last stage.

    So a published class has ``k`` distinct subjects when it first appears, and only
    grows while released.

    Parameters
    ----------
    params : KAnonymityParams
        The checked block.
    first, last : int
        The cascade levels the stage covers.
    """

    def __init__(self, params: KAnonymityParams, first: int, last: int) -> None:
        self.params, self.first, self.last = params, first, last
        self.depth = last - first + 1
        self.final = last == params.levels - 1
        self._budget = params.max_delay_ms * (last + 1) // params.levels
        self._resolution = params.timer_resolution_ms
        self._ttl = params.state_ttl_ms
        self._k = params.k
        self._l = params.l_diversity.l if params.l_diversity else 0
        self._attribute = params.l_diversity.attribute.split(".") if params.l_diversity else []
        self._plan = _KeyPlan(params, range(first, last + 1))
        # a record's class at the stage's finest and last level: all that a record of a released class needs
        self._ends = _KeyPlan(params, (first, last)) if last > first else self._plan
        # nested: a record is counted in its finest class only, the coarser ones being unions of finest ones
        self._nested = _finest_fixes_coarser(params, first, last)

    def partition_key(self, qis: Mapping[str, Any]) -> str:
        """The key of the stage's keyed state: the record's class at the stage's last level."""
        return class_key(self.params, self.last, qis)

    def keys(self, qis: Mapping[str, Any]) -> tuple[str, ...]:
        """A record's class at each level of the stage, finest first; the last is its partition key."""
        return self._plan.keys(qis)

    def all_keys(self, record: Staged, keys: tuple[str, ...]) -> tuple[str, ...]:
        """A record's class at every level of the stage, from its :meth:`end_keys` (or all of them already)."""
        return keys if len(keys) == self.depth else self._plan.keys(orjson.loads(record[QIS]))

    def end_keys(self, qis: Mapping[str, Any]) -> tuple[str, ...]:
        """A record's class at the stage's finest level and its partition key: enough to pass a released class.

        The classes in between are counted only for a record that is buffered, so :meth:`on_record`
        computes them then.
        """
        return self._ends.keys(qis)

    def timer(self, record: Staged) -> int:
        """The coalesced timer of a record's deadline in this stage (``params.timer(params.deadline(...))``)."""
        return -(-(record[ENTERED] + self._budget) // self._resolution) * self._resolution

    def sensitive(self, record: Staged) -> str:
        """The l-diversity value of a record, as text; a missing one counts as one value, ``null``."""
        return orjson.dumps(lookup(orjson.loads(record[VALUE]), self._attribute, None)).decode()

    def finest_released(self, part: Partition, key: str, now: int) -> bool:
        """Whether ``key`` is a released class at the stage's finest level: :meth:`on_record` passes its records.

        Read-only: a class whose TTL has run out reads as not released, and is dropped by
        :meth:`on_record` when its next record comes.
        """
        at = part.released[0].get(key)
        return at is not None and at + self._ttl > now

    def _is_released(self, part: Partition, index: int, key: str, now: int) -> bool:
        at = part.released[index].get(key)
        if at is None:
            return False
        if at + self._ttl > now:
            return True
        del part.released[index][key]  # its TTL has run out: the class must fill again
        part.unmarked.append((index, key))
        return False

    def _sweep(self, part: Partition, now: int) -> None:
        """Drop the released classes whose TTL has run out, which no record may come to ask about."""
        for index, released in enumerate(part.released):
            for key in [key for key, at in released.items() if at + self._ttl <= now]:
                del released[key]
                part.unmarked.append((index, key))
        part.next_sweep = now + max(1, self._ttl // 4)

    def _complete(self, part: Partition, index: int, key: str) -> bool:
        if index and self._nested:
            return key in part.kids[index] and self._complete_under(part, index, key)
        entry = part.classes[index].get(key)
        return entry is not None and len(entry[1]) >= self._k and len(entry[2]) >= self._l

    @staticmethod
    def _leaves(part: Partition, index: int, key: str) -> Iterator[str]:
        """The finest classes under class ``key`` at level ``index`` of a nested stage, depth first, one at a time.

        For a caller that may stop early; one stack of iterators, not a generator per level.
        """
        kids = part.kids
        stack = [iter(kids[index][key])]
        while stack:
            level = index - len(stack)  # the level of the classes the top iterator gives
            for child in stack[-1]:
                if not level:
                    yield child
                else:
                    stack.append(iter(kids[level][child]))
                    break
            else:
                stack.pop()

    @staticmethod
    def _all_leaves(part: Partition, index: int, key: str) -> list[str]:
        """:meth:`_leaves`, all of them, in the same order: one level of the tree at a time."""
        classes = [key]
        for level in range(index, 0, -1):
            kids = part.kids[level]
            classes = [kid for parent in classes for kid in kids[parent]]
        return classes

    def _complete_under(self, part: Partition, index: int, key: str) -> bool:
        """Whether coarser class ``key`` holds k subjects (and l values) among the finest classes under it.

        Their union, stopping as soon as it is complete: with many subjects that is after a few
        finest classes, however many the class holds. A class not complete after ``TALLY_FROM``
        of them (a few subjects with many records) is tallied instead, once, and asked by its tally.
        """
        tally = part.tallies[index].get(key)
        if tally is None:
            subjects_seen: set[str] = set()
            values_seen: set[str] = set()
            finest = part.classes[0]
            for scanned, leaf in enumerate(self._leaves(part, index, key)):
                if scanned == TALLY_FROM:
                    tally = self._tally(part, index, key)
                    break
                _, subjects, values = finest[leaf]
                subjects_seen.update(subjects)
                values_seen.update(values)
                if len(subjects_seen) >= self._k and len(values_seen) >= self._l:
                    return True
            else:
                return False
        return len(tally[0]) >= self._k and len(tally[1]) >= self._l

    def _tally(self, part: Partition, index: int, key: str) -> tuple[dict[str, int], dict[str, int]]:
        """Start tallying class ``key``: for each subject and value, how many of its finest classes hold it."""
        tally: tuple[dict[str, int], dict[str, int]] = ({}, {})
        finest = part.classes[0]
        for leaf in self._all_leaves(part, index, key):
            _, subjects, values = finest[leaf]
            for subject in subjects:
                _count(tally[0], subject, 1)
            for value in values:
                _count(tally[1], value, 1)
        part.tallies[index][key] = tally
        part.tallied += 1
        return tally

    def _retally(self, part: Partition, finest: str, subject: str | None, value: str | None, step: int) -> None:
        """Count a subject (and a value) that a finest class gained or lost in the tallies of its coarser classes."""
        if not part.tallied:
            return
        key = finest
        for up, tallies in zip(part.up, part.tallies[1:], strict=False):
            key = up[key]
            tally = tallies.get(key) if tallies else None
            if tally is not None:
                if subject is not None:
                    _count(tally[0], subject, step)
                if value is not None:
                    _count(tally[1], value, step)

    def _add(self, part: Partition, record: Staged, keys: tuple[str, ...], rid: int | None = None) -> int:
        if rid is None:
            rid = part.next_rid
            part.added.append(rid)
        part.next_rid = max(part.next_rid, rid + 1)
        part.records[rid] = record
        part.keys[rid] = keys
        subject = record[SUBJECT]
        value = self.sensitive(record) if self._l else None
        if not self._nested:
            for classes, key in zip(part.classes, keys, strict=True):
                _join(classes, key, rid, subject, value)
        else:
            self._join_finest(part, record, keys[0], rid, subject, value)
        timer = self.timer(record)
        heapq.heappush(part.due, (timer, rid))
        if timer not in part.ticks:
            part.ticks.add(timer)
            part.armed.append(timer)
        return rid

    def _join_finest(self, part: Partition, record: Staged, finest: str, rid: int, subject: str,
                     value: str | None) -> None:
        """Count a record in its finest class; a new finest class joins the tree up to a class already in it."""
        entry = part.classes[0].get(finest)
        if entry is not None:
            entry[0][rid] = None
            new_subject = _count(entry[1], subject, 1)
            new_value = value is not None and _count(entry[2], value, 1)
            if new_subject or new_value:
                self._retally(part, finest, subject if new_subject else None, value if new_value else None, 1)
            return
        part.classes[0][finest] = ({rid: None}, {subject: 1}, {} if value is None else {value: 1})
        # the coarser keys are computed one level at a time, and only up to the first class already there
        pieces = self._plan.pieces(orjson.loads(record[QIS])) if self.depth > 1 else []
        child = finest
        for index in range(1, self.depth):
            key = self._plan.key(pieces, index)
            part.up[index - 1][child] = key
            under = part.kids[index].get(key)
            if under is not None:
                under[child] = None
                break
            part.kids[index][key] = {child: None}
            child = key
        self._retally(part, finest, subject, value, 1)

    def _remove(self, part: Partition, rid: int) -> Staged:
        record = part.records.pop(rid)
        keys = part.keys.pop(rid)
        subject = record[SUBJECT]
        value = self.sensitive(record) if self._l else None
        if not self._nested:
            for classes, key in zip(part.classes, keys, strict=True):
                _leave(classes, key, rid, subject, value)
        else:
            self._leave_finest(part, keys[0], rid, subject, value)
        part.removed.append(rid)
        return record

    def _leave_finest(self, part: Partition, finest: str, rid: int, subject: str, value: str | None) -> None:
        """Uncount a record from its finest class; an emptied finest class leaves the tree up to a class that stays."""
        members, subjects, values = part.classes[0][finest]
        del members[rid]
        if members:
            gone_subject = _count(subjects, subject, -1)
            gone_value = value is not None and _count(values, value, -1)
            if gone_subject or gone_value:
                self._retally(part, finest, subject if gone_subject else None, value if gone_value else None, -1)
            return
        self._retally(part, finest, subject, value, -1)  # it held this record alone
        del part.classes[0][finest]
        child = finest
        for index in range(1, self.depth):
            key = part.up[index - 1].pop(child)
            under = part.kids[index][key]
            del under[child]
            if under:
                break
            del part.kids[index][key]
            if part.tallies[index].pop(key, None) is not None:
                part.tallied -= 1
            child = key

    def _release(self, part: Partition, index: int, key: str, rids: Sequence[int], now: int) -> list[Release]:
        part.released[index][key] = now
        part.marked.append((index, key, now))
        level = self.first + index
        return [(self._remove(part, rid), level, key) for rid in rids]

    def _smallest_group(self, part: Partition, index: int, key: str, rid: int) -> list[int]:
        """``rid`` and the oldest other members of its class that bring it to k subjects (and l values)."""
        chosen = [rid]
        record = part.records[rid]
        subjects = {record[SUBJECT]}
        values = {self.sensitive(record)} if self._l else set()
        candidates: Iterable[int]
        if index and self._nested:
            finest = part.classes[0]
            # record ids grow with arrival and each finest class holds its own in order: merged, they come
            # oldest first, as one list of the coarser class's records would
            members = [finest[leaf][0] for leaf in self._all_leaves(part, index, key)]
            # a few records: sorted in C at once; many: merged, only as far as the group needs
            candidates = (sorted(itertools.chain.from_iterable(members)) if sum(map(len, members)) <= SORT_UP_TO
                          else heapq.merge(*members))
        else:
            candidates = part.classes[index][key][0]
        for other in candidates:
            if len(subjects) >= self._k and len(values) >= self._l:
                break
            if other == rid:
                continue
            candidate = part.records[other]
            new_subject = candidate[SUBJECT] not in subjects
            value = self.sensitive(candidate) if self._l and len(values) < self._l else None
            if new_subject or (value is not None and value not in values):
                chosen.append(other)
                subjects.add(candidate[SUBJECT])
                if value is not None:
                    values.add(value)
        return chosen

    def on_record(self, part: Partition, record: Staged, keys: tuple[str, ...], now: int) -> list[Release]:
        """Take one record, with its :meth:`keys` or :meth:`end_keys`; return what to publish now.

        That is the record alone when its finest class is released, or the whole finest
        class when the record completes it. ``now`` dates releases and ages released classes (wall-clock ms in Flink).
        """
        finest = keys[0]
        if self._is_released(part, 0, finest, now):
            return [(record, self.first, finest)]
        self._add(part, record, keys if self._nested else self.all_keys(record, keys))
        if self._complete(part, 0, finest):
            return self._release(part, 0, finest, list(part.classes[0][finest][0]), now)
        return []

    def on_deadline(self, part: Partition, upto: int, now: int) -> tuple[list[Release], list[Staged]]:
        """Settle every record whose timer is at or before ``upto``: published, or leaving the stage."""
        published: list[Release] = []
        leaving: list[Staged] = []
        # per level, the classes found neither released nor complete in this call: records only leave while it
        # runs, which completes no class and so releases none, so they stay so, and are not asked again
        failed: list[set[str]] = [set() for _ in range(self.depth)]
        due = part.due
        while due and due[0][0] <= upto:
            _, rid = heapq.heappop(due)
            if rid in part.records:
                self._settle(part, rid, now, published, leaving, failed)
        part.ticks = {t for t in part.ticks if t > upto}
        if now >= part.next_sweep:
            self._sweep(part, now)
        return published, leaving

    def flush(self, part: Partition, now: int) -> tuple[list[Release], list[Staged]]:
        """End of a bounded input: settle every buffered record as if its deadline had come."""
        return self.on_deadline(part, 2**63, now)

    def _settle(self, part: Partition, rid: int, now: int, published: list[Release], leaving: list[Staged],
                failed: list[set[str]]) -> None:
        keys = part.keys[rid]
        key = keys[0]
        for index in range(self.depth):
            if index:
                if not self._nested:
                    key = keys[index]
                else:
                    key = part.up[index - 1][key]
            if key in failed[index]:
                continue
            if self._is_released(part, index, key, now):
                published.append((self._remove(part, rid), self.first + index, key))
                return
            if index and self._nested:
                # one class under it: the same finest classes as one level down, so not complete either
                if len(part.kids[index][key]) == 1 or not self._complete_under(part, index, key):
                    failed[index].add(key)
                    continue
            elif not self._complete(part, index, key):
                failed[index].add(key)
                continue
            published.extend(self._release(part, index, key, self._smallest_group(part, index, key, rid), now))
            return
        leaving.append(self._remove(part, rid))

    def rebuild(self, records: Iterable[tuple[int, Staged]], released: Iterable[tuple[str, int]],
                now: int) -> Partition:
        """A partition from its facts as :meth:`Partition.writes` wrote them: records by id, released classes.

        The timers of the buffered records come back in ``armed`` (arming one again is
        harmless), and released classes past their TTL in ``unmarked``.
        """
        part = Partition(self.depth)
        for name, at in released:
            index, key = name.split("|", 1)
            if at + self._ttl > now:
                part.released[int(index)][key] = at
            else:
                part.unmarked.append((int(index), key))
        for rid, record in sorted(records):
            record = tuple(record)
            qis = orjson.loads(record[QIS])
            self._add(part, record, self._ends.keys(qis) if self._nested else self._plan.keys(qis), rid)
        part.added = []
        return part


def published_fields(params: KAnonymityParams, generalized: Sequence[Any]) -> str:
    """The generalized QIs as JSON object members (no braces), to splice into a published value."""
    members = {qi.name: value for qi, value in zip(params.quasi_identifiers, generalized, strict=True)}
    return orjson.dumps(members).decode()[1:-1]


def publish(params: KAnonymityParams, record: Staged, level: int, generalized: Sequence[Any],
            fields: str | None = None) -> tuple:
    """``(key, headers, value)`` of a released record: generalized QIs merged into the value, ``k_level`` header.

    ``fields`` is :func:`published_fields` of ``generalized``, when the caller has it
    cached. The common case splices text; a value or headers that already hold one of
    the names (or are not plain objects) are parsed and merged instead.
    """
    value, headers = record[VALUE], record[HEADERS]
    if fields is None:
        fields = published_fields(params, generalized)
    if (value[:1] == "{" and value[-1:] == "}" and (headers or "{}")[:1] == "{" and (headers or "{}")[-1:] == "}"
            and '"k_level"' not in (headers or "") and not any(name in value for name in params.quoted_names)):
        value = ("{" if len(value) == 2 else value[:-1] + ",") + fields + "}"
        if not headers or headers == "{}":
            headers = '{"k_level":"' + str(level) + '"}'
        else:
            headers = headers[:-1] + ',"k_level":"' + str(level) + '"}'
        return record[KEY], headers, value
    parsed = orjson.loads(value)
    parsed.update(orjson.loads("{" + fields + "}"))
    merged = orjson.loads(headers) if headers else {}
    merged["k_level"] = str(level)
    return record[KEY], orjson.dumps(merged).decode(), orjson.dumps(parsed).decode()


def suppress(record: Staged, reason: str = "timeout") -> tuple:
    """``(key, headers, value)`` of a suppressed record. It holds the raw QIs: as sensitive as the input."""
    value = orjson.loads(record[VALUE])
    value.update(orjson.loads(record[QIS]))
    headers = orjson.loads(record[HEADERS]) if record[HEADERS] else {}
    headers["k_suppressed"] = reason
    return record[KEY], orjson.dumps(headers).decode(), orjson.dumps(value).decode()




class LocalCascade:
    """The whole cascade in plain Python with an explicit clock: the reference the Flink job mirrors.

    ``push(record, now)`` feeds a staged record at level 0, ``advance(now)`` fires every
    deadline up to ``now`` and ``flush()`` ends the input. Outputs collect in
    ``released`` as ``(level, key, headers, value, wait_ms)`` and in ``suppressed``.
    """

    def __init__(self, params: KAnonymityParams) -> None:
        self.params = params
        self.stages = [Stage(params, first, last) for first, last in params.stages]
        self.partitions: list[dict[str, Partition]] = [{} for _ in self.stages]
        self.timers: list[tuple[int, int, str]] = []  # heap of (timer, stage, partition key)
        self.armed: set[tuple[int, int, str]] = set()  # as in Flink, one timer per key and time
        self.released: list[tuple] = []
        self.suppressed: list[tuple] = []
        self.now = 0
        self.spans = SpanTracker(params)
        self.ncp_total = 0.0
        self._fields: dict[tuple[int, str], str] = {}  # (level, class key) -> published_fields

    def push(self, record: Staged, now: int) -> None:
        if self.timers and self.timers[0][0] <= now:
            self.advance(now)
        elif now > self.now:
            self.now = now
        self._enter(record, 0, orjson.loads(record[QIS]))

    def _partition(self, number: int, key: str) -> Partition:
        part = self.partitions[number].get(key)
        if part is None:
            part = self.partitions[number][key] = Partition(self.stages[number].depth)
        return part

    def _enter(self, record: Staged, number: int, qis: dict) -> None:
        stage = self.stages[number]
        keys = stage.end_keys(qis)  # as the Flink stage gets them; on_record counts a buffered one at every level
        key = keys[-1]
        part = self._partition(number, key)
        self._publish(stage.on_record(part, record, keys, self.now))
        self._arm(number, key, part)

    def _arm(self, number: int, key: str, part: Partition) -> None:
        for timer in part.armed:
            armed = (max(timer, self.now), number, key)
            if armed not in self.armed:
                self.armed.add(armed)
                heapq.heappush(self.timers, armed)
        part.clear_journal()

    def _publish(self, releases: list[Release]) -> None:
        for record, level, key in releases:
            self.spans.see(orjson.loads(record[QIS]))
            self.ncp_total += ncp(self.params, level, orjson.loads(record[QIS]), self.spans.spans)
            fields = self._fields.get((level, key))
            if fields is None:
                fields = self._fields[level, key] = published_fields(self.params, orjson.loads(key))
            out = publish(self.params, record, level, (), fields)
            self.released.append((level, *out, self.now - record[ENTERED]))

    def _leave(self, records: list[Staged], number: int) -> None:
        for record in records:
            if number + 1 < len(self.stages):
                self._enter(record, number + 1, orjson.loads(record[QIS]))
            else:
                self.ncp_total += 1.0
                self.suppressed.append((*suppress(record), self.now - record[ENTERED]))

    def advance(self, now: int) -> None:
        while self.timers and self.timers[0][0] <= now:
            timer = heapq.heappop(self.timers)
            self.armed.discard(timer)
            when, number, key = timer
            self.now = max(self.now, when)  # a timer fires at its own time, as in Flink
            part = self.partitions[number][key]
            published, leaving = self.stages[number].on_deadline(part, self.now, self.now)
            self._publish(published)
            self._leave(leaving, number)
            self._arm(number, key, part)
        self.now = max(self.now, now)

    def flush(self) -> None:
        """End of input: every stage, first to last, settles its records; what leaves the last is suppressed."""
        for number, stage in enumerate(self.stages):
            for part in list(self.partitions[number].values()):
                published, leaving = stage.flush(part, self.now)
                self._publish(published)
                self._leave(leaving, number)
                part.clear_journal()
        self.timers.clear()
        self.armed.clear()

    @property
    def mean_ncp(self) -> float:
        done = len(self.released) + len(self.suppressed)
        return self.ncp_total / done if done else 0.0
