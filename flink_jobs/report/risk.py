"""What a recipient of a published view can learn: the ``flink-anonymizer risk`` and ``dp-report`` figures.

:func:`assess` reads an anonymized view as a recipient reads it and groups the records
by their published quasi-identifiers, counting distinct subjects per class. It shares
no code with :mod:`operators.k_anonymity`, so it can judge that operator's output: it
reads the generalizations (``20-39``, ``15***``, ``dp``) off the published values, not
off the operator's hierarchies.

Reported, after ARX's prosecutor model [1]_:

- ``k``: distinct subjects in the smallest class, against the ``k`` (and ``l``) required;
- the distribution of class sizes, and of prosecutor risk: a record's risk is
  1 / (subjects in its class); the highest, the mean, and the records above a threshold;
- the share of unique records (in a class of one subject);
- ``l``: distinct values of a sensitive attribute in the least diverse class;
- per release level (the ``k_level`` header): records, and the generalization of each
  quasi-identifier read off the published values; suppressed records (``k_suppressed``);
- information loss per quasi-identifier as the normalized certainty penalty [2]_, a
  suppressed record costing 1.

:func:`assess_dp` reads a differentially private view: each release with its 95%
interval, the cumulative epsilon of the ``epsilon_spent`` header per window, and the
window-group slots that went unreleased.

References
----------
.. [1] F. Prasser, F. Kohlmayer, "Putting statistical disclosure control into
   practice: the ARX data anonymization tool", in Medical Data Privacy Handbook, 2015.
.. [2] J. Xu, W. Wang, J. Pei, X. Wang, B. Shi, A. Fu, "Utility-based anonymization
   using local recoding", KDD 2006.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from udfs.record import lookup
from udfs.timestamps import epoch_seconds

__all__ = ["DpReport", "QiSpec", "Requirement", "RiskReport", "assess", "assess_dp", "parse_line", "risk_bins"]

STAR = "*"
#: the kinds of generalization a published value can show
KINDS = ("range", "truncate", "geohash", "grid", "date", "group", "exact")


@dataclass(frozen=True)
class Requirement:
    """What the view must reach: the policy's ``k`` and, with ``l_diversity``, its ``l``."""

    k: int | None = None
    l_value: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("k", self.k), ("l", self.l_value)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer")

    @property
    def given(self) -> bool:
        return self.k is not None or self.l_value is not None


@dataclass(frozen=True)
class QiSpec:
    """What the report knows of a quasi-identifier beyond its published values.

    Parameters
    ----------
    name : str
        The field it is published under.
    kind : str, optional
        One of :data:`KINDS`; read off the published values when not given.
    domain : tuple of float, optional
        ``(low, high)`` normalizing the NCP of a range or date; else the span of the published values.
    """

    name: str
    kind: str | None = None
    domain: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if self.domain is not None and not self.domain[0] < self.domain[1]:
            raise ValueError("domain: low must be below high")


@dataclass(frozen=True)
class Level:
    """One release level as published: its records and how each QI was generalized there."""

    records: int
    steps: Mapping[str, str]  # QI -> "{range: 20}", "{truncate: 2}", "*", ...
    example: Mapping[str, Any] | None = None  # the level's largest class, when it has at least `example_min` subjects


