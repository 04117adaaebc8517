"""Re-identification risk of a published view: the ``flink-anonymizer risk`` report.

It reads what a recipient of the view reads and groups the records by their
published quasi-identifiers, counting distinct subjects per class. It shares no
code with :mod:`operators.k_anonymity`, so it can judge that operator's output.

Reported, after ARX's prosecutor model [1]_:

- ``k``: distinct subjects in the smallest class;
- the distribution of class sizes;
- the share of unique records (in a class of one subject);
- prosecutor risk: a record's risk is 1 / (subjects in its class); the highest, the
  mean, and the share of records whose risk exceeds a threshold;
- ``l``: distinct values of a sensitive attribute in the least diverse class;
- per release level (the ``k_level`` header) and per suppression (``k_suppressed``),
  counts over time, for the HTML report.

References
----------
.. [1] F. Prasser, F. Kohlmayer, "Putting statistical disclosure control into
   practice: the ARX data anonymization tool", in Medical Data Privacy Handbook, 2015.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RiskReport", "assess", "parse_line", "render_html"]


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
    levels: Mapping[str, int] = field(default_factory=dict)
    timeline: Sequence[tuple[int, str]] = ()  # (index of the record in the input, "level N" or "suppressed")

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "suppressed": self.suppressed, "classes": self.classes, "k": self.k,
            "class_sizes": {str(size): count for size, count in sorted(self.class_sizes.items())},
            "unique_share": self.unique_share, "prosecutor": {
                "highest": self.highest_risk, "mean": self.mean_risk,
                "records_at_risk": self.at_risk_share, "threshold": self.threshold},
            "l": self.l_value, "release_levels": dict(sorted(self.levels.items())),
        }


def parse_line(line: str) -> tuple[dict, dict]:
    """``(headers, value)`` of a JSON Lines record: the job's ``{"key", "headers", "value"}`` or a bare record."""
    item = json.loads(line)
    if not isinstance(item, dict):
        raise ValueError("a line is not a JSON object")
    if set(item) >= {"headers", "value"} and isinstance(item["value"], dict):
        return item.get("headers") or {}, item["value"]
    return {}, item


def _get(record: Mapping[str, Any], path: str) -> Any:
    node: Any = record
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def assess(records: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]], quasi_identifiers: Sequence[str],
           subject: str, *, sensitive: str | None = None, threshold: float = 0.2) -> RiskReport:
    """Group ``(headers, value)`` pairs by their published QIs and compute the risk figures.

    Records with a ``k_suppressed`` header are counted as suppressed and left out of
    the classes: they are not part of the published view.
    """
    members: dict[str, set] = defaultdict(set)
    values: dict[str, set] = defaultdict(set)
    record_class: list[str] = []
    levels: Counter[str] = Counter()
    timeline: list[tuple[int, str]] = []
    suppressed = 0
    for index, (headers, value) in enumerate(records):
        if headers.get("k_suppressed") is not None:
            suppressed += 1
            timeline.append((index, "suppressed"))
            continue
        if headers.get("k_level") is not None:
            levels[str(headers["k_level"])] += 1
            timeline.append((index, f"level {headers['k_level']}"))
        combo = json.dumps([_get(value, q) for q in quasi_identifiers], sort_keys=True)
        members[combo].add(json.dumps(_get(value, subject)))
        if sensitive is not None:
            values[combo].add(json.dumps(_get(value, sensitive), sort_keys=True))
        record_class.append(combo)
    sizes = {combo: len(who) for combo, who in members.items()}
    n = len(record_class)
    risks = [1.0 / sizes[combo] for combo in record_class]
    return RiskReport(
        records=n, suppressed=suppressed, classes=len(sizes), k=min(sizes.values(), default=0),
        class_sizes=dict(Counter(sizes.values())),
        unique_share=sum(1 for combo in record_class if sizes[combo] == 1) / n if n else 0.0,
        highest_risk=max(risks, default=0.0), mean_risk=sum(risks) / n if n else 0.0,
        at_risk_share=sum(1 for r in risks if r > threshold) / n if n else 0.0, threshold=threshold,
        l_value=min((len(v) for v in values.values()), default=0) if sensitive is not None else None,
        levels=dict(levels), timeline=tuple(timeline),
    )


def _bars(title: str, items: Sequence[tuple[str, float]], width: int = 640, height: int = 220) -> str:
    """An inline SVG bar chart: no plotting library needed to read the report."""
    if not items:
        return f"<h2>{html.escape(title)}</h2><p>nothing to plot</p>"
    top = max(v for _, v in items) or 1
    bar = max(2, (width - 40) // len(items))
    parts = [f'<svg width="{width}" height="{height + 40}" role="img" aria-label="{html.escape(title)}">']
    for i, (label, v) in enumerate(items):
        h = int(height * v / top)
        x = 30 + i * bar
        parts.append(f'<rect x="{x}" y="{height - h + 10}" width="{bar - 1}" height="{h}" fill="#4a78b5">'
                     f"<title>{html.escape(label)}: {v:g}</title></rect>")
        if len(items) <= 30:
            parts.append(f'<text x="{x}" y="{height + 28}" font-size="10">{html.escape(label)}</text>')
    parts.append("</svg>")
    return f"<h2>{html.escape(title)}</h2>" + "".join(parts)


def render_html(report: RiskReport, *, title: str = "Re-identification risk", buckets: int = 40) -> str:
    """A self-contained HTML report: figures, class sizes, release levels and suppressions over time."""
    sizes = sorted(report.class_sizes.items())
    per_bucket: dict[str, list[int]] = defaultdict(lambda: [0] * buckets)
    total = max((i for i, _ in report.timeline), default=0) + 1
    for index, what in report.timeline:
        per_bucket[what][min(buckets - 1, index * buckets // total)] += 1
    figures = json.dumps(report.as_dict(), indent=2)
    body = [f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(figures)}</pre>",
            _bars("Classes by size (distinct subjects)", [(str(s), c) for s, c in sizes]),
            _bars("Records by release level", sorted((lv, c) for lv, c in report.levels.items()))]
    for what in sorted(per_bucket):
        body.append(_bars(f"{what} over time (input order, {buckets} buckets)",
                          [(str(i), c) for i, c in enumerate(per_bucket[what])]))
    return "<!doctype html><meta charset=utf-8><title>risk</title><body style='font-family:sans-serif'>" + \
        "".join(body) + "</body>"
