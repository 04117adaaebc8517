"""k-anonymity on a live stream: a cascade of keyed stages over a path of generalization levels.

A class is one combination of quasi-identifiers (QIs) generalized to one level of the
path. A record enters the first stage and is counted, at once, in its class at every
level of that stage. Its finest class is released as soon as it holds ``k`` distinct
subjects (and, optionally, ``l`` distinct values of a sensitive attribute); a released
class then passes records straight through until its state TTL runs out. At the
record's deadline in the stage, it is published at the finest level where its class is
already released, or where the buffered records give its class ``k`` subjects (it is
released with the fewest, oldest, that do). Failing both, it moves to the next stage
(the last level, all ``*``, on a single key) through a side output, and past the last
stage it is suppressed: counted and sent to a suppressed output, never to the view.
This is the CASTLE idea (Cao et al. 2011) with Flink's keyed state and timers: every
level sees all the records the stage holds, not the slice that happens to be there.

The policy block, checked by :meth:`KAnonymityParams.from_policy`::

    k_anonymity:
      k: 5
      quasi_identifiers:
        age: {hierarchy: [{range: 5}, {range: 10}, {range: 20}, "*"], domain: [0, 120]}
        zip: {paths: [zip, address.zip], hierarchy: [{truncate: 4}, {truncate: 3}, {truncate: 2}, "*"]}
        location: {lat_field: lat, lon_field: lon, hierarchy: [{geohash: 5}, {geohash: 4}, {geohash: 3}, "*"]}
        # or square cells of a lat/lon grid, each a whole multiple of the one before:
        #   hierarchy: [{grid: 0.02}, {grid: 0.04}, {grid: 0.08}, {grid: 0.16}, "*"]
        signup: {hierarchy: [{date: day}, {date: month}, {date: year}, "*"]}
        occupation: {hierarchy_file: conf/hierarchies/occupation.csv, hierarchy: [exact, {group: 1}, "*"]}
      max_delay: 30s           # total wait bound, split over the stages by their number of levels
      timing: processing       # or event (watermarks drive the timers)
      on_timeout: generalize   # or suppress (no cascade: a timeout at level 0 suppresses)
      l_diversity: {attribute: purchaseBand, l: 2}
      state_ttl: 10m           # how long a released class passes records through
      idle_timeout: 10s        # timing: event only: a quiet input lets event time follow the wall clock

The path (``cheapest_first`` by default, ``lockstep``, or explicit) gives each cascade
level a hierarchy step per QI, each level coarser than the one before. A stage ending at
level ``L`` gives up on a record at ``entered + max_delay * (L + 1) / levels``: the
deadlines are cumulative, so no record waits longer than ``max_delay`` in total, plus
timer slack (:attr:`KAnonymityParams.timer_resolution_ms`).

The QIs are named only here, never in the view's ``fields``: the job extracts their
raw values with :func:`extract_quasi_identifiers` and the operator publishes each
one, generalized, under the QI's name.

References
----------
.. [1] J. Cao, B. Carminati, E. Ferrari, K.-L. Tan, "CASTLE: Continuously Anonymizing
   Data Streams", IEEE TDSC 8(3), 2011.
.. [2] J. Xu, W. Wang, J. Pei, X. Wang, B. Shi, A. W.-C. Fu, "Utility-based
   anonymization using local recoding", KDD 2006 (the NCP measure).
.. [3] A. Machanavajjhala, D. Kifer, J. Gehrke, M. Venkitasubramaniam,
   "l-diversity: privacy beyond k-anonymity", ACM TKDD 1(1), 2007.
"""

from __future__ import annotations

import csv
import datetime as dt
import heapq
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from operators.flink_compat import state_ttl
from operators.quiet_clock import DEFAULT_IDLE_TIMEOUT_MS, QuietClock, parse_idle_timeout
from udfs.durations import parse_duration
from udfs.generalize import cut_datetime, numeric_range, truncate
from udfs.registry import ParamError, TransformError

__all__ = [
    "KAnonymityParams",
    "LDiversity",
    "Level",
    "LocalCascade",
    "Partition",
    "QuasiIdentifier",
    "Stage",
    "attach",
    "class_key",
    "class_keys",
    "extract_quasi_identifiers",
    "generalize",
    "ncp",
]

STAR = "*"
BLOCK_KEYS = ("k", "quasi_identifiers", "max_delay", "timing", "on_timeout", "l_diversity", "state_ttl", "path",
              "idle_timeout")
PATHS = ("cheapest_first", "lockstep")
QI_KEYS = ("hierarchy", "paths", "lat_field", "lon_field", "hierarchy_file", "groups", "domain")
TIMINGS = ("processing", "event")
ON_TIMEOUT = ("generalize", "suppress")
DATE_UNITS = ("hour", "day", "month", "year")
_DATE_SECONDS = {"hour": 3600.0, "day": 86400.0, "month": 30.44 * 86400.0, "year": 365.25 * 86400.0}
_LEVEL_KINDS = {"range": "number", "truncate": "string", "geohash": "geo", "grid": "geo", "date": "date",
                "group": "category"}
_PATH = re.compile(r"^[A-Za-z_$][\w$-]*(\.[A-Za-z_$][\w$-]*)*$")
#: timestamp of the event-time timer that flushes a buffer when a bounded input ends
FLUSH_TIMER = 2**63 - 2


# -- parameters ----------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One step of a hierarchy: ``exact``, ``*``, or a kind with its argument (``range`` 10)."""

    kind: str  # exact, star, range, truncate, geohash, grid, date, group
    arg: Any = None

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "star", *_LEVEL_KINDS):
            raise ValueError(f"unknown level kind {self.kind!r}")

    def describe(self) -> str:
        return {"exact": "exact", "star": STAR}.get(self.kind, f"{{{self.kind}: {self.arg}}}")