@dataclass(frozen=True)
class RiskReport:
    """Risk figures of one view. Build it with :func:`assess`."""

    records: int
    suppressed: int
    classes: int
    k: int
    class_sizes: Mapping[int, int]  # subjects in a class -> how many classes
    unique_share: float
    highest_risk: float
    mean_risk: float
    at_risk_share: float
    threshold: float
    l_value: int | None = None
    levels: Mapping[str, int] = field(default_factory=dict)  # k_level header -> records
    at_risk_records: int = 0
    records_by_size: Mapping[int, int] = field(default_factory=dict)  # subjects in its class -> records
    quasi_identifiers: tuple[str, ...] = ()
    ncp: Mapping[str, float | None] = field(default_factory=dict)  # QI -> mean NCP (None: kind unknown)
    level_detail: Mapping[str, Level] = field(default_factory=dict)
    suppressed_reasons: Mapping[str, int] = field(default_factory=dict)
    requirement: Requirement = Requirement()

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")

    @property
    def ncp_overall(self) -> float | None:
        known = [v for v in self.ncp.values() if v is not None]
        return sum(known) / len(known) if known else None

    @property
    def failures(self) -> list[str]:
        """Why the view fails its requirement, one reason per line; empty when it passes (or none is given)."""
        out = []
        req = self.requirement
        if req.given and self.records == 0:
            out.append("no published record")
        if req.k is not None and self.k < req.k:
            out.append(f"k {self.k} is below the {req.k} required")
        if req.l_value is not None and (self.l_value or 0) < req.l_value:
            out.append(f"l {self.l_value or 0} is below the {req.l_value} required")
        return out

    @property
    def verdict(self) -> str | None:
        """``PASS``, ``FAIL``, or None when no requirement was given."""
        if not self.requirement.given:
            return None
        return "FAIL" if self.failures else "PASS"

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "suppressed": self.suppressed, "classes": self.classes, "k": self.k,
            "class_sizes": {str(size): count for size, count in sorted(self.class_sizes.items())},
            "unique_share": self.unique_share, "prosecutor": {
                "highest": self.highest_risk, "mean": self.mean_risk,
                "records_at_risk": self.at_risk_share, "records_at_risk_count": self.at_risk_records,
                "threshold": self.threshold},
            "l": self.l_value, "release_levels": dict(sorted(self.levels.items(), key=_level_order)),
            "required": {"k": self.requirement.k, "l": self.requirement.l_value},
            "verdict": self.verdict, "failures": self.failures,
            "ncp": dict(self.ncp), "ncp_overall": self.ncp_overall,
            "level_generalization": {name: dict(level.steps) for name, level in
                                     sorted(self.level_detail.items(), key=_level_order)},
            "suppressed_reasons": dict(self.suppressed_reasons),
        }


def _level_order(item: tuple[str, Any]) -> tuple[int, str]:
    return (int(item[0]), "") if item[0].isdigit() else (1 << 30, item[0])


def parse_line(line: str) -> tuple[dict, dict]:
    """``(headers, value)`` of a JSON Lines record: the job's ``{"key", "headers", "value"}`` or a bare record."""
    item = json.loads(line)
    if not isinstance(item, dict):
        raise ValueError("a line is not a JSON object")
    if set(item) >= {"headers", "value"} and isinstance(item["value"], dict):
        return item.get("headers") or {}, item["value"]
    return {}, item


def assess(records: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]], quasi_identifiers: Sequence[str | QiSpec],
           subject: str, *, sensitive: str | None = None, threshold: float = 0.2,
           requirement: Requirement | None = None) -> RiskReport:
    """Group ``(headers, value)`` pairs by their published QIs and compute the risk figures.

    Records with a ``k_suppressed`` header are counted as suppressed and left out of
    the classes: they are not part of the published view.
    """
    specs = tuple(q if isinstance(q, QiSpec) else QiSpec(q) for q in quasi_identifiers)
    names = tuple(s.name for s in specs)
    requirement = requirement or Requirement()
    members: dict[str, set] = defaultdict(set)
    values: dict[str, set] = defaultdict(set)
    record_class: list[str] = []
    record_level: list[str | None] = []
    published: list[tuple[Any, ...]] = []
    reasons: Counter[str] = Counter()
    for headers, value in records:
        if headers.get("k_suppressed") is not None:
            reasons[str(headers["k_suppressed"])] += 1
            continue
        level = headers.get("k_level")
        qis = tuple(lookup(value, q, None) for q in names)
        combo = json.dumps(qis, sort_keys=True)
        members[combo].add(json.dumps(lookup(value, subject, None)))
        if sensitive is not None:
            values[combo].add(json.dumps(lookup(value, sensitive, None), sort_keys=True))
        record_class.append(combo)
        record_level.append(None if level is None else str(level))
        published.append(qis)
    sizes = {combo: len(who) for combo, who in members.items()}
    n, suppressed = len(record_class), sum(reasons.values())
    risks = [1.0 / sizes[combo] for combo in record_class]
    columns = [[row[i] for row in published] for i in range(len(specs))]
    ncp = {spec.name: _mean_ncp(spec, column, suppressed) for spec, column in zip(specs, columns, strict=True)}
    levels = Counter(level for level in record_level if level is not None)
    example_min = max(2, requirement.k or 2)
    return RiskReport(
        records=n, suppressed=suppressed, classes=len(sizes), k=min(sizes.values(), default=0),
        class_sizes=dict(Counter(sizes.values())),
        unique_share=sum(1 for combo in record_class if sizes[combo] == 1) / n if n else 0.0,
        highest_risk=max(risks, default=0.0), mean_risk=sum(risks) / n if n else 0.0,
        at_risk_share=sum(1 for r in risks if r > threshold) / n if n else 0.0, threshold=threshold,
        l_value=min((len(v) for v in values.values()), default=0) if sensitive is not None else None,
        levels=dict(levels), at_risk_records=sum(1 for r in risks if r > threshold),
        records_by_size=dict(Counter(sizes[combo] for combo in record_class)), quasi_identifiers=names,
        ncp=ncp, level_detail=_levels(specs, columns, record_level, record_class, sizes, example_min),
        suppressed_reasons=dict(reasons), requirement=requirement,
    )


