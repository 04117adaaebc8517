"""The checked ``k_anonymity:`` block of a policy: quasi-identifiers, hierarchies, the cascade's path.

:meth:`KAnonymityParams.from_policy` checks a block once, when the policy is checked, and raises
:class:`~udfs.errors.ParamError` only, naming the parameter and what is allowed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from operators.quiet_clock import DEFAULT_IDLE_TIMEOUT_MS, parse_idle_timeout
from udfs.durations import parse_duration
from udfs.errors import ParamError
from udfs.record import is_plain_path
from udfs.timestamps import epoch_seconds

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


MICRO = 1_000_000  # grid cells are whole millionths of a degree, so every level's cell is exact integer arithmetic


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
        # the QI names as JSON object keys: every published record is checked for them
        object.__setattr__(self, "_quoted_names", tuple(orjson.dumps(qi.name).decode() for qi in self.quasi_identifiers))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(qi.name for qi in self.quasi_identifiers)

    @property
    def quoted_names(self) -> tuple[str, ...]:
        """The QI names as they appear as keys in JSON text: ``'"age"'``."""
        return self._quoted_names

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
        return qi_ncp(qi, level, "0" * (finest + 1), {})
    if level.kind in ("geohash", "grid"):
        return qi_ncp(qi, level, None, {})
    return qi_ncp(qi, level, next(iter(qi.groups)), {})


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
    if not isinstance(items, list) or not items or not all(is_plain_path(p) for p in items):
        raise ParamError(param, "must be a dotted path or a non-empty list of them", "e.g. zip or [zip, address.zip]")
    return tuple(items)


def _parse_quasi_identifiers(raw: Any, field_paths: set[str]) -> tuple[QuasiIdentifier, ...]:
    allowed = "a mapping of name to {hierarchy: [..., '*']}, e.g. {age: {hierarchy: [{range: 10}, '*']}}"
    if not isinstance(raw, Mapping) or not raw:
        raise ParamError("quasi_identifiers", "must be a non-empty mapping", allowed)
    out = []
    for name, spec in raw.items():
        where = f"quasi_identifiers.{name}"
        if not is_plain_path(name) or "." in name:  # one field name of the path grammar
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
            low, high = (epoch_seconds(v) for v in raw)
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
    if not is_plain_path(attribute):
        raise ParamError("l_diversity.attribute", "missing or not a field path", "a field of the view")
    if field_paths and attribute not in field_paths:
        raise ParamError("l_diversity.attribute", f"{attribute!r} is not among the view's fields",
                         "a field listed in fields (its protected value is what counts)")
    if attribute in {qi.name for qi in qis}:
        raise ParamError("l_diversity.attribute", "is a quasi-identifier", "a sensitive attribute, not a QI")
    if isinstance(l_value, bool) or not isinstance(l_value, int) or l_value < 2:
        raise ParamError("l_diversity.l", "must be an integer >= 2", "such as 2")
    return LDiversity(attribute=attribute, l=l_value)


def qi_ncp(qi: QuasiIdentifier, level: Level, value: Any, spans: Mapping[str, tuple[float, float]]) -> float:
    """NCP of one value generalized to one level: 0 kept exact, 1 suppressed; ``spans`` normalize ranges."""
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