@dataclass(frozen=True)
class QuasiIdentifier:
    """A quasi-identifier: where its raw value is and how it coarsens, finest level first.

    Parameters
    ----------
    name : str
        The name it is published under in the view.
    kind : str
        ``number``, ``string``, ``geo``, ``date`` or ``category``.
    levels : tuple of Level
        Finest first, ending with the ``star`` level.
    paths : tuple of str
        Dotted paths tried in order for the raw value (``zip``, ``address.zip``).
    lat_paths, lon_paths : tuple of str
        For a ``geo`` QI built from two fields; empty when ``paths`` holds ``{lat, lon}``.
    groups : mapping
        For a ``category`` QI: value -> its groups, finest first.
    domain : tuple of float, optional
        ``(low, high)`` that normalizes the NCP of a ``number`` or ``date`` (epoch seconds) QI.
    """

    name: str
    kind: str
    levels: tuple[Level, ...]
    paths: tuple[str, ...]
    lat_paths: tuple[str, ...] = ()
    lon_paths: tuple[str, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    domain: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.levels or self.levels[-1].kind != "star":
            raise ValueError(f"quasi-identifier {self.name}: the hierarchy must end in '*'")
        if self.kind not in ("number", "string", "geo", "date", "category"):
            raise ValueError(f"quasi-identifier {self.name}: unknown kind {self.kind!r}")
        if self.domain is not None and not self.domain[0] < self.domain[1]:
            raise ValueError(f"quasi-identifier {self.name}: domain must be [low, high] with low < high")


@dataclass(frozen=True)
class LDiversity:
    """Release a class only when ``attribute`` (a path in the protected record) has ``l`` distinct values."""

    attribute: str
    l: int  # noqa: E741 - the letter is the name the literature uses

    def __post_init__(self) -> None:
        if isinstance(self.l, bool) or not isinstance(self.l, int) or self.l < 2:
            raise ValueError("l must be an integer >= 2")


@dataclass(frozen=True)
class KAnonymityParams:
    """A checked ``k_anonymity:`` block. Build it with :meth:`from_policy`.

    Parameters
    ----------
    k : int
        Distinct subjects a class needs before it is released (>= 2).
    quasi_identifiers : tuple of QuasiIdentifier
        In the order their generalized values make up a class key.
    max_delay_ms : int
        Longest total wait of a record, across all levels.
    timing : str
        ``processing`` (a latency bound) or ``event`` (watermarks drive the deadlines).
    state_ttl_ms : int
        Life of a released class and of any buffer entry; longer than ``max_delay_ms``.
    l_diversity : LDiversity, optional
        Extra release condition.
    on_timeout : str
        ``generalize`` runs the cascade; ``suppress`` stops at level 0.
    path : tuple of tuple of int
        The cascade's route through the generalization lattice: for each level, the
        hierarchy index of every QI. Each level is coarser than the one before in at
        least one QI and finer in none. Empty means ``lockstep``.
    idle_timeout_ms : int or None
        With ``timing: event``: once the input has been quiet this long, event time follows
        the wall clock from the last event seen (:class:`~operators.quiet_clock.QuietClock`),
        so the last records' deadlines still come. ``None`` waits for the watermark alone.
    """

    k: int
    quasi_identifiers: tuple[QuasiIdentifier, ...]
    max_delay_ms: int
    timing: str = "processing"
    state_ttl_ms: int = 600_000
    l_diversity: LDiversity | None = None
    on_timeout: str = "generalize"
    path: tuple[tuple[int, ...], ...] = ()
    idle_timeout_ms: int | None = DEFAULT_IDLE_TIMEOUT_MS

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ValueError("k must be an integer >= 2")
        if not self.quasi_identifiers:
            raise ValueError("at least one quasi-identifier is needed")
        if self.max_delay_ms <= 0:
            raise ValueError("max_delay must be positive")
        if self.state_ttl_ms <= self.max_delay_ms:
            raise ValueError("state_ttl must be longer than max_delay, or buffered records would expire unseen")
        if self.timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}")
        if self.on_timeout not in ON_TIMEOUT:
            raise ValueError(f"on_timeout must be one of {ON_TIMEOUT}")
        if not self.path:
            object.__setattr__(self, "path", lockstep_path(self.quasi_identifiers))
        if self.on_timeout == "suppress":
            object.__setattr__(self, "path", self.path[:1])
        problem = _path_problem(self.path, self.quasi_identifiers)
        if problem is not None:
            raise ValueError(f"path: {problem[1]}")
        # per level, the hierarchy step of each QI: looked up per record, so precomputed
        object.__setattr__(self, "_steps", tuple(
            tuple(qi.levels[i] for qi, i in zip(self.quasi_identifiers, vector, strict=True)) for vector in self.path))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(qi.name for qi in self.quasi_identifiers)

    @property
    def levels(self) -> int:
        """Number of cascade levels (1 with ``on_timeout: suppress``)."""
        return len(self.path)

    def steps(self, level: int) -> tuple[Level, ...]:
        """The hierarchy step of each QI at cascade level ``level``."""
        return self._steps[level]  # type: ignore[attr-defined]

    @property
    def source_paths(self) -> tuple[str, ...]:
        """Every raw path the QIs read: the job must keep them out of the protected record."""
        out: list[str] = []
        for qi in self.quasi_identifiers:
            out.extend(qi.paths + qi.lat_paths + qi.lon_paths)
        return tuple(dict.fromkeys(out))

    @property
    def stages(self) -> tuple[tuple[int, int], ...]:
        """The cascade's keyed stages, as ``(first level, last level)``.

        A stage buffers a record at all its levels at once and is keyed by its last
        level's class, which holds every finer class of the stage. The first stage takes
        every level but the last; the last level (all ``*`` on a full path) is a stage of
        its own, because its one class would put every record on one key.
        """
        if self.levels == 1:
            return ((0, 0),)
        return ((0, self.levels - 2), (self.levels - 1, self.levels - 1))

    def deadline(self, entered: int, level: int) -> int:
        """When level ``level`` gives up on a record that entered level 0 at ``entered`` (ms)."""
        return entered + self.max_delay_ms * (level + 1) // self.levels

    @property
    def timer_resolution_ms(self) -> int:
        """Timers fire on multiples of this (1% of ``max_delay``).

        Coalescing bounds the timers of a class to ~100 per ``max_delay``, whatever its
        size; each firing reads the whole buffer, so a timer per record would be quadratic.
        A record waits at most ``max_delay + timer_resolution_ms``.
        """
        return max(1, self.max_delay_ms // 100)

    def timer(self, deadline: int) -> int:
        """The coalesced timer that serves ``deadline``: the next multiple of the resolution."""
        resolution = self.timer_resolution_ms
        return -(-deadline // resolution) * resolution

    @classmethod
    def from_policy(cls, block: Any, fields: Mapping[str, Any] | None = None) -> KAnonymityParams:
        """Check a view's ``k_anonymity:`` block; raise :class:`ParamError` naming the path inside it.

        Parameters
        ----------
        block : dict
            The parsed block.
        fields : dict, optional
            The view's ``fields:`` mapping. A QI (its name or any path it reads) must not be
            listed there, because the operator publishes it generalized; the l-diversity
            attribute must be.
        """
        if not isinstance(block, Mapping):
            raise ParamError("", "must be a mapping", "{k: 5, quasi_identifiers: {...}, max_delay: 30s}")
        unknown = sorted(set(block) - set(BLOCK_KEYS))
        if unknown:
            raise ParamError(str(unknown[0]), "unknown key", ", ".join(BLOCK_KEYS))
        k = block.get("k")
        if isinstance(k, bool) or not isinstance(k, int):
            raise ParamError("k", "missing or not an integer", "an integer >= 2, such as 5")
        if k < 2:
            raise ParamError("k", f"must be at least 2, got {k}", "an integer >= 2, such as 5")
        max_delay = parse_duration(block.get("max_delay"), "max_delay", minimum_ms=1, numbers=False)
        ttl_default = max(10 * max_delay, 600_000)
        state_ttl = (parse_duration(block["state_ttl"], "state_ttl", minimum_ms=1, numbers=False)
                     if "state_ttl" in block else ttl_default)
        if state_ttl <= max_delay:
            raise ParamError("state_ttl", "must be longer than max_delay", "a duration above max_delay, such as 10m")
        timing = block.get("timing", "processing")
        if timing not in TIMINGS:
            raise ParamError("timing", f"unknown value {timing!r}", ", ".join(TIMINGS))
        on_timeout = block.get("on_timeout", "generalize")
        if on_timeout not in ON_TIMEOUT:
            raise ParamError("on_timeout", f"unknown value {on_timeout!r}", ", ".join(ON_TIMEOUT))
        field_paths = {str(p) for p in (fields or {})}
        qis = _parse_quasi_identifiers(block.get("quasi_identifiers"), field_paths)
        ldiv = None
        if block.get("l_diversity") is not None:
            ldiv = _parse_l_diversity(block["l_diversity"], field_paths, qis)
        path = _parse_path(block.get("path", "cheapest_first"), qis)
        idle = parse_idle_timeout(block["idle_timeout"]) if "idle_timeout" in block else DEFAULT_IDLE_TIMEOUT_MS
        return cls(k=k, quasi_identifiers=qis, max_delay_ms=max_delay, timing=timing, state_ttl_ms=state_ttl,
                   l_diversity=ldiv, on_timeout=on_timeout, path=path, idle_timeout_ms=idle)


def lockstep_path(qis: Sequence[QuasiIdentifier]) -> tuple[tuple[int, ...], ...]:
    """Level ``L`` puts every QI at ``hierarchy[min(L, last)]``."""
    depth = max(len(qi.levels) for qi in qis)
    return tuple(tuple(min(level, len(qi.levels) - 1) for qi in qis) for level in range(depth))


def cheapest_first_path(qis: Sequence[QuasiIdentifier]) -> tuple[tuple[int, ...], ...]:
    """One QI one step coarser per level, always the step that adds the least estimated NCP.

    The estimate uses each QI's ``domain`` where given; without one, a range QI is
    assumed to span five of its coarsest buckets, a date ten years, a coordinate the
    globe and a truncated string one character more than its finest level keeps.
    """
    vector = [0] * len(qis)
    path = [tuple(vector)]
    while any(i < len(qi.levels) - 1 for i, qi in zip(vector, qis, strict=True)):
        def cost(index: int) -> tuple[float, int]:
            qi = qis[index]
            return _step_cost(qi, vector[index] + 1) - _step_cost(qi, vector[index]), index

        candidates = [i for i, qi in enumerate(qis) if vector[i] < len(qi.levels) - 1]
        best = min(candidates, key=cost)
        vector[best] += 1
        path.append(tuple(vector))
    return tuple(path)


def _step_cost(qi: QuasiIdentifier, index: int) -> float:
    level = qi.levels[index]
    if level.kind in ("star", "exact"):
        return 1.0 if level.kind == "star" else 0.0
    if level.kind == "range":
        coarsest = max(lv.arg for lv in qi.levels if lv.kind == "range")
        low, high = qi.domain or (0.0, 5.0 * coarsest)
        return min(1.0, level.arg / (high - low))
    if level.kind == "date":
        low, high = qi.domain or (0.0, 10 * _DATE_SECONDS["year"])
        return min(1.0, _DATE_SECONDS[level.arg] / (high - low))
    if level.kind == "truncate":
        finest = max(lv.arg for lv in qi.levels if lv.kind == "truncate")
        return _qi_ncp(qi, level, "0" * (finest + 1), {})
    if level.kind in ("geohash", "grid"):
        return _qi_ncp(qi, level, None, {})
    return _qi_ncp(qi, level, next(iter(qi.groups)), {})


def _path_problem(path: Sequence[Sequence[int]], qis: Sequence[QuasiIdentifier]) -> tuple[int, str] | None:
    """(index, problem) of the first bad level of a lattice path, or None."""
    if not path:
        return 0, "needs at least one level"
    for number, vector in enumerate(path):
        if len(vector) != len(qis) or any(not 0 <= i < len(qi.levels) for i, qi in zip(vector, qis, strict=False)):
            return number, "a level must give every quasi-identifier an index into its hierarchy"
        if number and (any(a > b for a, b in zip(path[number - 1], vector, strict=True)) or tuple(vector) == tuple(
                path[number - 1])):
            return number, "a level must be coarser than the one before in one QI and finer in none"
    return None


def _parse_path(raw: Any, qis: Sequence[QuasiIdentifier]) -> tuple[tuple[int, ...], ...]:
    allowed = "cheapest_first, lockstep, or a list of {qi: hierarchy index} mappings, finest first"
    if raw == "cheapest_first":
        return cheapest_first_path(qis)
    if raw == "lockstep":
        return lockstep_path(qis)
    if not isinstance(raw, list) or not raw:
        raise ParamError("path", f"unknown path {raw!r}" if isinstance(raw, str) else "not a list", allowed)
    names = [qi.name for qi in qis]
    vectors = []
    for number, item in enumerate(raw):
        if not isinstance(item, Mapping) or sorted(item) != sorted(names) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in item.values()):
            raise ParamError(f"path[{number}]", "must map every quasi-identifier to a hierarchy index",
                             "{" + ", ".join(f"{n}: 0" for n in names) + "}")
        vectors.append(tuple(item[n] for n in names))
    problem = _path_problem(vectors, qis)
    if problem is not None:
        raise ParamError(f"path[{problem[0]}]", problem[1], allowed)
    return tuple(vectors)


def _paths(raw: Any, param: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and _PATH.match(p) for p in items):
        raise ParamError(param, "must be a dotted path or a non-empty list of them", "e.g. zip or [zip, address.zip]")
    return tuple(items)


def _parse_quasi_identifiers(raw: Any, field_paths: set[str]) -> tuple[QuasiIdentifier, ...]:
    allowed = "a mapping of name to {hierarchy: [..., '*']}, e.g. {age: {hierarchy: [{range: 10}, '*']}}"
    if not isinstance(raw, Mapping) or not raw:
        raise ParamError("quasi_identifiers", "must be a non-empty mapping", allowed)
    out = []
    for name, spec in raw.items():
        where = f"quasi_identifiers.{name}"
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_$][\w$-]*$", name):
            raise ParamError(where, "a quasi-identifier name must be a plain field name", "letters, digits, _ and -")
        qi = _parse_quasi_identifier(name, spec, where)
        clash = [p for p in (qi.name, *qi.paths, *qi.lat_paths, *qi.lon_paths) if p in field_paths]
        clash += [p for p in field_paths if p.split(".", 1)[0].split("[", 1)[0] == qi.name]
        if clash:
            raise ParamError(where, f"field {clash[0]!r} is also listed in fields",
                             "a quasi-identifier only under k_anonymity: its hierarchy generalizes it, "
                             "and it is published under its own name")
        out.append(qi)
    return tuple(out)