def risk_bins(records_by_size: Mapping[int, int]) -> list[tuple[str, int, float]]:
    """Records by prosecutor risk, ``(label, records, highest risk in the bin)``, highest risk first.

    One bin per class size up to 10 subjects (risk 100% down to 10%), then wider ones.
    """
    bounds = [(s, s) for s in range(1, 11)] + [(11, 20), (21, 50), (51, 100), (101, None)]
    out = []
    for low, high in bounds:
        count = sum(c for s, c in records_by_size.items() if s >= low and (high is None or s <= high))
        if high is None:
            label = f"< {100 / (low - 1):.0f}%"
        elif low == high:
            label = f"{100 / low:.3g}%"
        else:
            label = f"{100 / high:.0f}-{100 / low:.0f}%"
        out.append((label, count, 1 / low))
    return out


# -- reading generalizations off published values --------------------------------

_GEOHASH = "0123456789bcdefghjkmnpqrstuvwxyz"
_INT_RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")
_HALF_OPEN = re.compile(r"^\[(-?[\d.e+-]+), (-?[\d.e+-]+)\)$")
_TOP = re.compile(r"^(-?[\d.]+)\+$")
_GRID = re.compile(r"^\[(-?[\d.]+), (-?[\d.]+)\) x \[(-?[\d.]+), (-?[\d.]+)\)$")
_TRUNCATED = re.compile(r"^([^*]*)(\*+)$")
_DATES = (("year", re.compile(r"^\d{4}$")), ("month", re.compile(r"^\d{4}-\d{2}$")),
          ("day", re.compile(r"^\d{4}-\d{2}-\d{2}$")),
          ("hour", re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:00:00(Z|[+-]\d{2}:\d{2})?$")))
_DAY = 86_400.0
_UNIT_SECONDS = {"hour": 3_600.0, "day": _DAY, "month": 30.4375 * _DAY, "year": 365.25 * _DAY}


@dataclass(frozen=True)
class _Cell:
    """A published value read as a generalization: its step, and the extent it stands for."""

    step: str
    lat: tuple[float, float] | None = None  # geo cells
    lon: tuple[float, float] | None = None
    span: tuple[float, float | None] | None = None  # ranges and dates; None high: top-coded
    share: float | None = None  # an NCP that needs no normalizer (truncate, exact, star)


def _read(kind: str | None, value: Any) -> _Cell | None:
    if value == STAR:
        return _Cell(STAR, share=1.0)
    if kind == "range":
        return _read_range(value)
    if kind == "truncate":
        return _read_truncated(value)
    if kind == "geohash":
        return _read_geohash(value)
    if kind == "grid":
        return _read_grid(value)
    if kind == "date":
        return _read_date(value)
    if kind == "exact":
        return _Cell("exact", share=0.0)
    return None  # a category's groups are not in the published value: its NCP is unknown here


def _read_range(value: Any) -> _Cell | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _Cell("exact", share=0.0)
    if not isinstance(value, str):
        return None
    if match := _INT_RANGE.match(value):
        low, high = int(match[1]), int(match[2]) + 1
        return _Cell(f"{{range: {high - low}}}", span=(low, high))
    if match := _HALF_OPEN.match(value):
        low, high = float(match[1]), float(match[2])
        return _Cell(f"{{range: {high - low:g}}}", span=(low, high))
    if match := _TOP.match(value):
        return _Cell(f"{match[1]}+", span=(float(match[1]), None))
    return None


def _read_truncated(value: Any) -> _Cell | None:
    if not isinstance(value, str):
        return None
    match = _TRUNCATED.match(value)
    kept, masked = (match[1], len(match[2])) if match else (value, 0)
    digits = not kept or kept.isdigit()
    base = 10 if digits else 36
    share = (base**masked - 1) / (base ** len(value) - 1) if value else 0.0
    return _Cell(f"{{truncate: {len(kept)}}}" if masked else "exact", share=share)


def _read_geohash(value: Any) -> _Cell | None:
    if not isinstance(value, str) or not 0 < len(value) <= 12 or set(value) - set(_GEOHASH):
        return None
    lat, lon, even = [-90.0, 90.0], [-180.0, 180.0], True
    for char in value:
        bits = _GEOHASH.index(char)
        for shift in range(4, -1, -1):
            box = lon if even else lat
            mid = (box[0] + box[1]) / 2
            box[0 if bits >> shift & 1 else 1] = mid
            even = not even
    return _Cell(f"{{geohash: {len(value)}}}", lat=(lat[0], lat[1]), lon=(lon[0], lon[1]))


def _read_grid(value: Any) -> _Cell | None:
    match = _GRID.match(value) if isinstance(value, str) else None
    if not match:
        return None
    lat, lon = (float(match[1]), float(match[2])), (float(match[3]), float(match[4]))
    return _Cell(f"{{grid: {lat[1] - lat[0]:.6g}}}", lat=lat, lon=lon)


def _read_date(value: Any) -> _Cell | None:
    if not isinstance(value, str):
        return None
    for unit, pattern in _DATES:
        if pattern.match(value):
            text = value if unit == "hour" else value + "-01" * {"year": 2, "month": 1, "day": 0}[unit]
            start = epoch_seconds(text.replace("Z", "+00:00"))
            return _Cell(f"{{date: {unit}}}", span=(start, start + _UNIT_SECONDS[unit]))
    return None


def _infer_kind(column: Sequence[Any]) -> str | None:
    """The kind of generalization every published value of a QI fits, or None."""
    sample = [v for v in column if v != STAR]
    if not sample:
        return None
    for kind in ("range", "grid", "date", "truncate", "geohash"):
        cells = [_read(kind, v) for v in sample]
        if all(cells) and (kind != "truncate" or any(c.step != "exact" for c in cells)):
            if kind == "range" and all(c.step == "exact" for c in cells):
                continue
            return kind
    return None


def _mean_ncp(spec: QiSpec, column: Sequence[Any], suppressed: int) -> float | None:
    """Mean NCP of a QI over the published records and the suppressed ones (1 each)."""
    kind = spec.kind or _infer_kind(column)
    cells = [_read(kind, v) for v in column]
    if not column and suppressed:
        return 1.0
    if any(c is None for c in cells) or not column:
        return None
    # a range or date is normalized by the policy's domain, else by the published span; a cell by the published box
    spans = [c.span for c in cells if c.span is not None]
    low = spec.domain[0] if spec.domain else min((s[0] for s in spans), default=0.0)
    high = spec.domain[1] if spec.domain else max((s[1] if s[1] is not None else s[0] for s in spans), default=0.0)
    boxes = [c for c in cells if c.lat is not None]
    lat_span = (max((c.lat[1] for c in boxes), default=0) - min((c.lat[0] for c in boxes), default=0))
    lon_span = (max((c.lon[1] for c in boxes), default=0) - min((c.lon[0] for c in boxes), default=0))
    total = float(suppressed)
    for cell in cells:
        if cell.share is not None:
            total += cell.share
        elif cell.span is not None:
            top = cell.span[1] if cell.span[1] is not None else high
            total += 1.0 if high <= low else min(1.0, max(0.0, top - cell.span[0]) / (high - low))
        else:
            lat_part = 1.0 if lat_span <= 0 else min(1.0, (cell.lat[1] - cell.lat[0]) / lat_span)
            lon_part = 1.0 if lon_span <= 0 else min(1.0, (cell.lon[1] - cell.lon[0]) / lon_span)
            total += (lat_part + lon_part) / 2
    return total / (len(column) + suppressed)


def _levels(specs: Sequence[QiSpec], columns: Sequence[Sequence[Any]], record_level: Sequence[str | None],
            record_class: Sequence[str], sizes: Mapping[str, int], example_min: int) -> dict[str, Level]:
    kinds = [spec.kind or _infer_kind(column) for spec, column in zip(specs, columns, strict=True)]
    steps: dict[str, list[Counter[str]]] = defaultdict(lambda: [Counter() for _ in specs])
    records: Counter[str] = Counter()
    class_records: dict[str, Counter[str]] = defaultdict(Counter)
    for row, level in enumerate(record_level):
        if level is None:
            continue
        records[level] += 1
        class_records[level][record_class[row]] += 1
        for i, kind in enumerate(kinds):
            cell = _read(kind, columns[i][row])
            steps[level][i][cell.step if cell else "?"] += 1
    out = {}
    for level, count in records.items():
        # the level's class with the most records, shown only if it has the subjects a class needs
        combo, _ = max(class_records[level].items(), key=lambda item: (item[1], item[0]))
        example = dict(zip((s.name for s in specs), json.loads(combo), strict=True)) \
            if sizes[combo] >= example_min else None
        out[level] = Level(records=count, example=example, steps={
            spec.name: " / ".join(step for step, _ in seen.most_common())
            for spec, seen in zip(specs, steps[level], strict=True)})
    return out


# -- differentially private views ------------------------------------------------

_RELEASE_KEYS = ("window_start", "window_end", "epsilon", "delta", "mechanism", "public_group")


@dataclass(frozen=True)
class Release:
    """One DP release: a group in a window, each metric as ``(value, std, ci95 low, ci95 high)``."""

    window_start: str
    window_end: str
    group: tuple[Any, ...]
    metrics: Mapping[str, tuple[float, float | None, float | None, float | None]]
    epsilon: float | None
    delta: float | None
    epsilon_spent: float | None
    public: bool = False


@dataclass(frozen=True)
class DpReport:
    """Figures of a DP view. Build it with :func:`assess_dp`."""

    releases: tuple[Release, ...]
    group_by: tuple[str, ...]
    metrics: tuple[str, ...]
    windows: tuple[tuple[str, str], ...]  # (start, end), in time order
    groups: tuple[tuple[Any, ...], ...]  # every group released at least once, or listed public
    spent: Mapping[str, float]  # window end -> cumulative epsilon_spent after its releases
    missing: Mapping[str, int]  # window start -> groups not released in it
    total_epsilon: float | None = None
    epsilon: float | None = None  # per window, from the policy or the releases
    delta: float | None = None
    skipped: int = 0  # records that are not releases

    @property
    def epsilon_spent(self) -> float | None:
        return max(self.spent.values(), default=None)

    @property
    def unreleased(self) -> int:
        return sum(self.missing.values())

    @property
    def failures(self) -> list[str]:
        out = []
        spent = self.epsilon_spent
        if self.total_epsilon is not None and spent is not None and spent > self.total_epsilon + 1e-9:
            out.append(f"epsilon spent {spent:g} is above total_epsilon {self.total_epsilon:g}")
        if self.epsilon is not None:
            over = sum(1 for r in self.releases if r.epsilon is not None and r.epsilon > self.epsilon + 1e-12)
            if over:
                out.append(f"{over} release(s) spent more than the policy's epsilon {self.epsilon:g}")
        return out

    @property
    def verdict(self) -> str | None:
        """``PASS`` within ``total_epsilon``, ``FAIL`` over it, None when no budget is set."""
        if self.failures:
            return "FAIL"
        return "PASS" if self.total_epsilon is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "releases": len(self.releases), "windows": len(self.windows), "groups": len(self.groups),
            "group_by": list(self.group_by), "metrics": list(self.metrics),
            "epsilon_per_window": self.epsilon, "delta_per_window": self.delta,
            "epsilon_spent": self.epsilon_spent, "total_epsilon": self.total_epsilon,
            "unreleased_group_windows": self.unreleased, "skipped": self.skipped,
            "verdict": self.verdict, "failures": self.failures,
            "spent_by_window_end": dict(self.spent), "unreleased_by_window_start": dict(self.missing),
            "release_list": [{
                "window_start": r.window_start, "window_end": r.window_end, "group": list(r.group),
                "epsilon": r.epsilon, "epsilon_spent": r.epsilon_spent, "public_group": r.public,
                **{name: {"value": v, "std": s, "ci95": [lo, hi]} for name, (v, s, lo, hi) in r.metrics.items()}}
                for r in self.releases],
        }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def assess_dp(records: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]], *,
              group_by: Sequence[str] | None = None, total_epsilon: float | None = None,
              epsilon: float | None = None, delta: float | None = None,
              public_groups: Sequence[Sequence[Any]] = ()) -> DpReport:
    """Read the releases of a DP view (``{window_start, window_end, <group_by>..., <metric>: {value, std, ci95}}``).

    A window-group slot counts as unreleased when the group was released in another
    window (or is listed public) but not in this one: the threshold suppressed it, the
    budget refused it, or the window had no record of it; the view does not say which.
    """
    releases, skipped = [], 0
    for headers, value in records:
        if not isinstance(value.get("window_start"), str) or not isinstance(value.get("window_end"), str):
            skipped += 1
            continue
        metrics = {name: (float(m["value"]), _number(m.get("std")), *(_ci(m.get("ci95"))))
                   for name, m in value.items()
                   if isinstance(m, Mapping) and _number(m.get("value")) is not None}
        keys = group_by if group_by is not None else [
            k for k in value if k not in _RELEASE_KEYS and k not in metrics]
        releases.append(Release(
            window_start=value["window_start"], window_end=value["window_end"],
            group=tuple(value.get(k) for k in keys), metrics=metrics,
            epsilon=_number(value.get("epsilon")), delta=_number(value.get("delta")),
            epsilon_spent=_number(headers.get("epsilon_spent")), public=bool(value.get("public_group"))))
        group_by = tuple(keys)
    releases.sort(key=lambda r: (r.window_start, json.dumps(r.group, sort_keys=True, default=str)))
    windows = tuple(sorted({(r.window_start, r.window_end) for r in releases}))
    groups = {r.group for r in releases} | {tuple(g) for g in public_groups}
    ordered_groups = tuple(sorted(groups, key=lambda g: json.dumps(g, sort_keys=True, default=str)))
    by_window: dict[str, set] = defaultdict(set)
    spent: dict[str, float] = {}
    for r in releases:
        by_window[r.window_start].add(r.group)
        if r.epsilon_spent is not None:
            spent[r.window_end] = max(spent.get(r.window_end, 0.0), r.epsilon_spent)
    # the spend is cumulative: a window released later never shows less than one before it
    running = 0.0
    for end in sorted(spent):
        running = spent[end] = max(running, spent[end])
    metric_names = tuple(dict.fromkeys(name for r in releases for name in r.metrics))
    per_window = {r.epsilon for r in releases if r.epsilon is not None}
    return DpReport(
        releases=tuple(releases), group_by=tuple(group_by or ()), metrics=metric_names, windows=windows,
        groups=ordered_groups, spent=spent,
        missing={start: len(groups - by_window[start]) for start, _ in windows},
        total_epsilon=total_epsilon,
        epsilon=epsilon if epsilon is not None else (max(per_window) if per_window else None),
        delta=delta if delta is not None else next((r.delta for r in releases if r.delta is not None), None),
        skipped=skipped)


def _ci(raw: Any) -> tuple[float | None, float | None]:
    if isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) == 2:
        low, high = _number(raw[0]), _number(raw[1])
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            return low, high
    return None, None
