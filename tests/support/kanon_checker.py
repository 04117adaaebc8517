"""An independent k-anonymity checker for published records.

It shares no code with ``operators/``: it groups the output by the published
quasi-identifier values, as a recipient of the view would, and counts distinct
subjects per group. Used by the unit and MiniCluster tests and the bench.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Report:
    records: int
    classes: int
    smallest_class: int  # distinct subjects in the smallest published class
    violations: tuple[str, ...]  # published QI combinations below k (or l), as JSON
    smallest_diversity: int | None = None


def _as_dict(record) -> dict:
    if isinstance(record, dict):
        return record
    if isinstance(record, (tuple, list)):  # (key, headers JSON, value JSON)
        return json.loads(record[2])
    return json.loads(record)


def check(records: Iterable, quasi_identifiers: Sequence[str], subject: str, k: int,
          sensitive: str | None = None, l_value: int | None = None) -> Report:
    """Group published values by their QI combination; every group needs ``k`` subjects (and ``l`` values)."""
    subjects: dict[str, set] = defaultdict(set)
    values: dict[str, set] = defaultdict(set)
    count = 0
    for record in records:
        value = _as_dict(record)
        count += 1
        combo = json.dumps([value.get(q) for q in quasi_identifiers], sort_keys=True)
        subjects[combo].add(value.get(subject))
        if sensitive is not None:
            values[combo].add(json.dumps(value.get(sensitive)))
    bad = [c for c, s in subjects.items() if len(s) < k]
    diversity = None
    if sensitive is not None and l_value is not None:
        diversity = min((len(v) for v in values.values()), default=0)
        bad += [c for c, v in values.items() if len(v) < l_value]
    return Report(records=count, classes=len(subjects), smallest_class=min(map(len, subjects.values()), default=0),
                  violations=tuple(sorted(set(bad))), smallest_diversity=diversity)


def assert_k_anonymous(records: Iterable, quasi_identifiers: Sequence[str], subject: str, k: int,
                       sensitive: str | None = None, l_value: int | None = None) -> Report:
    report = check(records, quasi_identifiers, subject, k, sensitive, l_value)
    assert not report.violations, f"{len(report.violations)} published classes below k={k} (or l): {report.violations[:3]}"
    return report


def assert_accounted(input_ids: Iterable[str], released_ids: Iterable[str], suppressed_ids: Iterable[str]) -> None:
    """Every input is released or suppressed exactly once, and nothing else appears."""
    inputs = Counter(input_ids)
    outputs = Counter(released_ids) + Counter(suppressed_ids)
    twice = [i for i, n in outputs.items() if n > 1]
    lost = [i for i in inputs if i not in outputs]
    extra = [i for i in outputs if i not in inputs]
    assert not twice, f"{len(twice)} records appear more than once, e.g. {twice[:3]}"
    assert not lost, f"{len(lost)} records lost, e.g. {lost[:3]}"
    assert not extra, f"{len(extra)} records never fed in, e.g. {extra[:3]}"