def _parse_quasi_identifier(name: str, spec: Any, where: str) -> QuasiIdentifier:
    if not isinstance(spec, Mapping):
        raise ParamError(where, "must be a mapping", "{hierarchy: [..., '*']}")
    unknown = sorted(set(spec) - set(QI_KEYS))
    if unknown:
        raise ParamError(f"{where}.{unknown[0]}", "unknown key", ", ".join(QI_KEYS))
    groups: dict[str, tuple[str, ...]] = {}
    if "hierarchy_file" in spec or "groups" in spec:
        groups = _parse_groups(spec, where)
    hierarchy = spec.get("hierarchy")
    if hierarchy is None and groups:
        depth = len(next(iter(groups.values())))
        # rows of "value;*" only: a category that goes straight to '*' (a two-valued attribute, say)
        hierarchy = ["exact", *({"group": c} for c in range(1, depth + 1)), STAR]
    if not isinstance(hierarchy, list) or not hierarchy:
        raise ParamError(f"{where}.hierarchy", "missing or not a list", "finest first, ending in '*'")
    levels = tuple(_parse_level(item, f"{where}.hierarchy[{i}]") for i, item in enumerate(hierarchy))
    if levels[-1].kind != "star":
        raise ParamError(f"{where}.hierarchy[{len(levels) - 1}]", "a hierarchy must end in '*'", "'*' as the last level")
    for i in range(1, len(levels)):
        _check_coarser(levels[i - 1], levels[i], f"{where}.hierarchy[{i}]")
    kinds = {_LEVEL_KINDS[lv.kind] for lv in levels if lv.kind in _LEVEL_KINDS}
    if len(kinds) > 1:
        raise ParamError(f"{where}.hierarchy", "mixes kinds of level",
                         "one of range, truncate, geohash or grid, date, group")
    if not kinds and not (len(levels) == 2 and levels[0].kind == "exact"):
        raise ParamError(f"{where}.hierarchy", "needs at least one generalizing level",
                         "[exact, '*'], {range: n}, {truncate: n}, {geohash: n}, {date: unit} or {group: n}")
    # [exact, '*']: the value or nothing, as for a two-valued attribute; a hierarchy_file's values
    # make it a category (values outside the file are refused), else its values are strings
    kind = kinds.pop() if kinds else "category" if groups else "string"
    if levels.index(levels[-1]) != len(levels) - 1:
        raise ParamError(f"{where}.hierarchy", "'*' may only be the last level", "finest first, ending in '*'")
    for i, lv in enumerate(levels):
        if lv.kind == "exact" and i != 0:
            raise ParamError(f"{where}.hierarchy[{i}]", "'exact' may only be the first level", "exact first, or not at all")
    if kind == "category":
        if not groups:
            raise ParamError(where, "group levels need hierarchy_file or groups", "hierarchy_file: path.csv")
        depth = len(next(iter(groups.values())))
        for i, lv in enumerate(levels):
            if lv.kind == "group" and lv.arg > depth:
                raise ParamError(f"{where}.hierarchy[{i}]", f"the hierarchy has {depth} group columns",
                                 f"1 to {depth}" if depth else "[exact, '*']: its rows are value;* only")
    elif groups:
        raise ParamError(where, "hierarchy_file and groups are for {group: n} levels", "drop them, or use group levels")
    lat_paths = _paths(spec["lat_field"], f"{where}.lat_field") if "lat_field" in spec else ()
    lon_paths = _paths(spec["lon_field"], f"{where}.lon_field") if "lon_field" in spec else ()
    if bool(lat_paths) != bool(lon_paths):
        raise ParamError(f"{where}.lat_field", "lat_field and lon_field go together", "both or neither")
    if lat_paths and kind != "geo":
        raise ParamError(f"{where}.lat_field", "only for geohash or grid hierarchies", "drop it")
    paths = _paths(spec["paths"], f"{where}.paths") if "paths" in spec else (() if lat_paths else (name,))
    if lat_paths and "paths" in spec:
        raise ParamError(f"{where}.paths", "give either paths (to a {lat, lon} object) or lat_field/lon_field",
                         "one of the two")
    domain = None
    if "domain" in spec:
        domain = _parse_domain(spec["domain"], kind, f"{where}.domain")
    return QuasiIdentifier(name=name, kind=kind, levels=levels, paths=paths, lat_paths=lat_paths,
                           lon_paths=lon_paths, groups=groups, domain=domain)


def _parse_level(item: Any, where: str) -> Level:
    allowed = "exact, '*', {range: 10}, {truncate: 3}, {geohash: 5}, {grid: 0.05}, {date: day|month|year|hour}, {group: 1}"
    if item in ("exact", "keep"):
        return Level("exact")
    if item == STAR:
        return Level("star")
    if not isinstance(item, Mapping) or len(item) != 1:
        raise ParamError(where, "not a hierarchy level", allowed)
    (kind, arg), = item.items()
    if kind == "range":
        if isinstance(arg, bool) or not isinstance(arg, (int, float)) or not math.isfinite(arg) or arg <= 0:
            raise ParamError(where, "a range width must be a positive number", "such as {range: 10}")
    elif kind == "grid":
        if isinstance(arg, bool) or not isinstance(arg, (int, float)) or not math.isfinite(arg) or not 0 < arg <= 180:
            raise ParamError(where, "a grid cell must be a positive number of degrees, at most 180",
                             "such as {grid: 0.05}")
        if abs(arg * MICRO - round(arg * MICRO)) > 1e-6:
            raise ParamError(where, "a grid cell is counted in millionths of a degree", "such as {grid: 0.05}")
    elif kind in ("truncate", "geohash", "group"):
        low = 0 if kind == "truncate" else 1
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < low or (kind == "geohash" and arg > 12):
            high = {"geohash": " to 12", "truncate": " or more", "group": " or more"}[kind]
            raise ParamError(where, f"{kind} needs an integer from {low}{high}", f"such as {{{kind}: 3}}")
    elif kind == "date":
        if arg not in DATE_UNITS:
            raise ParamError(where, f"unknown date unit {arg!r}", ", ".join(DATE_UNITS))
    else:
        raise ParamError(where, f"unknown level kind {kind!r}", allowed)
    return Level(kind, arg)


def _check_coarser(finer: Level, coarser: Level, where: str) -> None:
    if finer.kind == "star":
        raise ParamError(where, "nothing can follow '*'", "'*' as the last level")
    if coarser.kind == "star" or finer.kind == "exact":
        if coarser.kind == "exact":
            raise ParamError(where, "'exact' is not coarser than 'exact'", "a generalizing level")
        return
    if coarser.kind == "exact":
        raise ParamError(where, "'exact' is finer than the level before it", "exact only first")
    if coarser.kind != finer.kind:
        raise ParamError(where, f"a {coarser.kind} level after a {finer.kind} level mixes kinds",
                         f"another {finer.kind} level, or '*'")
    a, b = finer.arg, coarser.arg
    if finer.kind in ("range", "grid"):
        # a coarse bucket must hold whole fine buckets, or one record would straddle two classes
        ratio = b / a
        if b <= a or abs(ratio - round(ratio)) > 1e-9:
            raise ParamError(where, f"{finer.kind} {b} is not a larger multiple of the {finer.kind} {a} before it",
                             f"a multiple of {a} above {a}, such as {a * 2}")
    elif finer.kind in ("truncate", "geohash"):
        if b >= a:
            raise ParamError(where, f"{coarser.kind} {b} keeps as much as {a} before it", f"fewer than {a}")
    elif finer.kind == "date":
        if DATE_UNITS.index(b) <= DATE_UNITS.index(a):
            raise ParamError(where, f"date {b} is not coarser than {a}", f"a unit after {a} in {', '.join(DATE_UNITS)}")
    elif finer.kind == "group" and b <= a:
        raise ParamError(where, f"group {b} is not a coarser column than {a}", f"a column after {a}")


def _parse_groups(spec: Mapping[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    """Read ``value -> groups`` from an ARX-style CSV (``value;group;...;*``) or an inline mapping."""
    if "hierarchy_file" in spec and "groups" in spec:
        raise ParamError(f"{where}.groups", "give hierarchy_file or groups, not both", "one of the two")
    rows: list[list[str]] = []
    if "hierarchy_file" in spec:
        param = f"{where}.hierarchy_file"
        path = spec["hierarchy_file"]
        if not isinstance(path, str):
            raise ParamError(param, "must be a path", "a CSV file, one row per value: value;group;...;*")
        try:
            text = Path(path).read_text()
        except OSError:
            raise ParamError(param, "cannot read the file", "a readable CSV file, relative to the job's directory") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        delimiter = ";" if ";" in first or "," not in first else ","
        rows = [[c.strip() for c in row] for row in csv.reader(text.splitlines(), delimiter=delimiter) if row]
    else:
        param = f"{where}.groups"
        raw = spec["groups"]
        if not isinstance(raw, Mapping) or not all(isinstance(v, list) for v in raw.values()):
            raise ParamError(param, "must map each value to its list of groups", "{nurse: [health], surgeon: [health]}")
        rows = [[str(k), *(str(g) for g in v)] for k, v in raw.items()]
    # the '*' column is implied; what is left may be the value alone ("value;*": straight to '*')
    rows = [r[:-1] if len(r) > 1 and r[-1] == STAR else r for r in rows]
    if not rows or not rows[0] or not rows[0][0]:
        raise ParamError(param, "needs at least one row, each starting with a value", "value;group;...;* or value;*")
    width = len(rows[0])
    table: dict[str, tuple[str, ...]] = {}
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise ParamError(param, f"row {number} has {len(row)} columns, the first has {width}", "equal rows")
        if row[0] in table:
            raise ParamError(param, f"row {number} repeats a value of an earlier row", "each value once")
        table[row[0]] = tuple(row[1:])
    for column in range(width - 2):
        parent: dict[str, str] = {}
        for groups in table.values():
            # each group must sit inside exactly one coarser group, or it would not be a hierarchy
            if parent.setdefault(groups[column], groups[column + 1]) != groups[column + 1]:
                raise ParamError(param, f"a group in column {column + 1} has two parents in column {column + 2}",
                                 "each group inside exactly one coarser group")
    return table


def _parse_domain(raw: Any, kind: str, where: str) -> tuple[float, float]:
    if kind not in ("number", "date"):
        raise ParamError(where, "only for range and date hierarchies", "drop it")
    if not isinstance(raw, list) or len(raw) != 2:
        raise ParamError(where, "must be [low, high]", "e.g. [0, 120], or ISO dates for a date hierarchy")
    if kind == "date":
        try:
            low, high = (_epoch_seconds(v) for v in raw)
        except (TypeError, ValueError):
            raise ParamError(where, "dates must be ISO-8601 strings", "e.g. [2000-01-01, 2030-01-01]") from None
    else:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            raise ParamError(where, "must be two numbers", "e.g. [0, 120]")
        low, high = float(raw[0]), float(raw[1])
    if not low < high:
        raise ParamError(where, "low must be below high", "[low, high]")
    return low, high


def _parse_l_diversity(raw: Any, field_paths: set[str], qis: Sequence[QuasiIdentifier]) -> LDiversity:
    if not isinstance(raw, Mapping) or set(raw) - {"attribute", "l"}:
        raise ParamError("l_diversity", "must be {attribute: ..., l: ...}", "{attribute: purchaseBand, l: 2}")
    attribute, l_value = raw.get("attribute"), raw.get("l")
    if not isinstance(attribute, str) or not _PATH.match(attribute):
        raise ParamError("l_diversity.attribute", "missing or not a field path", "a field of the view")
    if field_paths and attribute not in field_paths:
        raise ParamError("l_diversity.attribute", f"{attribute!r} is not among the view's fields",
                         "a field listed in fields (its protected value is what counts)")
    if attribute in {qi.name for qi in qis}:
        raise ParamError("l_diversity.attribute", "is a quasi-identifier", "a sensitive attribute, not a QI")
    if isinstance(l_value, bool) or not isinstance(l_value, int) or l_value < 2:
        raise ParamError("l_diversity.l", "must be an integer >= 2", "such as 2")
    return LDiversity(attribute=attribute, l=l_value)


# -- per record: extract and generalize -------------------------------------------------


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


_ABSENT = object()


def _first(record: Mapping[str, Any], paths: Sequence[str]) -> Any:
    for path in paths:
        value = _lookup(record, path)
        if value is not _ABSENT and value is not None:
            return value
    return _ABSENT


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _epoch_seconds(value: Any) -> float:
    if not isinstance(value, str):
        raise TypeError("not a string")
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def extract_quasi_identifiers(params: KAnonymityParams, record: Mapping[str, Any]) -> dict[str, Any]:
    """Raw QI values of one input record, ``{qi_name: value}``, checked against their hierarchies.

    A ``geo`` QI gives ``{"lat": .., "lon": ..}``. Raises
    :class:`~udfs.registry.TransformError` (``"field age: missing"``) when a value is
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
        if not isinstance(value, Mapping) or not _is_number(value.get("lat")) or not _is_number(value.get("lon")):
            raise TransformError(f"field {name}: expected a coordinate {{lat, lon}}")
        if not (-90 <= value["lat"] <= 90 and -180 <= value["lon"] <= 180):
            raise TransformError(f"field {name}: coordinate out of range")
        value = {"lat": value["lat"], "lon": value["lon"]}
    elif qi.kind == "date":
        try:
            _epoch_seconds(value)
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
    lon_i = min(int((lon + 180.0) / 360.0 * (1 << lon_bits)), (1 << lon_bits) - 1)
    lat_i = min(int((lat + 90.0) / 180.0 * (1 << lat_bits)), (1 << lat_bits) - 1)
    lon_s = _SPREAD[lon_i & 0xFFFF] | _SPREAD[lon_i >> 16] << 32
    lat_s = _SPREAD[lat_i & 0xFFFF] | _SPREAD[lat_i >> 16] << 32
    # longitude takes the first bit: the even positions when the bit count is odd
    word = lon_s | lat_s << 1 if bits % 2 else lon_s << 1 | lat_s
    return "".join(_GEOHASH_ALPHABET[(word >> shift) & 31] for shift in range(bits - 5, -1, -5))


MICRO = 1_000_000  # grid cells are whole millionths of a degree, so every level's cell is exact integer arithmetic


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
        total += _qi_ncp(qi, step, qis[qi.name], spans)
    return total / len(params.quasi_identifiers)


def _qi_ncp(qi: QuasiIdentifier, level: Level, value: Any, spans: Mapping[str, tuple[float, float]]) -> float:
    kind = level.kind
    if kind == "star":
        return 1.0
    if kind == "exact":
        return 0.0
    if kind in ("range", "date"):
        width = level.arg if kind == "range" else _DATE_SECONDS[level.arg]
        low, high = qi.domain or spans.get(qi.name, (0.0, 0.0))
        return 1.0 if high <= low else min(1.0, width / (high - low))
    if kind == "truncate":
        masked = max(0, len(value) - level.arg)
        if not value:
            return 0.0
        base = 10 if value.isdigit() else 36
        return 0.0 if not value else (base**masked - 1) / (base ** len(value) - 1)
    if kind in ("geohash", "grid"):
        if kind == "grid":
            lon_w = lat_w = level.arg
        else:
            bits = 5 * level.arg
            lon_w, lat_w = 360.0 / 2 ** ((bits + 1) // 2), 180.0 / 2 ** (bits // 2)
        lat_low, lat_high = spans.get(qi.name + ".lat", (-90.0, 90.0))
        lon_low, lon_high = spans.get(qi.name + ".lon", (-180.0, 180.0))
        lat_part = 1.0 if lat_high <= lat_low else min(1.0, lat_w / (lat_high - lat_low))
        lon_part = 1.0 if lon_high <= lon_low else min(1.0, lon_w / (lon_high - lon_low))
        return (lat_part + lon_part) / 2
    group = qi.groups[value][level.arg - 1]
    leaves = sum(1 for groups in qi.groups.values() if groups[level.arg - 1] == group)
    return 0.0 if len(qi.groups) < 2 else (leaves - 1) / (len(qi.groups) - 1)


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
                self._dims.append((qi.name, qi.name, _epoch_seconds))
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

    def stage_record(self, key: str | None, headers: str, value: str, subject: str, qis: Mapping[str, Any],
                     event_ms: int, now_ms: int) -> tuple[str, str]:
        keys = self.stage.end_keys(qis)
        record = (key, headers, value, subject, orjson.dumps(qis).decode(), event_ms, event_ms if self.event else now_ms)
        return keys[-1], encode_staged(record, keys)


def class_keys(params: KAnonymityParams, first: int, last: int, qis: Mapping[str, Any]) -> tuple[str, ...]:
    """:func:`class_key` at every level from ``first`` to ``last``."""
    return _KeyPlan(params, range(first, last + 1)).keys(qis)


class _KeyPlan:
    """Builds a record's class keys at a run of levels, generalizing each value once per hierarchy step.

    A record is keyed at every level of its stage, so this is the hot path: each QI's
    steps are generalized once and spliced as JSON text, and a geohash QI is hashed once,
    at its finest step, the coarser ones being its prefixes. The steps of a plain value
    (a number, a string) are remembered, up to ``CACHE_LIMIT`` values per QI: a subject's
    age and zip come back with each of its records.
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

    def keys(self, qis: Mapping[str, Any]) -> tuple[str, ...]:
        pieces: list[dict[int, str]] = []
        for qi, used, top, grid, memo in zip(self.qis, self.used, self.geo_top, self.grid, self.memo, strict=True):
            value = qis[qi.name]
            if memo is not None:
                # bool is an int to a dict: 1 and True would share a row, so the type is in the key
                known = memo.get((type(value), value))
                if known is not None:
                    pieces.append(known)
                    continue
            full = fast_geohash(value["lat"], value["lon"], top) if top else ""
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
        if len(pieces) == 3:
            a, b, c = pieces
            return tuple(f"[{a[x]},{b[y]},{c[z]}]" for x, y, z in self.rows)
        return tuple("[" + ",".join(piece[i] for piece, i in zip(pieces, row, strict=True)) + "]" for row in self.rows)


def _count(counts: dict[str, int], item: str, step: int) -> None:
    left = counts.get(item, 0) + step
    if left > 0:
        counts[item] = left
    else:
        counts.pop(item, None)


class Partition:
    """The buffered records of one partition of a stage, indexed by their class at every level of the stage.

    Only ``records`` and ``released`` are facts; everything else is an index that
    :meth:`Stage.rebuild` recomputes from them, which is how the Flink operator comes
    back from keyed state. ``added``, ``removed``, ``marked`` and ``armed`` journal the
    changes since the caller last cleared them, so that it can write them through.
    """

    __slots__ = ("records", "keys", "classes", "released", "due", "ticks", "next_rid", "next_sweep",
                 "added", "removed", "marked", "unmarked", "armed", "flush_armed")

    def __init__(self, depth: int) -> None:
        self.records: dict[int, Staged] = {}  # record id -> staged record
        self.keys: dict[int, tuple[str, ...]] = {}  # record id -> its class at each level of the stage
        # per level: class -> (its record ids, oldest first; {subject: records}; {sensitive value: records})
        self.classes: list[dict[str, tuple[dict[int, None], dict[str, int], dict[str, int]]]] = [
            {} for _ in range(depth)]
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

    A record entering the stage is counted in its class at every level of the stage
    at once, so every level sees all the records buffered in the stage, not a slice.

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

    def partition_key(self, qis: Mapping[str, Any]) -> str:
        """The key of the stage's keyed state: the record's class at the stage's last level."""
        return class_key(self.params, self.last, qis)

    def keys(self, qis: Mapping[str, Any]) -> tuple[str, ...]:
        """A record's class at each level of the stage, finest first; the last is its partition key."""
        return self._plan.keys(qis)

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
        node: Any = orjson.loads(record[VALUE])
        for part in self._attribute:
            node = node.get(part) if isinstance(node, Mapping) else None
        return orjson.dumps(node).decode()

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
        entry = part.classes[index].get(key)
        return entry is not None and len(entry[1]) >= self._k and len(entry[2]) >= self._l

    def _add(self, part: Partition, record: Staged, keys: tuple[str, ...], rid: int | None = None) -> int:
        if rid is None:
            rid = part.next_rid
            part.added.append(rid)
        part.next_rid = max(part.next_rid, rid + 1)
        part.records[rid] = record
        part.keys[rid] = keys
        subject = record[SUBJECT]
        value = self.sensitive(record) if self._l else None
        for classes, key in zip(part.classes, keys, strict=True):
            entry = classes.get(key)
            if entry is None:
                classes[key] = ({rid: None}, {subject: 1}, {} if value is None else {value: 1})
                continue
            entry[0][rid] = None
            subjects = entry[1]
            subjects[subject] = subjects.get(subject, 0) + 1
            if value is not None:
                values = entry[2]
                values[value] = values.get(value, 0) + 1
        timer = self.timer(record)
        heapq.heappush(part.due, (timer, rid))
        if timer not in part.ticks:
            part.ticks.add(timer)
            part.armed.append(timer)
        return rid

    def _remove(self, part: Partition, rid: int) -> Staged:
        record = part.records.pop(rid)
        keys = part.keys.pop(rid)
        subject = record[SUBJECT]
        value = self.sensitive(record) if self._l else None
        for classes, key in zip(part.classes, keys, strict=True):
            members, subjects, values = classes[key]
            del members[rid]
            if not members:
                del classes[key]
                continue
            _count(subjects, subject, -1)
            if value is not None:
                _count(values, value, -1)
        part.removed.append(rid)
        return record

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
        for other in part.classes[index][key][0]:
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
        if len(keys) != self.depth:  # only its end keys (:meth:`end_keys`): count it at every level
            keys = self._plan.keys(orjson.loads(record[QIS]))
        self._add(part, record, keys)
        if self._complete(part, 0, finest):
            return self._release(part, 0, finest, list(part.classes[0][finest][0]), now)
        return []

    def on_deadline(self, part: Partition, upto: int, now: int) -> tuple[list[Release], list[Staged]]:
        """Settle every record whose timer is at or before ``upto``: published, or leaving the stage."""
        published: list[Release] = []
        leaving: list[Staged] = []
        due = part.due
        while due and due[0][0] <= upto:
            _, rid = heapq.heappop(due)
            if rid in part.records:
                self._settle(part, rid, now, published, leaving)
        part.ticks = {t for t in part.ticks if t > upto}
        if now >= part.next_sweep:
            self._sweep(part, now)
        return published, leaving

    def flush(self, part: Partition, now: int) -> tuple[list[Release], list[Staged]]:
        """End of a bounded input: settle every buffered record as if its deadline had come."""
        return self.on_deadline(part, 2**63, now)

    def _settle(self, part: Partition, rid: int, now: int, published: list[Release], leaving: list[Staged]) -> None:
        keys = part.keys[rid]
        for index, key in enumerate(keys):
            if self._is_released(part, index, key, now):
                published.append((self._remove(part, rid), self.first + index, key))
                return
            if self._complete(part, index, key):
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
            self._add(part, record, self._plan.keys(orjson.loads(record[QIS])), rid)
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
            and '"k_level"' not in (headers or "") and not any(f'"{name}"' in value for name in params.names)):
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
        keys = stage.keys(qis)
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


# -- Flink wrappers ---------------------------------------------------------------------


def _types(lines: bool):
    from pyflink.common.typeinfo import Types

    # (partition key in the stage, encoded staged record): keyed in Java on its first field
    staged = Types.ROW([Types.STRING(), Types.STRING()])
    # a finished JSON line for sinks that take lines; (key, headers, value) for the others
    out = Types.STRING() if lines else Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING()])
    return staged, out


def _now_ms() -> int:
    # Flink's processing time is the wall clock; asking the timer service is a call into the JVM
    return int(time.time() * 1000)


class _Tally:
    """A counter that reaches the Flink metric every ``every`` increments: each ``inc`` is a JVM call."""

    def __init__(self, counter, every: int = 256) -> None:
        self.counter, self.every, self.pending = counter, every, 0

    def add(self, n: int = 1) -> None:
        self.pending += n
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.counter.inc(self.pending)
            self.pending = 0


#: the span tracker sees every released record up to this many, then one in SPAN_SAMPLE
SPAN_WARMUP, SPAN_SAMPLE = 1024, 16
#: past this many cached partitions, or cached published fields and class NCPs, the idle ones are dropped
CACHE_LIMIT = 100_000


def _stage_function(params: KAnonymityParams, number: int, view_name: str, promote_id: str, suppress_id: str,
                    lines: bool, watermark_delay_ms: int):
    from pyflink.common import Row
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import KeyedProcessFunction, OutputTag, TimeDomain
    from pyflink.datastream.state import MapStateDescriptor

    from udfs.record import envelope_line

    first, last = params.stages[number]

    class StageFunction(KeyedProcessFunction):
        """One keyed stage of the cascade: the :class:`Stage` rules over keyed state and timers.

        Its input is one ``STRING`` per record (:func:`encode_staged`), keyed in Java by its
        partition key. Keyed state holds the facts of a partition: ``buffer`` (record id ->
        encoded staged record) and ``released`` (``"level|class"`` -> released at). The
        :class:`Partition` index over them lives in ``self.partitions`` as a write-through
        cache: every change is written to state in the same call, so a checkpoint holds it all,
        and a key whose partition is not cached (after a restore, or once dropped) is rebuilt
        from its state. A record costs one state write when it is buffered and one when it
        leaves; a record of a released class costs none.
        """

        def __init__(self) -> None:
            self.params = params

        def open(self, runtime_context) -> None:
            # made here, not captured: a used TypeInformation (and a tag holding one) keeps a JVM handle
            staged_type, out_type = _types(lines)
            self.promote_tag = OutputTag(promote_id, staged_type)
            self.suppress_tag = OutputTag(suppress_id, out_type)
            self.row = Row
            self.envelope = envelope_line if lines else None
            self.stage = Stage(self.params, first, last)
            self.next_stage = Stage(self.params, *self.params.stages[number + 1]) if not self.stage.final else None
            self.processing = self.params.timing == "processing"
            # timing: event on a quiet input: processing-time ticks settle the deadlines event time has passed
            self.clock = (QuietClock(self.params.idle_timeout_ms, watermark_delay_ms)
                          if not self.processing and self.params.idle_timeout_ms is not None else None)
            self.ticking: set[str] = set()  # partitions with a quiet-input tick pending
            # background cleanup needs a JVM gateway that a cluster TaskManager's Python lacks:
            # expired entries go on read and in full snapshots instead
            ttl = state_ttl(self.params.state_ttl_ms)
            buffer = MapStateDescriptor("staged", Types.LONG(), Types.STRING())
            released = MapStateDescriptor("released", Types.STRING(), Types.LONG())
            buffer.enable_time_to_live(ttl)
            released.enable_time_to_live(ttl)
            self.buffer = runtime_context.get_map_state(buffer)
            self.released_state = runtime_context.get_map_state(released)
            self.partitions: dict[str, Partition] = {}  # partition key -> its index, over the state of that key
            self.fields: dict[tuple[int, str], str] = {}  # (level, class key) -> published_fields
            self.class_ncp: dict[tuple[int, str], float] = {}  # NCP of a class's published form, for the current spans
            group = runtime_context.get_metrics_group().add_group("k_anonymity").add_group("view", view_name)
            group = group.add_group("stage", str(number))
            self.buffered = _Tally(group.counter("buffered"))
            self.released = {level: _Tally(group.add_group("level", str(level)).counter("released"))
                             for level in range(first, last + 1)}
            self.promoted = _Tally(group.counter("promoted"))
            self.suppressed = _Tally(group.counter("suppressed"))
            self.tallies = [self.buffered, self.promoted, self.suppressed, *self.released.values()]
            self.longest_wait = 0
            self.ncp_total, self.ncp_count, self.seen = 0.0, 0, 0
            self.spans = SpanTracker(self.params)
            # counters, not gauges: in thread mode Flink's metric thread would call a Python gauge into
            # the embedded interpreter, and a REST metrics query then crashes the JVM (SIGSEGV in take_gil).
            # The running mean NCP is ncp_micro / ncp_records.
            self.longest_wait_counter = group.counter("longest_wait_ms")
            self.ncp_micro = _Tally(group.counter("ncp_micro"), every=256_000_000)
            self.ncp_records = _Tally(group.counter("ncp_records"))
            self.tallies += [self.ncp_micro, self.ncp_records]

        def _partition(self, key: str, now: int) -> Partition:
            part = self.partitions.get(key)
            if part is None:
                if len(self.partitions) >= CACHE_LIMIT:
                    self.partitions = {k: p for k, p in self.partitions.items() if not p.empty()}
                records = ((rid, decode_staged(text)[0]) for rid, text in self.buffer.items())
                part = self.stage.rebuild(records, self.released_state.items(), now)
                self.partitions[key] = part
            return part

        def _write(self, part: Partition, service) -> None:
            """Write the partition's journal through to keyed state and timers."""
            puts, removes, marks, unmarks = part.writes()
            for rid, record in puts:
                self.buffer.put(rid, encode_staged(record, part.keys[rid]))
            for rid in removes:
                self.buffer.remove(rid)
            for name in unmarks:
                self.released_state.remove(name)
            for name, at in marks:
                self.released_state.put(name, at)
            for timer in part.armed:
                if self.processing:
                    service.register_processing_time_timer(timer)
                else:
                    service.register_event_time_timer(timer)
            if self.processing and part.records and not part.flush_armed:
                # processing-time timers die with a bounded input; the final watermark flushes
                service.register_event_time_timer(FLUSH_TIMER)
                part.flush_armed = True
            self.buffered.add(len(puts))
            part.clear_journal()

        def _publish(self, releases: list[Release], now: int):
            for record, level, key in releases:
                fields = self.fields.get((level, key))
                if fields is None:
                    if len(self.fields) >= CACHE_LIMIT:
                        self.fields.clear()
                    fields = self.fields[level, key] = published_fields(self.params, orjson.loads(key))
                self.seen += 1
                if self.seen <= SPAN_WARMUP or self.seen % SPAN_SAMPLE == 0:
                    if self.spans.see(orjson.loads(record[QIS])):
                        self.class_ncp.clear()
                cost = self.class_ncp.get((level, key))
                if cost is None:
                    if len(self.class_ncp) >= CACHE_LIMIT:
                        self.class_ncp.clear()
                    # one record stands for its class: the generalized form fixes every QI's NCP
                    cost = self.class_ncp[level, key] = ncp(self.params, level, orjson.loads(record[QIS]),
                                                            self.spans.spans)
                self.ncp_total += cost
                self.ncp_count += 1
                self.ncp_micro.add(int(cost * 1e6))
                self.ncp_records.add()
                if self.processing and now - record[ENTERED] > self.longest_wait:
                    self.longest_wait_counter.inc(now - record[ENTERED] - self.longest_wait)
                    self.longest_wait = now - record[ENTERED]
                self.released[level].add()
                out = publish(self.params, record, level, (), fields)
                yield out if self.envelope is None else self.envelope(*out, True)

        def process_element(self, payload, ctx):
            # payload: encode_staged(record, its class keys in this stage); the last key is this partition's
            now = _now_ms()
            record, keys = decode_staged(payload)
            part = self._partition(keys[-1], now)
            releases = self.stage.on_record(part, record, keys, now)
            if part.added or part.removed or part.marked or part.unmarked or part.armed:
                self._write(part, ctx.timer_service())
            if self.clock is not None:
                self.clock.saw(record[EVENT_TIME], now)
                if part.records and keys[-1] not in self.ticking:
                    self._tick(keys[-1], now, ctx.timer_service())
            yield from self._publish(releases, now)

        def _tick(self, key: str, now: int, service) -> None:
            tick = self.clock.tick_ms
            service.register_processing_time_timer((now // tick + 1) * tick)  # aligned: one per tick and key
            self.ticking.add(key)

        def on_timer(self, timestamp, ctx):
            now = _now_ms()
            part = self._partition(ctx.get_current_key(), now)
            if ctx.time_domain() == TimeDomain.EVENT_TIME and timestamp >= FLUSH_TIMER:
                published, leaving = self.stage.flush(part, now)
                part.flush_armed = False
            elif ctx.time_domain() == TimeDomain.PROCESSING_TIME and self.clock is not None:
                # a quiet-input tick: the deadlines that event time, carried on by the wall clock, has passed
                key = ctx.get_current_key()
                self.ticking.discard(key)
                quiet_time = self.clock.event_time(now)
                published, leaving = (self.stage.on_deadline(part, quiet_time, now) if quiet_time is not None
                                     else ([], []))
                if part.records:
                    self._tick(key, now, ctx.timer_service())
            else:
                published, leaving = self.stage.on_deadline(part, timestamp, now)
            self._write(part, ctx.timer_service())
            yield from self._publish(published, now)
            for record in leaving:
                if self.next_stage is None:
                    self.suppressed.add()
                    self.ncp_total += 1.0
                    self.ncp_count += 1
                    self.ncp_micro.add(1_000_000)
                    self.ncp_records.add()
                    out = suppress(record)
                    yield self.suppress_tag, out if self.envelope is None else self.envelope(*out, True)
                else:
                    self.promoted.add()
                    keys = self.next_stage.end_keys(orjson.loads(record[QIS]))
                    yield self.promote_tag, self.row(keys[-1], encode_staged(record, keys))
            for tally in self.tallies:
                tally.flush()

        def close(self) -> None:
            for tally in self.tallies:
                tally.flush()

    return StageFunction()


def attach(stream, params: KAnonymityParams, *, view_name: str):
    """Wire the cascade onto a stream of k-anonymity tuples (tests, benchmarks, other jobs).

    Parameters
    ----------
    stream : DataStream
        ``(key | None, headers JSON, protected value JSON without the QIs, subject,
        raw QIs JSON, event time ms)``, typed ``Types.TUPLE([STRING x 5, LONG])``.
    params : KAnonymityParams
        From :meth:`KAnonymityParams.from_policy`.
    view_name : str
        Used in operator names, uids and metric groups.

    Returns
    -------
    released, suppressed : DataStream, DataStream
        Both ``Types.TUPLE([STRING key, STRING headers JSON, STRING value JSON])``, as
        :func:`attach_staged` with ``lines=False``.

    A Python map stages each tuple (:class:`Stager`), as the job's protect operator does
    for its own records, then :func:`attach_staged` runs the cascade.
    """
    from pyflink.common import Row

    from operators.flink_compat import keyed_by_first_field

    staged_type, _ = _types(False)
    stager = Stager(params)

    def stamp(record):
        key, headers, value, subject, qis, event_ms = record
        return Row(*stager.stage_record(key, headers, value, subject, orjson.loads(qis), event_ms, _now_ms()))

    staged = stream.map(stamp, output_type=staged_type).name(f"k-anon {view_name} stamp").uid(f"kanon-{view_name}-stamp")
    return attach_staged(keyed_by_first_field(staged, staged_type), params, view_name=view_name, lines=False)


def attach_staged(keyed, params: KAnonymityParams, *, view_name: str, lines: bool, watermark_delay_ms: int = 0):
    """Wire the cascade onto a keyed stream of staged records.

    Parameters
    ----------
    keyed : KeyedStream
        ``STRING`` payloads of :func:`encode_staged`, keyed by their stage-0 partition key
        (what :meth:`Stager.stage_record` returns, keyed in Java by
        :func:`operators.flink_compat.keyed_by_first_field`).
    params : KAnonymityParams
    view_name : str
        Used in operator names, uids and metric groups.
    lines : bool
        Emit finished JSON Lines (``STRING``) for a sink that takes them, instead of
        ``(key, headers, value)`` tuples: no encoding step after the cascade.
    watermark_delay_ms : int
        With ``timing: event``: the watermark's out-of-orderness, where the quiet-input clock starts.

    Returns
    -------
    released, suppressed : DataStream, DataStream
        A released value holds the generalized QIs under their names and its headers a
        ``k_level``; a suppressed one holds the raw QIs (as sensitive as the input) and a
        ``k_suppressed`` header.

    A promoted record goes to the next stage as a ``(partition key, payload)`` side output,
    keyed in Java: each record crosses between Java and Python once per stage it visits.
    """
    from pyflink.datastream import OutputTag

    from operators.flink_compat import keyed_side_output, side_output

    staged_type, out_type = _types(lines)
    released_streams, suppressed = [], None
    suppress_tag = OutputTag(f"kanon-{view_name}-suppress", out_type)
    current = keyed
    for number in range(len(params.stages)):
        promote_tag = OutputTag(f"kanon-{view_name}-promote-{number}", staged_type)
        function = _stage_function(params, number, view_name, promote_tag.tag_id, suppress_tag.tag_id, lines,
                                   watermark_delay_ms)
        released = (current.process(function, output_type=out_type)
                    .name(f"k-anon {view_name} stage {number}").uid(f"kanon-{view_name}-stage-{number}"))
        released_streams.append(released)
        if number + 1 < len(params.stages):
            current = keyed_side_output(released, promote_tag, staged_type)
        else:
            suppressed = side_output(released, suppress_tag)
    out = released_streams[0] if len(released_streams) == 1 else released_streams[0].union(*released_streams[1:])
    return out, suppressed
